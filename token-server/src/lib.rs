//! regauth token server: an OAuth2 bearer token server for container
//! registries, implementing the distribution token authentication flow.
//!
//! The binary lives in `main.rs`; everything testable lives here. Modules are
//! public only where `main.rs` or the benches need them.
//!
//! A request flows down this list: `serve` accepts it and carries the peer
//! certificate, `http` parses it once into a grant (`proto`), `authenticate`
//! turns the grant into a principal (`identity`), `policy` decides the
//! scopes (`scope`), and `token` issues; `settings` is the one snapshot of
//! config the request runs under, built by `config` at the edge.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod authenticate;
pub mod cli;
pub mod clock;
pub mod config;
pub mod defaults;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod identity;
pub mod keys;
mod limiter;
pub mod listen;
pub mod metrics;
mod password_check;
pub mod policy;
mod proto;
pub mod registry_config;
pub mod report;
pub mod revoke;
pub mod scope;
pub mod secret;
pub mod serve;
pub mod settings;
pub mod shared;
pub mod tls;
pub mod token;
