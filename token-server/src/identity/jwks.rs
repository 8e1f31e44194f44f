//! Public keys of trusted token issuers, fetched and cached.
//!
//! Keys come from OIDC discovery (`{issuer}/.well-known/openid-configuration`
//! then its `jwks_uri`), from a fixed JWKS URL, or from a local file for
//! air-gapped clusters. Lookups are lock-free. A token with a kid the cache
//! does not know triggers one refetch, and refetches are rate-limited so a
//! flood of made-up kids cannot hammer the issuer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::Jwk;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Cached keys older than this are refetched on the next lookup.
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);

/// Why keys could not be obtained. Cheap to clone: the last failure is kept
/// and reported to every request until a fetch succeeds.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwksError {
    /// The URL is not https and plain HTTP was not allowed.
    #[error("{url}: only https URLs are allowed (danger_allow_http permits http)")]
    Insecure {
        /// The URL.
        url: String,
    },
    /// The network fetch failed (connection, TLS, timeout).
    #[error("fetching {url} failed")]
    Fetch {
        /// What was fetched.
        url: String,
        /// Why it failed.
        #[source]
        source: Arc<reqwest::Error>,
    },
    /// The server answered with an error status.
    #[error("fetching {url} failed: status {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge {
        /// What was fetched.
        url: String,
    },
    /// A local JWKS file could not be read.
    #[error("reading {path} failed")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The document is not what it should be.
    #[error("{url}: {problem}")]
    Document {
        /// Where it came from.
        url: String,
        /// What is wrong.
        #[source]
        problem: DocumentError,
    },
}

/// What is wrong with a discovery document or a JWKS.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON.
    #[error("not JSON")]
    NotJson(#[source] Arc<serde_json::Error>),
    /// A JWKS without a `keys` array.
    #[error("no `keys` array")]
    NoKeys,
    /// OIDC discovery for another issuer.
    #[error("the discovery document names another issuer")]
    IssuerMismatch,
    /// OIDC discovery without a `jwks_uri`.
    #[error("the discovery document has no jwks_uri")]
    NoJwksUri,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// OIDC discovery under this issuer URL.
    Discovery {
        /// The issuer URL (no trailing slash).
        issuer: String,
    },
    /// A JWKS URL.
    Uri(String),
    /// A local JWKS file.
    File(PathBuf),
}

/// A key usable for verification.
#[derive(Debug)]
pub struct VerifyingKey {
    /// The key.
    pub key: DecodingKey,
    /// The JWK's own `alg`, if it declares one.
    pub alg: Option<String>,
}

type KeyMap = HashMap<String, Arc<VerifyingKey>>;

#[derive(Default)]
struct Refresh {
    last_attempt: Option<Instant>,
    fetched_at: Option<Instant>,
    last_error: Option<JwksError>,
}

