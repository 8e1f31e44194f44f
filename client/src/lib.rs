//! The client side of a regauth token server, shared by the programs that
//! swap an identity for a registry credential: the credential helper
//! (`docker-credential-regauth`) and the pull-secret controller.
//!
//! - [`TokenClient`] sends the grants: RFC 8693 [`TokenExchange`] of a
//!   workload's token, the `password` grant of an account, and the
//!   `client_credentials` grant of a client certificate (mutual TLS). Each
//!   returns an [`Issued`] credential: a regauth refresh token and its lifetime.
//! - [`Settings`] says how to reach the server: base URL, extra CA file,
//!   timeout, client certificate; proxies come from `HTTPS_PROXY` and friends.
//! - [`Error`] tells apart a server that is unreachable or unavailable
//!   ([`Error::is_unavailable`]), one that refused the request (with its
//!   OAuth2 error code), and a reply that breaks the protocol.
//! - [`Secret`] wraps every token and password; its `Debug` prints `***`.
//! - [`read_bounded`] reads the programs' config files, at most
//!   [`MAX_CONFIG_BYTES`].
//!
//! Time is a parameter (`now`, seconds since the epoch): the crate never
//! reads the clock. It runs on the caller's tokio runtime; a current-thread
//! runtime is enough. TLS is rustls: the process's default `CryptoProvider`
//! if one is installed, otherwise aws-lc-rs.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
mod file;
mod jwt;
mod reply;
mod secret;
mod settings;

pub use client::{MAX_REPLY_BYTES, MAX_RETRY_AFTER, SubjectTokenType, TokenClient, TokenExchange};
pub use error::{BadReply, Error, Grant, OAuthError, SetupError};
pub use file::{FileError, MAX_CONFIG_BYTES, read_bounded};
pub use jwt::unverified_claims;
pub use reply::Issued;
pub use secret::Secret;
pub use settings::{ReadError, Settings, http_client, read_limited};
