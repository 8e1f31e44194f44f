//! `get`: find the registry entry, serve a fresh cached credential, or
//! exchange the local identity for a new one.

use std::time::Duration;

use crate::cache::{self, Cache, CacheError, Entry};
use crate::clock::Clock;
use crate::config::{Config, Registry};
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
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// How the credential was obtained.
#[derive(Debug)]
pub(crate) enum Source {
    /// From the cache, within the first half of its life.
    Cache,
    /// From a new exchange.
    Exchanged,
    /// From the cache because the server could not be reached; why not.
    StaleFallback(ExchangeError),
}

/// A credential and how it was obtained.
#[derive(Debug)]
pub(crate) struct Obtained {
    /// The credential.
    pub(crate) entry: Entry,
    /// Where it came from.
    pub(crate) source: Source,
    /// The time the decision was made at.
    pub(crate) now: u64,
}

/// Finds the registry entry for a server URL in any shape clients send.
pub(crate) fn registry_for<'a>(
    config: &'a Config,
    server_url: &str,
) -> Result<&'a Registry, GetError> {
    let target = Target::parse(server_url)
        .ok_or_else(|| GetError::BadServerUrl(server_url.trim().chars().take(200).collect()))?;
    config
        .registry_for(&target)
        .ok_or_else(|| GetError::NotConfigured(target.host.clone()))
}

/// A credential for `registry`, cached or exchanged for the configured identity.
pub(crate) fn credential(
    config: &Config,
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
    clock: &Clock,
) -> Result<Obtained, GetError> {
    let id = identity::read(&registry.identity, env).map_err(|source| GetError::Identity {
        registry: registry.name(),
        source,
    })?;
    credential_for_identity(config, registry, &id, clock)
}

/// A credential for `registry` and an identity already read (the kubelet
/// passes a pod's service-account token this way). An entry bound to a
/// token is served only to that token.
pub(crate) fn credential_for_identity(
    config: &Config,
    registry: &Registry,
    id: &Identity,
    clock: &Clock,
) -> Result<Obtained, GetError> {
    let name = registry.name();
    let cache = Cache::open(&config.cache_dir)?;
    let key = cache::key(registry, &id.fingerprint);
    // Held across the exchange: concurrent invocations wait here and then
    // find the fresh entry, so a cold cache costs one exchange, not many.
    let _lock = cache.lock(&key, LOCK_WAIT)?;
    cache.sweep(Some(&key));
    // Read after the wait: the decision below is about this moment.
    let now = clock();
    let cached = cache.read(&key)?.filter(|e| e.bound_to == id.binding);
    if let Some(entry) = cached.as_ref().filter(|e| e.fresh(now)) {
        tracing::debug!(registry = %name, expires_at = entry.expires_at, "serving the cached credential");
        return Ok(Obtained {
            entry: entry.clone(),
            source: Source::Cache,
            now,
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(GetError::Runtime)?;
    tracing::debug!(registry = %name, identity = %id.summary, "exchanging the identity at {}", registry.token_server);
    match runtime.block_on(exchange::exchange(registry, id, now)) {
        Ok(issued) => {
            let entry = Entry::new(issued, id.binding.clone());
            cache.write(&key, &entry)?;
            cache.collect_garbage(&key, now);
            Ok(Obtained {
                entry,
                source: Source::Exchanged,
                now,
            })
        }
        Err(e) if e.is_unavailable() => {
            // The failed attempt took up to `timeout`: the credential must
            // still be usable at its end, not just when it began.
            let after = now + registry.timeout.as_secs();
            match cached.filter(|c| c.usable(after)) {
                Some(entry) => Ok(Obtained {
                    entry,
                    source: Source::StaleFallback(e),
                    now,
                }),
                None => Err(GetError::Exchange {
                    registry: name,
                    source: e,
                }),
            }
        }
        Err(e) => Err(GetError::Exchange {
            registry: name,
            source: e,
        }),
    }
}
