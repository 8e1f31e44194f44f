//! `get`: find the registry entry, serve a fresh cached credential, or
//! exchange the local identity for a new one.

use std::time::Duration;

use crate::cache::{self, Cache, CacheError, Entry};
use crate::config::{Config, ConfigError, Registry};
use crate::exchange::{self, ExchangeError};
use crate::identity::{self, Identity, IdentityError};
use crate::matcher::Target;

/// How long an invocation waits for another one's exchange.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Why `get` found no credential. Only [`GetError::NotConfigured`] may be
/// reported to clients as "not found"; every other variant is a real failure.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// No registry entry matches: the client should go anonymous.
    #[error("no registry entry matches {0}")]
    NotConfigured(String),
    /// The server URL has no host.
    #[error("{0:?} is not a registry host")]
    BadServerUrl(String),
    /// The config is broken.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The local identity cannot be read.
    #[error("cannot read the identity for {registry}")]
    Identity {
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: IdentityError,
    },
    /// The cache cannot be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The exchange failed and nothing usable is cached.
    #[error("cannot get a credential for {registry}")]
    Exchange {
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: ExchangeError,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
}

/// How the credential was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// From the cache, within the first half of its life.
    Cache,
    /// From a new exchange.
    Exchanged,
    /// From the cache because the server could not be reached; the reason.
    StaleFallback(String),
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Finds the registry entry for a server URL in any shape clients send.
pub fn registry_for<'a>(config: &'a Config, server_url: &str) -> Result<&'a Registry, GetError> {
    let target = Target::parse(server_url)
        .ok_or_else(|| GetError::BadServerUrl(server_url.trim().to_owned()))?;
    config
        .registry_for(&target)
        .ok_or_else(|| GetError::NotConfigured(target.host.clone()))
}

/// A credential for `registry`, cached or exchanged.
pub fn credential(
    config: &Config,
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Entry, Source), GetError> {
    let name = registry.name();
    let id = identity::read(&registry.identity, env).map_err(|source| GetError::Identity {
        registry: name.clone(),
        source,
    })?;
    credential_for_identity(config, registry, &id)
}

/// A credential for `registry` and an identity already read (the kubelet
/// passes a pod's service-account token this way).
pub fn credential_for_identity(
    config: &Config,
    registry: &Registry,
    id: &Identity,
) -> Result<(Entry, Source), GetError> {
    let name = registry.name();
    let cache = Cache::open(&config.cache_dir)?;
    let key = cache::key(registry, &id.fingerprint);
    // Held across the exchange: concurrent invocations wait here and then
    // find the fresh entry, so a cold cache costs one exchange, not many.
    let _lock = cache.lock(&key, LOCK_WAIT)?;
    let cached = cache.read(&key)?;
    let now = unix_now();
    if let Some(entry) = cached.as_ref().filter(|e| e.fresh(now)) {
        tracing::debug!(registry = %name, expires_at = entry.expires_at, "serving the cached credential");
        return Ok((entry.clone(), Source::Cache));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GetError::Runtime(e.to_string()))?;
    tracing::debug!(registry = %name, identity = %id.summary, "exchanging the identity at {}", registry.token_url());
    match runtime.block_on(exchange::exchange(registry, id, now)) {
        Ok(issued) => {
            let entry = Entry::new(issued.refresh_token, issued.issued_at, issued.expires_at);
            cache.write(&key, &entry)?;
            Ok((entry, Source::Exchanged))
        }
        Err(e) if e.is_unavailable() => match cached.filter(|c| c.usable(unix_now())) {
            Some(entry) => Ok((entry, Source::StaleFallback(e.to_string()))),
            None => Err(GetError::Exchange {
                registry: name,
                source: e,
            }),
        },
        Err(e) => Err(GetError::Exchange {
            registry: name,
            source: e,
        }),
    }
}
