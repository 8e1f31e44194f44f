//! Public keys of trusted token issuers, fetched and cached.
//!
//! Keys come from OIDC discovery (`{issuer}/.well-known/openid-configuration`
//! then its `jwks_uri`), from a fixed JWKS URL, or from a local file for
//! air-gapped clusters. Lookups are lock-free.
//!
//! Fetched keys are fresh for the JWKS response's `Cache-Control: max-age`,
//! held between `min_refresh` and `max_refresh` (files: `max_refresh`), and
//! refetched once stale, so a key the issuer withdraws stops verifying within
//! `max_refresh`. A token with a kid the cache does not know triggers one
//! refetch, at most once per `min_refresh`, so a flood of made-up kids cannot
//! hammer the issuer. While the issuer is down, the cached keys keep serving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::Jwk;

use crate::report::Chain;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

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
    /// Until when the loaded keys are fresh.
    fresh_until: Option<Instant>,
    last_error: Option<JwksError>,
}

impl Refresh {
    fn fresh(&self, now: Instant) -> bool {
        self.fresh_until.is_some_and(|t| now < t)
    }
}

/// How often an issuer's keys are refetched: `max-age` held within these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshBounds {
    /// Never sooner than this, whatever `max-age` says; also the least time
    /// between refetches for unknown kids.
    pub min: Duration,
    /// Never later than this, whatever `max-age` says (or without one).
    pub max: Duration,
}

impl RefreshBounds {
    /// How long a document with `max_age` (if any) stays fresh.
    fn fresh_for(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.max)
            .clamp(self.min, self.max.max(self.min))
    }
}

