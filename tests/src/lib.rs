//! Support library for regauth's end-to-end tests.
//!
//! The tests drive the real programs: `regauth-token-server` (built from this
//! workspace), the distribution registry 2.8 (`docker-registry`), `skopeo`,
//! and `containerd` with `ctr`. Every fixture lives in its own temporary
//! directory, listens on 127.0.0.1 only, and kills its processes on drop, so
//! tests can run in parallel and leave nothing behind.
//!
//! Tools the tests need (a missing one fails the test, naming the Debian
//! package): `docker-registry`, `skopeo`, `containerd` (also `ctr`),
//! `apache2-utils` (`htpasswd`), `kubernetes-client` (`kubectl`), and for
//! the fleet tests `redis-server`, `redis-sentinel` and `haproxy`. The
//! workspace binaries are built on first use with
//! `$CARGO build --workspace --bins`.
//!
//! Set `REGAUTH_E2E_KEEP=1` to keep each test's directory (configs, logs,
//! images) for inspection; its path is printed to stderr.

#![warn(missing_docs)]
// Test support: a step that cannot be done should stop the test loudly,
// with its message, rather than be handled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod activation;
pub mod bins;
pub mod container_image;
pub mod containerd;
pub mod credential_helper;
pub mod dns;
pub mod docker;
pub mod fleet;
pub mod http_stub;
pub mod jwt;
pub mod kube_api;
pub mod kubelet_plugin;
pub mod net;
pub mod oci;
pub mod oidc_issuer;
pub mod ops;
pub mod packages;
pub mod pki;
pub mod process;
pub mod pull_secrets;
pub mod redis;
pub mod registry;
pub mod release;
pub mod secrets;
pub mod skopeo;
pub mod token_client;
pub mod token_server;
pub mod tools;
pub mod world;

pub use world::World;
