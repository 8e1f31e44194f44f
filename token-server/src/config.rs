//! The YAML config file: its shape, and its translation into [`Settings`].
//!
//! Every problem found is reported, each with its key path and line, rather
//! than stopping at the first. Unknown keys are errors, because a misspelled
//! security option that is silently ignored is worse than no option.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::identity::Kind;
use crate::identity::account::{self, Account, Accounts};
use crate::identity::jwks::{KeyCache, KeySource};
use crate::identity::oidc::{Issuer, IssuerKind, Issuers};
use crate::identity::password_cache::PasswordCache;
use crate::keys::{KeySet, SigningKey};
use crate::policy::{Actions, Glob, Policy, Rule};
use crate::refresh::RefreshTokens;
use crate::secret::Secret;

type S<T> = Spanned<T>;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address to listen on.
    #[serde(default)]
    pub listen: Option<S<String>>,
    /// External base URL of this server; the token realm is `<public_url>/token`.
    #[serde(default)]
    pub public_url: Option<S<String>>,
    /// `iss` of every token.
    pub issuer: S<String>,
    /// Accepted registry `service` names.
    pub services: S<Vec<String>>,
    /// Access token lifetime.
    #[serde(default)]
    pub access_token_ttl: Option<S<String>>,
    /// Refresh token lifetime.
    #[serde(default)]
    pub refresh_token_ttl: Option<S<String>>,
    /// How long a verified password is remembered.
    #[serde(default)]
    pub password_cache_ttl: Option<S<String>>,
    /// Signing keys; the first signs.
    pub signing_keys: S<Vec<KeyEntry>>,
    /// Put the certificate in each token's `x5c` header.
    #[serde(default)]
    pub embed_x5c: bool,
    /// File with the refresh-token MAC secret.
    pub refresh_secret_file: S<String>,
    /// Inline accounts.
    #[serde(default)]
    pub accounts: Vec<AccountEntry>,
    /// htpasswd files (bcrypt entries only).
    #[serde(default)]
    pub htpasswd_files: Vec<S<String>>,
    /// Ordered access rules.
    #[serde(default)]
    pub policy: Vec<RuleEntry>,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsEntry,
    /// Trusted token issuers for workload identity.
    #[serde(default)]
    pub issuers: Vec<IssuerEntry>,
    /// Serve HTTPS (and optionally verify client certificates).
    #[serde(default)]
    pub tls: Option<TlsEntry>,
}

/// One `issuers` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerEntry {
    /// Label for logs and the principal's `issuer` attribute.
    pub name: S<String>,
    /// `kubernetes` or `oidc`.
    pub kind: S<String>,
    /// The exact `iss` of its tokens.
    pub issuer: S<String>,
    /// Accepted `aud` values.
    pub audiences: S<Vec<String>>,
    /// Local JWKS file instead of discovery.
    #[serde(default)]
    pub jwks_file: Option<S<String>>,
    /// JWKS URL instead of discovery.
    #[serde(default)]
    pub jwks_uri: Option<S<String>>,
    /// Extra CA bundle for fetching keys over HTTPS.
    #[serde(default)]
    pub ca_file: Option<S<String>>,
    /// Permit plain-HTTP discovery and JWKS URLs.
    #[serde(default)]
    pub danger_allow_http: bool,
    /// Lifetime of credentials issued in exchange.
    #[serde(default)]
    pub credential_ttl: Option<S<String>>,
    /// Oldest token accepted, by `iat`.
    #[serde(default)]
    pub max_token_age: Option<S<String>>,
    /// OIDC: claim naming the principal.
    #[serde(default)]
    pub name_claim: Option<S<String>>,
    /// Minimum time between key refetches for unknown kids.
    #[serde(default)]
    pub jwks_min_refresh_interval: Option<S<String>>,
}

/// The `tls` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsEntry {
    /// Server certificate chain (PEM).
    pub cert: S<String>,
    /// Server private key (PKCS#8 PEM).
    pub key: S<String>,
    /// CA bundle that client certificates must chain to (enables node identity).
    #[serde(default)]
    pub client_ca: Option<S<String>>,
}

