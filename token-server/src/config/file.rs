//! The config file as written: serde shapes only, every key spanned so
//! problems can name their line. Unknown keys are errors.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A value with its place in the file.
pub(super) type S<T> = Spanned<T>;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Address to listen on.
    #[serde(default)]
    pub(crate) listen: Option<S<String>>,
    /// External base URL of this server; the token realm is `<public_url>/token`.
    #[serde(default)]
    pub(crate) public_url: Option<S<String>>,
    /// `iss` of every token.
    pub(crate) issuer: S<String>,
    /// Accepted registry `service` names.
    pub(crate) services: S<Vec<String>>,
    /// Access token lifetime.
    #[serde(default)]
    pub(crate) access_token_ttl: Option<S<String>>,
    /// Refresh token lifetime.
    #[serde(default)]
    pub(crate) refresh_token_ttl: Option<S<String>>,
    /// How long a verified password is remembered.
    #[serde(default)]
    pub(crate) password_cache_ttl: Option<S<String>>,
    /// Signing keys; the first signs.
    pub(crate) signing_keys: S<Vec<KeyEntry>>,
    /// Put the certificate in each token's `x5c` header.
    #[serde(default)]
    pub(crate) embed_x5c: bool,
    /// File with the refresh-token MAC secret (or `refresh_secrets`).
    #[serde(default)]
    pub(crate) refresh_secret_file: Option<S<String>>,
    /// Files with refresh-token MAC secrets; the first signs, all verify.
    #[serde(default)]
    pub(crate) refresh_secrets: Option<S<Vec<S<String>>>>,
    /// Inline accounts.
    #[serde(default)]
    pub(crate) accounts: Vec<AccountEntry>,
    /// htpasswd files (bcrypt entries only).
    #[serde(default)]
    pub(crate) htpasswd_files: Vec<S<String>>,
    /// Ordered access rules.
    #[serde(default)]
    pub(crate) policy: Vec<RuleEntry>,
    /// Actions of resource types other than the registry's own.
    #[serde(default)]
    pub(crate) resource_types: BTreeMap<String, S<Vec<String>>>,
    /// Request limits.
    #[serde(default)]
    pub(crate) limits: LimitsEntry,
    /// Trusted token issuers for workload identity.
    #[serde(default)]
    pub(crate) issuers: Vec<IssuerEntry>,
    /// Serve HTTPS (and optionally verify client certificates).
    #[serde(default)]
    pub(crate) tls: Option<TlsEntry>,
    /// Redis URL of the state a fleet shares (limiter, revocations):
    /// `redis://`, `rediss://`, `redis+sentinel://` or `rediss+sentinel://`.
    #[serde(default)]
    pub(crate) shared_state: Option<S<String>>,
    /// CA bundle that a TLS shared state's certificates chain to.
    #[serde(default)]
    pub(crate) shared_state_ca_file: Option<S<String>>,
    /// `deny` or `allow` credentials once the revocations held are older
    /// than `revocation_max_staleness`.
    #[serde(default)]
    pub(crate) revocation_unavailable: Option<S<String>>,
    /// How long a replica without Redis serves from the revocations it holds.
    #[serde(default)]
    pub(crate) revocation_max_staleness: Option<S<String>>,
}

/// One `issuers` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuerEntry {
    /// Label for logs and the principal's `issuer` attribute.
    pub(crate) name: S<String>,
    /// `kubernetes` or `oidc`.
    pub(crate) kind: S<String>,
    /// The exact `iss` of its tokens.
    pub(crate) issuer: S<String>,
    /// Accepted `aud` values.
    pub(crate) audiences: S<Vec<String>>,
    /// Local JWKS file instead of discovery.
    #[serde(default)]
    pub(crate) jwks_file: Option<S<String>>,
    /// JWKS URL instead of discovery.
    #[serde(default)]
    pub(crate) jwks_uri: Option<S<String>>,
    /// Extra CA bundle for fetching keys over HTTPS.
    #[serde(default)]
    pub(crate) ca_file: Option<S<String>>,
    /// Permit plain-HTTP discovery and JWKS URLs.
    #[serde(default)]
    pub(crate) danger_allow_http: bool,
    /// Lifetime of credentials issued in exchange.
    #[serde(default)]
    pub(crate) credential_ttl: Option<S<String>>,
    /// Oldest token accepted, by `iat`.
    #[serde(default)]
    pub(crate) max_token_age: Option<S<String>>,
    /// OIDC: claim naming the principal.
    #[serde(default)]
    pub(crate) name_claim: Option<S<String>>,
    /// Minimum time between key refetches (and the floor for `max-age`).
    #[serde(default)]
    pub(crate) jwks_min_refresh_interval: Option<S<String>>,
    /// Longest time fetched keys are trusted (the ceiling for `max-age`).
    #[serde(default)]
    pub(crate) jwks_max_refresh_interval: Option<S<String>>,
}

