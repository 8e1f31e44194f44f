//! The helper's actions, each from its input to what it answers. Printing
//! the answer, and choosing the exit code, is the binary's job.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cache::{self, Cache, CacheError};
use crate::clock::Clock;
use crate::config::{self, ConfigError, Output};
use crate::credential::{self, GetError, Source};
use crate::kubelet::{self, KubeletError};
use crate::protocol::{self, Credentials, IDENTITY_TOKEN_USERNAME, StoreError};

/// Why an action failed (not-found is an answer, not an error).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The config could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No credential could be obtained.
    #[error(transparent)]
    Get(#[from] GetError),
    /// The cache could not be erased.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The `store` payload is malformed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer to `get`.
#[derive(Debug)]
pub enum GetAnswer {
    /// The credential, and a warning for stderr when it is a cached one
    /// served because the token server could not be reached.
    Found {
        /// The reply for stdout.
        credentials: Credentials,
        /// Why the credential came from the cache although it is due for refresh.
        warning: Option<String>,
    },
    /// No registry entry matches: the client should go anonymous.
    NotFound,
}

/// The entry for `server_url`; `None` when none matches.
fn registry_for<'a>(
    config: &'a config::Config,
    server_url: &str,
) -> Result<Option<&'a config::Registry>, GetError> {
    match credential::registry_for(config, server_url) {
        Ok(registry) => Ok(Some(registry)),
        Err(GetError::NotConfigured(host)) => {
            tracing::debug!(host, "no registry entry matches; answering not found");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `get`: the credential for `server_url` (the payload on stdin).
pub fn get(
    explicit: Option<&Path>,
    server_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
    clock: &Clock,
) -> Result<GetAnswer, CommandError> {
    let server_url = server_url.trim();
    // Nothing configured anywhere is "not found" too.
    let Some(config) = config::find(explicit, env)? else {
        return Ok(GetAnswer::NotFound);
    };
    let Some(registry) = registry_for(&config, server_url)? else {
        return Ok(GetAnswer::NotFound);
    };
    let obtained = credential::credential(&config, registry, env, clock)?;
    let warning = match &obtained.source {
        Source::StaleFallback(reason) => Some(format!(
            "the token server is unreachable ({reason}); using the cached credential, valid for {}s more",
            obtained.entry.expires_at.saturating_sub(obtained.now)
        )),
        Source::Cache | Source::Exchanged => None,
    };
    let username = match registry.output {
        Output::IdentityToken => IDENTITY_TOKEN_USERNAME.to_owned(),
        Output::Password => registry.username.clone(),
    };
    Ok(GetAnswer::Found {
        credentials: Credentials {
            server_url: server_url.to_owned(),
            username,
            secret: obtained.entry.refresh_token,
        },
        warning,
    })
}

/// `erase`: drops the cached credentials of the entry matching `server_url`,
/// and any temporary file a killed invocation left. `None` when no entry
/// matches; otherwise how many credentials were dropped.
pub fn erase(
    explicit: Option<&Path>,
    server_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<usize>, CommandError> {
    let Some(config) = config::find(explicit, env)? else {
        return Ok(None);
    };
    let Some(registry) = registry_for(&config, server_url.trim())? else {
        return Ok(None);
    };
    let removed = Cache::open(&config.cache_dir)?.erase(&cache::registry_stem(registry))?;
    Ok(Some(removed))
}

/// `list`: every configured pattern and the username `get` answers with.
pub fn list(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, CommandError> {
    let config = config::find(explicit, env)?;
    let mut out = BTreeMap::new();
    for reg in config.iter().flat_map(|c| &c.registries) {
        let user = match reg.output {
            Output::IdentityToken => IDENTITY_TOKEN_USERNAME,
            Output::Password => reg.username.as_str(),
        };
        for p in &reg.patterns {
            out.entry(p.to_string()).or_insert(user.to_owned());
        }
    }
    Ok(out)
}

/// `store`: validates the payload and keeps nothing (credentials come from
/// the local identity); returns the server URL it named.
pub fn store(payload: &str) -> Result<String, CommandError> {
    Ok(protocol::parse_store(payload)?)
}

/// `kubelet`: answers one `CredentialProviderRequest`.
pub fn kubelet(
    explicit: Option<&Path>,
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
    clock: &Clock,
) -> Result<kubelet::Response, KubeletError> {
    let request = kubelet::parse(input)?;
    let config = config::find(explicit, env)?;
    kubelet::answer(config.as_ref(), &request, env, clock)
}