/// One `signing_keys` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// PKCS#8 private key PEM.
    pub key: S<String>,
    /// Self-signed certificate PEM for that key.
    pub cert: S<String>,
}

/// One `accounts` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    /// Login name.
    pub name: S<String>,
    /// bcrypt or argon2 hash.
    pub password_hash: S<String>,
    /// Attributes for policy.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One `policy` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// Why the rule exists.
    #[serde(default)]
    pub comment: Option<String>,
    /// Principal kind.
    #[serde(default)]
    pub kind: Option<S<String>>,
    /// Principal name glob.
    #[serde(default)]
    pub name: Option<S<String>>,
    /// Attribute globs.
    #[serde(default)]
    pub attributes: BTreeMap<String, S<String>>,
    /// Resource type glob.
    #[serde(default, rename = "type")]
    pub resource_type: Option<S<String>>,
    /// Resource name glob.
    pub resource: S<String>,
    /// Granted actions.
    pub actions: S<Vec<String>>,
}

/// The `limits` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsEntry {
    /// Largest accepted request body.
    #[serde(default)]
    pub max_body_bytes: Option<S<usize>>,
    /// Most distinct scopes in one request.
    #[serde(default)]
    pub max_scopes: Option<S<usize>>,
    /// Deadline for a whole request.
    #[serde(default)]
    pub request_timeout: Option<S<String>>,
    /// Deadline for a request's headers (and a TLS handshake).
    #[serde(default)]
    pub header_read_timeout: Option<S<String>>,
    /// A connection with no traffic for this long is closed.
    #[serde(default)]
    pub idle_timeout: Option<S<String>>,
    /// Largest request head.
    #[serde(default)]
    pub max_header_bytes: Option<S<usize>>,
    /// Most open connections.
    #[serde(default)]
    pub max_connections: Option<S<usize>>,
    /// How long shutdown waits for in-flight requests.
    #[serde(default)]
    pub drain_timeout: Option<S<String>>,
    /// Failed authentications from one client address or for one account
    /// before it must wait.
    #[serde(default)]
    pub auth_failures_before_backoff: Option<S<u32>>,
    /// Longest wait imposed after repeated failures.
    #[serde(default)]
    pub max_backoff: Option<S<String>>,
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
    /// Failed authentications per client address or account before backoff.
    pub auth_failures_before_backoff: u32,
    /// Longest backoff.
    pub max_backoff: Duration,
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
        }
    }
}

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
    /// TLS server settings; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The files the TLS settings came from, watched for changes.
    pub tls_files: Option<TlsFiles>,
}

/// Where the TLS certificate, key and client CA are on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Client CA bundle.
    pub client_ca: Option<PathBuf>,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5001";
/// Default access token lifetime.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(300);
/// Default refresh token lifetime.
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(3600);
/// Default password cache lifetime.
pub const DEFAULT_PASSWORD_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of credentials issued for workload identity.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
/// Default maximum age of subject tokens.
pub const DEFAULT_MAX_TOKEN_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default minimum interval between issuer key refetches.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// Smallest accepted refresh secret.
pub const MIN_SECRET_BYTES: usize = 32;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, like `policy[2].resource`.
    pub key: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Why a config could not be loaded: every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML, or not the expected shape (unknown key, wrong type).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with its location.
        message: String,
    },
    /// The file parsed but values are wrong.
    #[error("{}", Issues(.path, .issues))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
    },
}

struct Issues<'a>(&'a Path, &'a [ConfigIssue]);

impl fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}: {}: {}",
                self.0.display(),
                issue.line,
                issue.key,
                issue.message
            )?;
        }
        Ok(())
    }
}

/// Collects problems while a config is translated.
struct Check {
    base: PathBuf,
    issues: Vec<ConfigIssue>,
}