/// The cached keys of one issuer.
pub struct KeyCache {
    source: KeySource,
    http: reqwest::Client,
    allow_http: bool,
    min_refresh: Duration,
    keys: ArcSwap<KeyMap>,
    refresh: tokio::sync::Mutex<Refresh>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache that loads from `source`, refetching at most once per
    /// `min_refresh` when an unknown kid arrives.
    pub fn new(
        source: KeySource,
        http: reqwest::Client,
        allow_http: bool,
        min_refresh: Duration,
    ) -> Self {
        KeyCache {
            source,
            http,
            allow_http,
            min_refresh,
            keys: ArcSwap::from_pointee(HashMap::new()),
            refresh: tokio::sync::Mutex::new(Refresh::default()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The key for `kid`; `None` for a token without a kid, which is allowed
    /// only when the issuer publishes exactly one key. Refetches (rate-limited)
    /// when the kid is unknown or the keys are old.
    pub async fn key(&self, kid: Option<&str>) -> Result<Option<Arc<VerifyingKey>>, JwksError> {
        if let Some(k) = self.lookup(kid)
            && !self.stale().await
        {
            return Ok(Some(k));
        }
        let mut refresh = self.refresh.lock().await;
        // Another request may have refreshed while this one waited.
        let fresh = refresh
            .fetched_at
            .is_some_and(|t| t.elapsed() < MAX_KEY_AGE);
        if let Some(k) = self.lookup(kid).filter(|_| fresh) {
            return Ok(Some(k));
        }
        let allowed = refresh
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.min_refresh);
        if allowed {
            refresh.last_attempt = Some(Instant::now());
            self.fetches.fetch_add(1, Ordering::Relaxed);
            match self.load().await {
                Ok(map) => {
                    self.keys.store(Arc::new(map));
                    refresh.fetched_at = Some(Instant::now());
                    refresh.last_error = None;
                }
                // Keep serving known keys when the issuer is briefly down.
                Err(e) if !self.keys.load().is_empty() => {
                    tracing::warn!(error = %e, "refreshing issuer keys failed; keeping the cached keys");
                }
                Err(e) => {
                    refresh.last_error = Some(e.clone());
                    return Err(e);
                }
            }
        }
        match (self.lookup(kid), &refresh.last_error) {
            // Until a fetch succeeds, say why rather than "unknown key".
            (None, Some(e)) if self.keys.load().is_empty() => Err(e.clone()),
            (found, _) => Ok(found),
        }
    }

    /// True once keys have been loaded (and not lost since).
    pub fn is_loaded(&self) -> bool {
        !self.keys.load().is_empty()
    }

    /// Loads keys if none are loaded yet, within the refetch rate limit.
    pub async fn prefetch(&self) {
        if !self.is_loaded()
            && let Err(e) = self.key(None).await
        {
            tracing::warn!(error = %e, "fetching issuer keys failed");
        }
    }

    /// How many times keys were loaded (for metrics and tests).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn stale(&self) -> bool {
        match self.refresh.try_lock() {
            Ok(r) => r.fetched_at.is_none_or(|t| t.elapsed() >= MAX_KEY_AGE),
            // A refresh is running right now; the current keys are fine.
            Err(_) => false,
        }
    }

    fn lookup(&self, kid: Option<&str>) -> Option<Arc<VerifyingKey>> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    async fn load(&self) -> Result<KeyMap, JwksError> {
        let (url, bytes) = match &self.source {
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| JwksError::Read {
                    path: path.clone(),
                    source: Arc::new(e),
                })?;
                (path.display().to_string(), bytes)
            }
            KeySource::Uri(uri) => (uri.clone(), self.get(uri).await?),
            KeySource::Discovery { issuer } => {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let bad = |problem| JwksError::Document {
                    url: url.clone(),
                    problem,
                };
                let doc: serde_json::Value = serde_json::from_slice(&self.get(&url).await?)
                    .map_err(|e| bad(DocumentError::NotJson(Arc::new(e))))?;
                // OpenID Connect Discovery 1.0, section 4.3: the document must
                // name the issuer it was fetched for.
                if doc["issuer"].as_str() != Some(issuer.as_str()) {
                    return Err(bad(DocumentError::IssuerMismatch));
                }
                let jwks_uri = doc["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| bad(DocumentError::NoJwksUri))?
                    .to_owned();
                let bytes = self.get(&jwks_uri).await?;
                (jwks_uri, bytes)
            }
        };
        parse_jwks(&bytes).map_err(|problem| JwksError::Document { url, problem })
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, JwksError> {
        let url_owned = || url.to_owned();
        let fail = |e: reqwest::Error| JwksError::Fetch {
            url: url.to_owned(),
            source: Arc::new(e),
        };
        if !(url.starts_with("https://") || (self.allow_http && url.starts_with("http://"))) {
            return Err(JwksError::Insecure { url: url_owned() });
        }
        let mut resp = self.http.get(url).send().await.map_err(fail)?;
        if !resp.status().is_success() {
            return Err(JwksError::Status {
                url: url_owned(),
                status: resp.status(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(JwksError::TooLarge { url: url_owned() });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Parses a JWKS, keeping the signature keys that have a usable shape.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeyMap, DocumentError> {
    let raw: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| DocumentError::NotJson(Arc::new(e)))?;
    let list = raw["keys"].as_array().ok_or(DocumentError::NoKeys)?;
    let mut map = HashMap::new();
    for entry in list {
        // Skip encryption keys and key types this crate cannot parse,
        // rather than rejecting the whole set.
        if entry
            .get("use")
            .and_then(|u| u.as_str())
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = entry.get("alg").and_then(|a| a.as_str()).map(str::to_owned);
        map.insert(kid, Arc::new(VerifyingKey { key, alg }));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"k1","use":"sig","alg":"ES256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn parses_and_skips_unusable_keys() {
        let doc = format!(
            r#"{{"keys":[{EC_JWK},{{"kty":"EC","kid":"enc","use":"enc","crv":"P-256","x":"a","y":"b"}},{{"kty":"weird","kid":"w"}},{{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}]}}"#
        );
        let map = parse_jwks(doc.as_bytes()).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["k1"].alg.as_deref(), Some("ES256"));
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"not json").is_err());
    }

    #[tokio::test]
    async fn file_source_refetch_is_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, format!(r#"{{"keys":[{EC_JWK}]}}"#)).unwrap();
        let cache = KeyCache::new(
            KeySource::File(path.clone()),
            reqwest::Client::new(),
            false,
            Duration::from_secs(3600),
        );
        assert!(cache.key(Some("k1")).await.unwrap().is_some());
        assert!(
            cache.key(None).await.unwrap().is_some(),
            "a single key serves kid-less tokens"
        );
        for i in 0..20 {
            assert!(
                cache
                    .key(Some(&format!("unknown-{i}")))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        assert_eq!(
            cache.fetch_count(),
            1,
            "the interval since the first load has not passed"
        );

        let eager = KeyCache::new(
            KeySource::File(path),
            reqwest::Client::new(),
            false,
            Duration::ZERO,
        );
        for i in 0..5 {
            assert!(
                eager
                    .key(Some(&format!("unknown-{i}")))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        assert_eq!(
            eager.fetch_count(),
            5,
            "with no interval every unknown kid refetches"
        );
    }

    #[tokio::test]
    async fn plain_http_needs_the_danger_switch() {
        let cache = KeyCache::new(
            KeySource::Uri("http://127.0.0.1:9/jwks".into()),
            reqwest::Client::new(),
            false,
            Duration::ZERO,
        );
        let err = cache.key(Some("k")).await.unwrap_err();
        assert!(err.to_string().contains("only https"), "{err}");
    }
}