/// The cached keys of one issuer.
pub struct KeyCache {
    source: KeySource,
    http: reqwest::Client,
    allow_http: bool,
    bounds: RefreshBounds,
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
    /// A cache that loads from `source` and refetches within `bounds`.
    pub fn new(
        source: KeySource,
        http: reqwest::Client,
        allow_http: bool,
        bounds: RefreshBounds,
    ) -> Self {
        KeyCache {
            source,
            http,
            allow_http,
            bounds,
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
        if let Some(k) = self.lookup(kid).filter(|_| refresh.fresh(Instant::now())) {
            return Ok(Some(k));
        }
        let allowed = refresh
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.bounds.min);
        if allowed {
            refresh.last_attempt = Some(Instant::now());
            self.fetches.fetch_add(1, Ordering::Relaxed);
            match self.load().await {
                Ok((map, max_age)) => {
                    self.keys.store(Arc::new(map));
                    refresh.fresh_until = Some(Instant::now() + self.bounds.fresh_for(max_age));
                    refresh.last_error = None;
                }
                // Keep serving known keys when the issuer is briefly down.
                Err(e) if !self.keys.load().is_empty() => {
                    tracing::warn!(
                        error = %Chain(&e),
                        "refreshing issuer keys failed; keeping the cached keys"
                    );
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
            tracing::warn!(error = %Chain(&e), "fetching issuer keys failed");
        }
    }

    /// How many times keys were loaded (for metrics and tests).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn stale(&self) -> bool {
        match self.refresh.try_lock() {
            Ok(r) => !r.fresh(Instant::now()),
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

    /// Loads the keys and how long the issuer says they stay fresh.
    async fn load(&self) -> Result<(KeyMap, Option<Duration>), JwksError> {
        let (url, (bytes, max_age)) = match &self.source {
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| JwksError::Read {
                    path: path.clone(),
                    source: Arc::new(e),
                })?;
                (path.display().to_string(), (bytes, None))
            }
            KeySource::Uri(uri) => (uri.clone(), self.get(uri).await?),
            KeySource::Discovery { issuer } => {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let bad = |problem| JwksError::Document {
                    url: url.clone(),
                    problem,
                };
                let doc: serde_json::Value = serde_json::from_slice(&self.get(&url).await?.0)
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
                let fetched = self.get(&jwks_uri).await?;
                (jwks_uri, fetched)
            }
        };
        let keys = parse_jwks(&bytes).map_err(|problem| JwksError::Document { url, problem })?;
        Ok((keys, max_age))
    }

    /// GETs `url`: the body and the response's `max-age`, if any.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
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
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(JwksError::TooLarge { url: url_owned() });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// The freshness a `Cache-Control` value grants: `max-age=N`, or zero for
/// `no-cache` and `no-store`; `None` when it says neither.
pub(crate) fn max_age(cache_control: &str) -> Option<Duration> {
    let mut found = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            found = n.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    found
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
            RefreshBounds {
                min: Duration::from_secs(3600),
                max: Duration::from_secs(3600),
            },
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
            RefreshBounds {
                min: Duration::ZERO,
                max: Duration::from_secs(300),
            },
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
            RefreshBounds {
                min: Duration::ZERO,
                max: Duration::from_secs(300),
            },
        );
        let err = cache.key(Some("k")).await.unwrap_err();
        assert!(err.to_string().contains("only https"), "{err}");
    }

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(max_age("public, max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(
            max_age("Max-Age=5, must-revalidate"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
        let b = RefreshBounds {
            min: Duration::from_secs(10),
            max: Duration::from_secs(300),
        };
        assert_eq!(b.fresh_for(Some(Duration::from_secs(3600))), b.max);
        assert_eq!(b.fresh_for(Some(Duration::ZERO)), b.min);
        assert_eq!(b.fresh_for(None), b.max);
    }

    /// A JWKS endpoint whose document and Cache-Control the test changes.
    struct Issuer {
        url: String,
        doc: Arc<std::sync::Mutex<(u16, String, String)>>,
    }

    impl Issuer {
        async fn start(kids: &[&str], cache_control: &str) -> Self {
            use axum::routing::get;
            let doc = Arc::new(std::sync::Mutex::new((200, String::new(), String::new())));
            let served = Arc::clone(&doc);
            let app = axum::Router::new().route(
                "/jwks",
                get(move || {
                    let (status, body, cc) = served.lock().unwrap().clone();
                    async move {
                        (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            [(axum::http::header::CACHE_CONTROL, cc)],
                            body,
                        )
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/jwks", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            let issuer = Issuer { url, doc };
            issuer.publish(kids, cache_control);
            issuer
        }

        fn publish(&self, kids: &[&str], cache_control: &str) {
            let keys: Vec<String> = kids
                .iter()
                .map(|k| EC_JWK.replace("\"k1\"", &format!("\"{k}\"")))
                .collect();
            *self.doc.lock().unwrap() = (
                200,
                format!(r#"{{"keys":[{}]}}"#, keys.join(",")),
                cache_control.to_owned(),
            );
        }

        fn fail(&self) {
            self.doc.lock().unwrap().0 = 503;
        }

        fn cache(&self, min: u64, max: u64) -> KeyCache {
            KeyCache::new(
                KeySource::Uri(self.url.clone()),
                reqwest::Client::new(),
                true,
                RefreshBounds {
                    min: Duration::from_millis(min),
                    max: Duration::from_millis(max),
                },
            )
        }
    }

    /// Before, fetched keys were trusted for an hour whatever the issuer
    /// said, so a withdrawn key kept verifying.
    #[tokio::test]
    async fn a_withdrawn_key_stops_verifying_once_max_age_passes() {
        let issuer = Issuer::start(&["k1"], "max-age=1").await;
        let cache = issuer.cache(0, 300_000);
        assert!(cache.key(Some("k1")).await.unwrap().is_some());
        issuer.publish(&["k2"], "max-age=1");
        assert!(
            cache.key(Some("k1")).await.unwrap().is_some(),
            "fresh for max-age"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            cache.key(Some("k1")).await.unwrap().is_none(),
            "withdrawn after max-age"
        );
        assert!(cache.key(Some("k2")).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn max_age_is_held_within_the_bounds() {
        // A year of max-age, capped at 800 ms.
        let issuer = Issuer::start(&["k1"], "max-age=31536000").await;
        let cache = issuer.cache(0, 800);
        assert!(cache.key(Some("k1")).await.unwrap().is_some());
        issuer.publish(&["k2"], "");
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(cache.key(Some("k1")).await.unwrap().is_none(), "capped");

        // no-store, floored at 10 s: no refetch in between.
        let issuer = Issuer::start(&["k1"], "no-store").await;
        let cache = issuer.cache(10_000, 60_000);
        assert!(cache.key(Some("k1")).await.unwrap().is_some());
        issuer.publish(&["k2"], "no-store");
        assert!(cache.key(Some("k1")).await.unwrap().is_some(), "floored");
        assert_eq!(cache.fetch_count(), 1);
    }

    #[tokio::test]
    async fn cached_keys_keep_serving_through_an_issuer_outage() {
        let issuer = Issuer::start(&["k1"], "max-age=1").await;
        let cache = issuer.cache(0, 300_000);
        assert!(cache.key(Some("k1")).await.unwrap().is_some());
        issuer.fail();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            cache.key(Some("k1")).await.unwrap().is_some(),
            "stale but the issuer is down"
        );
        assert!(cache.fetch_count() >= 2, "a refetch was tried");
    }
}