impl Check {
    fn fail<T>(&mut self, key: impl Into<String>, at: &Spanned<T>, message: impl fmt::Display) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            line: at.referenced.line() as usize,
            message: message.to_string(),
        });
    }

    fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    fn duration(
        &mut self,
        key: &str,
        v: &Option<S<String>>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(&v.value) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.fail(key, v, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.fail(
                    key,
                    v,
                    format!(
                        "invalid duration {:?} ({e}); write e.g. 5m, 1h, 30s",
                        v.value
                    ),
                );
                default
            }
        }
    }

    fn glob(&mut self, key: String, v: &S<String>) -> Glob {
        Glob::new(&v.value).unwrap_or_else(|e| {
            self.fail(key, v, e);
            Glob::new("").unwrap_or_else(|_| unreachable!("the empty pattern always compiles"))
        })
    }
}

/// Reads and validates the config file at `path`. Relative paths inside it
/// are relative to the file's directory.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    load_str(&text, &base, path)
}

/// Parses `text` as a config whose relative paths resolve against `base`;
/// `name` labels error messages.
pub fn load_str(text: &str, base: &Path, name: &Path) -> Result<Settings, ConfigError> {
    let file: ConfigFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
        path: name.to_owned(),
        message: e.to_string(),
    })?;
    let mut check = Check {
        base: base.to_owned(),
        issues: Vec::new(),
    };
    let settings = translate(&file, &mut check);
    match settings {
        Some(s) if check.issues.is_empty() => Ok(s),
        _ => {
            let mut issues = check.issues;
            issues.sort_by_key(|i| i.line);
            Err(ConfigError::Invalid {
                path: name.to_owned(),
                issues,
            })
        }
    }
}

