//! Operating the token server: signing key rotation against the real
//! registry, SIGHUP config reloads, TLS certificate reloads, request limits,
//! and SIGTERM drains and restarts under load. Support code lives in
//! `regauth_e2e::ops`.

#[path = "operations_limits.rs"]
mod limits;
#[path = "operations_reload.rs"]
mod reload;
#[path = "operations_restart.rs"]
mod restart;
#[path = "operations_rotation.rs"]
mod rotation;
#[path = "operations_tls.rs"]
mod tls;
