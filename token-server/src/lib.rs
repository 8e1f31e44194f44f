//! regauth token server: an OAuth2 bearer token server for container
//! registries, implementing the distribution token authentication flow.
//!
//! The binary lives in `main.rs`; everything testable lives here.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod defaults;
pub mod http;
pub mod identity;
pub mod issue;
pub mod keys;
pub mod limiter;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod refresh;
pub mod registry_config;
pub mod scope;
pub mod secret;
pub mod serve;
pub mod tls;