fn translate(file: &ConfigFile, c: &mut Check) -> Option<Settings> {
    let listen = match &file.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(v) => v
            .value
            .parse::<SocketAddr>()
            .map_err(|_| c.fail("listen", v, "expected HOST:PORT, e.g. 127.0.0.1:5001"))
            .ok(),
    };
    let tls = file.tls.as_ref().and_then(|t| tls(t, c));
    let tls_files = file.tls.as_ref().map(|t| TlsFiles {
        cert: c.path(&t.cert.value),
        key: c.path(&t.key.value),
        client_ca: t.client_ca.as_ref().map(|ca| c.path(&ca.value)),
    });
    let public_url = match &file.public_url {
        Some(v) if !(v.value.starts_with("http://") || v.value.starts_with("https://")) => {
            c.fail("public_url", v, "must start with http:// or https://");
            None
        }
        Some(v) => Some(v.value.trim_end_matches('/').to_owned()),
        None => listen.map(|l| {
            format!(
                "{}://{l}",
                if file.tls.is_some() { "https" } else { "http" }
            )
        }),
    };

    let issuer = file.issuer.value.clone();
    if issuer.is_empty() {
        c.fail("issuer", &file.issuer, "must not be empty");
    }
    let services = file.services.value.clone();
    if services.is_empty() {
        c.fail(
            "services",
            &file.services,
            "list at least one registry service name",
        );
    }
    if services.iter().any(|s| s.is_empty()) {
        c.fail(
            "services",
            &file.services,
            "service names must not be empty",
        );
    }
    if services.contains(&issuer) {
        // Refresh tokens use the issuer as audience; a registry with that
        // service name could then be handed one as an access token.
        c.fail(
            "services",
            &file.services,
            "must not contain the issuer name",
        );
    }

    let access_token_ttl = c.duration(
        "access_token_ttl",
        &file.access_token_ttl,
        DEFAULT_ACCESS_TTL,
        false,
    );
    let refresh_token_ttl = c.duration(
        "refresh_token_ttl",
        &file.refresh_token_ttl,
        DEFAULT_REFRESH_TTL,
        false,
    );
    let cache_ttl = c.duration(
        "password_cache_ttl",
        &file.password_cache_ttl,
        DEFAULT_PASSWORD_CACHE_TTL,
        true,
    );

    let mut keys = Vec::new();
    if file.signing_keys.value.is_empty() {
        c.fail(
            "signing_keys",
            &file.signing_keys,
            "list at least one key (regauth-token-server keys generate)",
        );
    }
    for (i, k) in file.signing_keys.value.iter().enumerate() {
        match SigningKey::load(
            &c.path(&k.key.value),
            &c.path(&k.cert.value),
            file.embed_x5c,
        ) {
            Ok(key) => keys.push(key),
            Err(e) => c.fail(format!("signing_keys[{i}]"), &k.key, e),
        }
    }

    let secret = match std::fs::read(c.path(&file.refresh_secret_file.value)) {
        Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => Some(Secret::new(bytes)),
        Ok(_) => {
            c.fail("refresh_secret_file", &file.refresh_secret_file, format!("holds fewer than {MIN_SECRET_BYTES} bytes; create one with `regauth-token-server keys secret --out FILE`"));
            None
        }
        Err(e) => {
            c.fail("refresh_secret_file", &file.refresh_secret_file, e);
            None
        }
    };

    let mut account_list = Vec::new();
    for (i, a) in file.accounts.iter().enumerate() {
        match Account::new(&a.name.value, &a.password_hash.value, a.labels.clone()) {
            Ok(acc) => account_list.push(acc),
            Err(e) => c.fail(format!("accounts[{i}]"), &a.name, e),
        }
    }
    for (i, f) in file.htpasswd_files.iter().enumerate() {
        match account::read_htpasswd(&c.path(&f.value)) {
            Ok(list) => account_list.extend(list),
            Err(e) => c.fail(format!("htpasswd_files[{i}]"), f, e),
        }
    }

    let policy = Policy::new(
        file.policy
            .iter()
            .enumerate()
            .map(|(i, r)| rule(i, r, c))
            .collect(),
    );

    let mut limits = Limits::default();
    if let Some(v) = &file.limits.max_body_bytes {
        if v.value < 1024 {
            c.fail("limits.max_body_bytes", v, "must be at least 1024");
        }
        limits.max_body_bytes = v.value;
    }
    if let Some(v) = &file.limits.max_scopes {
        if v.value == 0 {
            c.fail("limits.max_scopes", v, "must be at least 1");
        }
        limits.max_scopes = v.value;
    }
    limits.request_timeout = c.duration(
        "limits.request_timeout",
        &file.limits.request_timeout,
        limits.request_timeout,
        false,
    );
    let l = &file.limits;
    limits.header_read_timeout = c.duration(
        "limits.header_read_timeout",
        &l.header_read_timeout,
        limits.header_read_timeout,
        false,
    );
    limits.idle_timeout = c.duration(
        "limits.idle_timeout",
        &l.idle_timeout,
        limits.idle_timeout,
        false,
    );
    limits.drain_timeout = c.duration(
        "limits.drain_timeout",
        &l.drain_timeout,
        limits.drain_timeout,
        true,
    );
    limits.max_backoff = c.duration(
        "limits.max_backoff",
        &l.max_backoff,
        limits.max_backoff,
        false,
    );
    if let Some(v) = &l.max_header_bytes {
        if v.value < 8192 {
            c.fail("limits.max_header_bytes", v, "must be at least 8192");
        }
        limits.max_header_bytes = v.value;
    }
    if let Some(v) = &l.max_connections {
        if v.value == 0 {
            c.fail("limits.max_connections", v, "must be at least 1");
        }
        limits.max_connections = v.value;
    }
    if let Some(v) = &l.auth_failures_before_backoff {
        if v.value == 0 {
            c.fail(
                "limits.auth_failures_before_backoff",
                v,
                "must be at least 1",
            );
        }
        limits.auth_failures_before_backoff = v.value;
    }

    let issuers = issuers(&file.issuers, c);

    let secret = secret?;
    let accounts = match Accounts::new(account_list, secret.expose(), PasswordCache::new(cache_ttl))
    {
        Ok(a) => a,
        Err(e) => {
            c.fail("accounts", &file.issuer, e);
            return None;
        }
    };
    Some(Settings {
        listen: listen?,
        public_url: public_url?,
        refresh: RefreshTokens::new(&issuer, &secret),
        issuer,
        services,
        access_token_ttl,
        refresh_token_ttl,
        keys: KeySet::new(keys)?,
        accounts,
        policy,
        limits,
        issuers,
        tls,
        tls_files,
    })
}