/// The `tls` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsEntry {
    /// Server certificate chain (PEM).
    pub(crate) cert: S<String>,
    /// Server private key (PKCS#8 PEM).
    pub(crate) key: S<String>,
    /// CA bundle that client certificates must chain to (enables node identity).
    #[serde(default)]
    pub(crate) client_ca: Option<S<String>>,
    /// A node's certificate CN is this prefix and the node name.
    #[serde(default)]
    pub(crate) node_common_name_prefix: Option<S<String>>,
    /// A node's certificate must list this organization.
    #[serde(default)]
    pub(crate) node_organization: Option<S<String>>,
}

/// One `signing_keys` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyEntry {
    /// PKCS#8 private key PEM.
    pub(crate) key: S<String>,
    /// Self-signed certificate PEM for that key.
    pub(crate) cert: S<String>,
}

/// One `accounts` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountEntry {
    /// Login name.
    pub(crate) name: S<String>,
    /// bcrypt or argon2 hash.
    pub(crate) password_hash: S<String>,
    /// Attributes for policy.
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
}

/// One `policy` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleEntry {
    /// Why the rule exists.
    #[serde(default)]
    pub(crate) comment: Option<String>,
    /// Principal kind.
    #[serde(default)]
    pub(crate) kind: Option<S<String>>,
    /// Principal name glob.
    #[serde(default)]
    pub(crate) name: Option<S<String>>,
    /// Attribute globs.
    #[serde(default)]
    pub(crate) attributes: BTreeMap<String, S<String>>,
    /// Resource type glob.
    #[serde(default, rename = "type")]
    pub(crate) resource_type: Option<S<String>>,
    /// Resource name glob.
    pub(crate) resource: S<String>,
    /// Granted actions.
    pub(crate) actions: S<Vec<String>>,
}

/// The `limits` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsEntry {
    /// Largest accepted request body.
    #[serde(default)]
    pub(crate) max_body_bytes: Option<S<usize>>,
    /// Most distinct scopes in one request.
    #[serde(default)]
    pub(crate) max_scopes: Option<S<usize>>,
    /// Deadline for a whole request.
    #[serde(default)]
    pub(crate) request_timeout: Option<S<String>>,
    /// Deadline for a request's headers (and a TLS handshake).
    #[serde(default)]
    pub(crate) header_read_timeout: Option<S<String>>,
    /// A connection with no traffic for this long is closed.
    #[serde(default)]
    pub(crate) idle_timeout: Option<S<String>>,
    /// Largest request head.
    #[serde(default)]
    pub(crate) max_header_bytes: Option<S<usize>>,
    /// Most open connections.
    #[serde(default)]
    pub(crate) max_connections: Option<S<usize>>,
    /// How long shutdown waits for in-flight requests.
    #[serde(default)]
    pub(crate) drain_timeout: Option<S<String>>,
    /// Failed authentications from one client address or for one account
    /// before it must wait.
    #[serde(default)]
    pub(crate) auth_failures_before_backoff: Option<S<u32>>,
    /// Longest wait imposed after repeated failures.
    #[serde(default)]
    pub(crate) max_backoff: Option<S<String>>,
    /// Password hashes computed at once.
    #[serde(default)]
    pub(crate) max_concurrent_password_checks: Option<S<usize>>,
    /// How long a password check waits for a free slot.
    #[serde(default)]
    pub(crate) password_check_queue_timeout: Option<S<String>>,
    /// How long one round trip to the shared state may take.
    #[serde(default)]
    pub(crate) shared_state_timeout: Option<S<String>>,
}
