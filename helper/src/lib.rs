//! `docker-credential-regauth` as a library: the docker credential helper
//! and kubelet image credential provider that swap the local identity (a
//! service-account token, an OIDC token, a client certificate or an account)
//! for a short-lived registry credential from a regauth token server.
//!
//! The binary is a thin dispatcher over [`commands`]: it reads stdin, prints
//! the answers, and alone owns stdout, stderr and the exit code. The parsers
//! that take outside input are public for testing and fuzzing:
//! [`kubelet::parse`] (a `CredentialProviderRequest`), [`matcher::Target::parse`]
//! (a server URL or image reference, in any shape clients send) and
//! [`config::parse`] (`helper.yaml`); the hidden `fuzzing` module runs them
//! for the fuzz targets.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
pub mod clock;
pub mod commands;
pub mod config;
mod credential;
pub mod doctor;
mod exchange;
#[doc(hidden)]
pub mod fuzzing;
mod identity;
pub mod kubelet;
pub mod matcher;
pub mod protocol;

pub use cache::CacheError;
pub use credential::GetError;
pub use exchange::{ExchangeError, GithubError};
pub use identity::IdentityError;