fn issuers(entries: &[IssuerEntry], c: &mut Check) -> Issuers {
    let mut list = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let key = |field: &str| format!("issuers[{i}].{field}");
        let kind = match e.kind.value.as_str() {
            "kubernetes" => IssuerKind::Kubernetes,
            "oidc" => IssuerKind::Oidc,
            other => {
                c.fail(
                    key("kind"),
                    &e.kind,
                    format!("unknown issuer kind {other:?}; use kubernetes or oidc"),
                );
                continue;
            }
        };
        let issuer = e.issuer.value.trim_end_matches('/').to_owned();
        let secure = issuer.starts_with("https://");
        if !(secure || e.danger_allow_http && issuer.starts_with("http://")) {
            c.fail(
                key("issuer"),
                &e.issuer,
                "must be an https:// URL (danger_allow_http permits http:// for tests)",
            );
        }
        if entries[..i]
            .iter()
            .any(|o| o.issuer.value.trim_end_matches('/') == issuer)
        {
            c.fail(
                key("issuer"),
                &e.issuer,
                "another issuer entry has the same URL",
            );
        }
        if e.audiences.value.is_empty() || e.audiences.value.iter().any(String::is_empty) {
            c.fail(
                key("audiences"),
                &e.audiences,
                "list at least one non-empty audience",
            );
        }
        if let (Some(n), IssuerKind::Kubernetes) = (&e.name_claim, kind) {
            c.fail(key("name_claim"), n, "only oidc issuers take name_claim");
        }
        let source = match (&e.jwks_file, &e.jwks_uri) {
            (Some(f), None) => {
                let path = c.path(&f.value);
                if let Err(err) = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| crate::identity::jwks::parse_jwks(&b).map(|_| ()))
                {
                    c.fail(key("jwks_file"), f, err);
                }
                KeySource::File(path)
            }
            (None, Some(u)) => KeySource::Uri(u.value.clone()),
            (None, None) => KeySource::Discovery {
                issuer: issuer.clone(),
            },
            (Some(f), Some(_)) => {
                c.fail(key("jwks_file"), f, "give jwks_file or jwks_uri, not both");
                continue;
            }
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("regauth-token-server/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &e.ca_file {
            match std::fs::read(c.path(&ca.value))
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())
                }) {
                Ok(certs) => {
                    for cert in certs {
                        http = http.add_root_certificate(cert);
                    }
                }
                Err(err) => c.fail(key("ca_file"), ca, err),
            }
        }
        let http = match http.build() {
            Ok(h) => h,
            Err(err) => {
                c.fail(
                    key("name"),
                    &e.name,
                    format!("cannot build an HTTP client: {err}"),
                );
                continue;
            }
        };
        let min_refresh = c.duration(
            &key("jwks_min_refresh_interval"),
            &e.jwks_min_refresh_interval,
            DEFAULT_JWKS_MIN_REFRESH,
            true,
        );
        list.push(Issuer {
            name: e.name.value.clone(),
            kind,
            issuer,
            audiences: e.audiences.value.clone(),
            credential_ttl: c.duration(
                &key("credential_ttl"),
                &e.credential_ttl,
                DEFAULT_CREDENTIAL_TTL,
                false,
            ),
            max_token_age: c.duration(
                &key("max_token_age"),
                &e.max_token_age,
                DEFAULT_MAX_TOKEN_AGE,
                false,
            ),
            name_claim: e
                .name_claim
                .as_ref()
                .map_or_else(|| "sub".to_owned(), |n| n.value.clone()),
            keys: KeyCache::new(source, http, e.danger_allow_http, min_refresh),
        });
    }
    Issuers::new(list)
}

fn tls(t: &TlsEntry, c: &mut Check) -> Option<Arc<rustls::ServerConfig>> {
    let client_ca = t.client_ca.as_ref().map(|ca| (c.path(&ca.value), ca));
    match crate::tls::server_config(
        &c.path(&t.cert.value),
        &c.path(&t.key.value),
        client_ca.as_ref().map(|(p, _)| p.as_path()),
    ) {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            let at = match &e {
                crate::tls::TlsError::ClientCa { .. } => client_ca.map_or(&t.cert, |(_, s)| s),
                crate::tls::TlsError::Key { .. } => &t.key,
                _ => &t.cert,
            };
            c.fail("tls", at, e);
            None
        }
    }
}

