//! What the server runs with: validated, loaded and ready to use.
//!
//! `config` builds a [`Settings`] from the YAML file; nothing below this
//! module knows the file's shape. A request takes one snapshot of the
//! settings and uses it throughout, so a reload never splits a request
//! between two configs.

use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::account::Accounts;
use crate::identity::certificate::CertificateRules;
use crate::identity::issuers::Issuers;
use crate::keys::KeySet;
use crate::policy::Policy;
use crate::secret::Secret;
use crate::shared::endpoint::Endpoint;
use crate::tls::TlsSettings;
use crate::token::refresh::RefreshTokens;

/// Everything the server runs with, validated and loaded.
#[derive(Debug)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// External base URL, without a trailing slash.
    pub public_url: String,
    /// Token issuer.
    pub issuer: String,
    /// Accepted registry services.
    pub services: Vec<String>,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_token_ttl: Duration,
    /// Signing keys.
    pub keys: KeySet,
    /// Refresh token issuer/verifier.
    pub refresh: RefreshTokens,
    /// Static accounts.
    pub accounts: Accounts,
    /// Access policy.
    pub policy: Policy,
    /// Request limits.
    pub limits: Limits,
    /// Trusted token issuers.
    pub issuers: Issuers,
    /// What makes a client certificate a node.
    pub certificates: CertificateRules,
    /// HTTPS settings; `None` serves plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Where replicas share the limiter and revocations; `None` keeps both
    /// in this process. Read at start-up: a change needs a restart.
    pub shared_state: Option<SharedStateSettings>,
    /// What to do with credentials while the revocations held are older
    /// than `revocation_staleness`.
    pub revocation_unavailable: RevocationUnavailable,
    /// How long a replica that lost Redis keeps serving from the
    /// revocations it holds before `revocation_unavailable` applies.
    pub revocation_staleness: Duration,
}

/// The Redis a fleet shares.
#[derive(Debug, Clone)]
pub struct SharedStateSettings {
    /// The URL as written; secret, since it may hold a password.
    pub url: Secret,
    /// Where the Redis is: one address, or a primary found through sentinels.
    pub endpoint: Endpoint,
    /// PEM CA bundle for TLS; `None` uses the system's roots.
    pub ca: Option<Vec<u8>>,
}

/// What a credential gets once the revocations a replica holds are older
/// than `revocation_max_staleness` (Redis out of reach for that long), or
/// before they were ever loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationUnavailable {
    /// Refuse it (503): a revocation made since is never honoured for
    /// longer than the staleness bound.
    #[default]
    Deny,
    /// Honour it, counted: availability over revocation.
    Allow,
}

impl Settings {
    /// True when `service` is one this server issues tokens for.
    pub fn serves(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body; larger gets 413.
    pub max_body_bytes: usize,
    /// Most distinct scopes in one request.
    pub max_scopes: usize,
    /// Deadline for a whole request.
    pub request_timeout: Duration,
    /// Deadline for a request's headers, and for a TLS handshake.
    pub header_read_timeout: Duration,
    /// Idle read/write timeout of a connection.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Most open connections; past it, accepting waits.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Failed authentications per account before backoff (an address gets
    /// four times as many).
    pub auth_failures_before_backoff: u32,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Password hashes computed at once; more wait for a slot.
    pub max_concurrent_password_checks: usize,
    /// How long a password check waits for a slot before 503.
    pub password_check_queue_timeout: Duration,
    /// Longest wait for one shared-state round trip before falling back.
    pub shared_state_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024,
            max_scopes: 32,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_connections: 4096,
            drain_timeout: Duration::from_secs(30),
            auth_failures_before_backoff: 5,
            max_backoff: Duration::from_secs(300),
            max_concurrent_password_checks: std::thread::available_parallelism()
                .map_or(1, |n| n.get()),
            password_check_queue_timeout: Duration::from_secs(3),
            shared_state_timeout: Duration::from_millis(250),
        }
    }
}