fn rule(i: usize, r: &RuleEntry, c: &mut Check) -> Rule {
    let key = |field: &str| format!("policy[{i}].{field}");
    let kind = r.kind.as_ref().and_then(|k| match k.value.as_str() {
        "*" => None,
        "account" => Some(Kind::Account),
        "kubernetes" => Some(Kind::Kubernetes),
        "oidc" => Some(Kind::Oidc),
        "node" => Some(Kind::Node),
        "anonymous" => Some(Kind::Anonymous),
        other => {
            c.fail(
                key("kind"),
                k,
                format!(
                    "unknown kind {other:?}; use account, kubernetes, oidc, node, anonymous or *"
                ),
            );
            None
        }
    });
    let name = match &r.name {
        Some(n) => {
            let g = c.glob(key("name"), n);
            if g.variables().next().is_some() {
                c.fail(key("name"), n, "variables are only allowed in `resource`");
            }
            g
        }
        None => Glob::new("*").unwrap_or_else(|_| unreachable!("`*` always compiles")),
    };
    let any_name = r.name.is_none();
    let attributes = r
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), c.glob(format!("policy[{i}].attributes.{k}"), v)))
        .collect();
    let resource_type = match &r.resource_type {
        Some(t) => c.glob(key("type"), t),
        None => {
            Glob::new("repository").unwrap_or_else(|_| unreachable!("a literal always compiles"))
        }
    };
    let resource = c.glob(key("resource"), &r.resource);
    let actions = if r.actions.value.is_empty() {
        c.fail(
            key("actions"),
            &r.actions,
            "list at least one action, or \"*\" for all",
        );
        Actions::Only(Vec::new())
    } else if r.actions.value.iter().any(|a| a == "*") {
        Actions::All
    } else {
        Actions::Only(r.actions.value.clone())
    };
    Rule {
        comment: r.comment.clone().unwrap_or_default(),
        kind,
        // A rule with no `name` must also match the nameless anonymous caller.
        name: if any_name {
            Glob::new("**").unwrap_or(name)
        } else {
            name
        },
        attributes,
        resource_type,
        resource,
        actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Principal;
    use crate::scope::Scope;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
    }

    #[test]
    fn reference_config_loads_and_means_what_its_comments_say() {
        let s = load(&fixtures().join("reference.yaml")).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5001");
        assert_eq!(
            s.services,
            ["registry.example.com", "registry-mirror.example.com"]
        );
        assert_eq!(s.access_token_ttl, Duration::from_secs(300));
        assert_eq!(s.keys.all().len(), 2);
        assert_eq!(s.keys.current().alg(), crate::keys::Algorithm::Es256);
        assert_eq!(s.accounts.len(), 3);
        let now = std::time::Instant::now();
        use crate::identity::account::Verified;
        for (user, pw) in [
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
        ] {
            assert!(
                matches!(
                    s.accounts.verify_slow(user, pw.as_bytes(), now),
                    Verified::Yes { .. }
                ),
                "{user}"
            );
        }
        let alice = s.accounts.principal("alice").unwrap();
        let decide = |p: &Principal, scope: &str| {
            let scope: Scope = scope.parse().unwrap();
            s.policy.decide(p, &[scope]).remove(0).grant.actions
        };
        assert_eq!(
            decide(&Principal::anonymous(), "repository:public/x:pull,push"),
            ["pull"]
        );
        assert!(decide(&Principal::anonymous(), "repository:alice/x:pull").is_empty());
        assert_eq!(decide(&alice, "registry:catalog:*"), ["*"]);
        assert_eq!(
            decide(&alice, "repository:teams/platform/x:pull,push,delete"),
            ["pull", "push"]
        );
        assert!(decide(&alice, "repository:teams/other/x:pull").is_empty());
        assert_eq!(decide(&alice, "repository:alice/x/y:delete"), ["delete"]);
        let bob = s.accounts.principal("bob").unwrap();
        assert!(decide(&bob, "registry:catalog:*").is_empty());
        assert!(
            decide(&bob, "repository:teams/platform/x:pull").is_empty(),
            "bob has no team label"
        );
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = "issuer: x\nservices: [x]\nsigning_keys: []\nrefresh_secret_file: nope\n\
                    access_token_ttl: 5 parsecs\npolicy:\n  - kind: robot\n    resource: \"${a b}\"\n    actions: []\n";
        let err = load_str(text, Path::new("/nonexistent"), Path::new("bad.yaml")).unwrap_err();
        let ConfigError::Invalid { issues, .. } = &err else {
            panic!("{err}")
        };
        let found: Vec<(&str, usize)> = issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            found,
            [
                ("services", 2),
                ("signing_keys", 3),
                ("refresh_secret_file", 4),
                ("access_token_ttl", 5),
                ("policy[0].kind", 7),
                ("policy[0].resource", 8),
                ("policy[0].actions", 9),
            ]
        );
        assert!(err.to_string().starts_with("bad.yaml:2: services: "));
    }

    #[test]
    fn unknown_keys_are_syntax_errors_with_a_line() {
        let err = load_str(
            "issuer: x\nservices: [y]\nbogus: 1\n",
            Path::new("."),
            Path::new("c.yaml"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }));
        assert!(msg.contains("bogus") && msg.contains("line 3"), "{msg}");
        let err = load_str(
            "issuer: x\nservices: [y]\npolicy:\n  - resource: a\n    action: [pull]\n",
            Path::new("."),
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("action") && err.contains("line 5"), "{err}");
    }

    /// The identity example loads, and a token signed like the air-gapped
    /// cluster's (fixture claims, fixture key) gets what its comments say.
    #[tokio::test]
    async fn identity_example_config_works_as_documented() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let s = load(&fixtures().join("identity.yaml")).unwrap();
        assert!(s.tls.is_some());
        assert_eq!(s.public_url, "https://auth.example.com:5001");
        assert_eq!(s.issuers.all().len(), 3);

        let mut claims: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures().join("identity/kubernetes-sa-token-claims.json")).unwrap(),
        )
        .unwrap();
        let now = std::time::SystemTime::now();
        let t = crate::refresh::unix(now);
        claims["iss"] = "https://cluster-a.example.com".into();
        claims["aud"] = serde_json::json!(["registry.example.com"]);
        claims["iat"] = t.into();
        claims["nbf"] = t.into();
        claims["exp"] = (t + 600).into();
        let pem = std::fs::read(fixtures().join("identity/cluster-sa-signer.key")).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("cluster-a-2026".into());
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
        let key = EncodingKey::from_ec_der(der.secret_pkcs8_der());
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let (principal, issuer) = s.issuers.verify(&token, now).await.unwrap();
        assert_eq!(issuer.name, "cluster-a");
        assert_eq!(principal.name, "system:serviceaccount:team-a:builder");

        let decide = |p: &Principal, scope: &str| {
            let scope: Scope = scope.parse().unwrap();
            s.policy.decide(p, &[scope]).remove(0).grant.actions
        };
        assert_eq!(
            decide(&principal, "repository:team-a/app:pull,push,delete"),
            ["pull", "push"]
        );
        assert!(decide(&principal, "repository:team-b/app:pull").is_empty());
        assert_eq!(
            decide(&principal, "repository:ci/anything:push"),
            ["push"],
            "builder rule"
        );

        let mut gha = Principal {
            kind: crate::identity::Kind::Oidc,
            name: "repo:example-org/app:ref:refs/heads/main".into(),
            attributes: Default::default(),
        };
        for (k, v) in [
            ("issuer", "github"),
            ("claims.repository", "example-org/app"),
            ("claims.repository_owner", "example-org"),
            ("claims.ref", "refs/heads/main"),
        ] {
            gha.attributes.insert(k.into(), v.into());
        }
        assert_eq!(decide(&gha, "repository:ci/example-org/app:push"), ["push"]);
        assert!(decide(&gha, "repository:ci/example-org/other:push").is_empty());
        gha.attributes
            .insert("claims.ref".into(), "refs/heads/feature".into());
        assert!(
            decide(&gha, "repository:ci/example-org/app:push").is_empty(),
            "main only"
        );
    }
}
