//! A test OIDC issuer: real HTTP on 127.0.0.1 serving discovery and a JWKS,
//! holding the private keys, and minting (or forging) tokens.
//!
//! It stands in for a kube-apiserver's service-account issuer or for GitHub
//! Actions' token service:
//! - `GET /.well-known/openid-configuration` returns `issuer` (its own base
//!   URL, no trailing slash) and `jwks_uri` (`{issuer}/jwks`);
//! - `GET /jwks` returns the published public keys (`kid`, `kty`, `alg`, `use`)
//!   as `application/jwk-set+json`, like kube-apiserver.
//!
//! Requests are counted ([`OidcIssuer::jwks_requests`]), so tests can see
//! whether the token server cached, refetched or was flooded into fetching.
//! Keys rotate like a real issuer's: [`OidcIssuer::rotate`] publishes a new
//! key and drops the old one from the JWKS. [`OidcIssuer::offline`] makes an
//! issuer with keys but no server, for air-gapped (`jwks_file`) setups.

pub mod claims;
pub mod config;
pub mod exchange;
pub mod forge;
pub mod keys;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use self::claims::{GithubWorkflow, ServiceAccount};
pub use self::keys::{IssuerKey, KeyAlg};
use crate::http_stub::{self, HttpStub};

/// Path of the JWKS the issuer serves.
pub const JWKS_PATH: &str = "/jwks";
/// Path of the OIDC discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Lifetime of minted service-account tokens (kubelet's default projection).
pub const SA_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A key and whether the JWKS currently lists it.
#[derive(Debug)]
struct Entry {
    key: Arc<IssuerKey>,
    published: bool,
}

/// What the HTTP handler and the test share.
#[derive(Debug, Default)]
struct Shared {
    url: OnceLock<String>,
    keys: Mutex<Vec<Entry>>,
    jwks_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
    unavailable: AtomicBool,
    announced_issuer: Mutex<Option<String>>,
    log: Mutex<Vec<String>>,
}

impl Shared {
    fn url(&self) -> &str {
        self.url.get().expect("issuer URL is set before serving")
    }

    fn jwks(&self) -> Value {
        let keys = self.keys.lock().expect("issuer keys lock");
        json!({
            "keys": keys
                .iter()
                .filter(|e| e.published)
                .map(|e| e.key.jwk())
                .collect::<Vec<_>>()
        })
    }

    fn discovery(&self) -> Value {
        let url = self.url();
        let algs: Vec<&str> = {
            let keys = self.keys.lock().expect("issuer keys lock");
            let mut algs: Vec<&str> = keys.iter().map(|e| e.key.alg().name()).collect();
            algs.sort_unstable();
            algs.dedup();
            algs
        };
        let announced = self
            .announced_issuer
            .lock()
            .expect("issuer announce lock")
            .clone()
            .unwrap_or_else(|| url.to_owned());
        json!({
            "issuer": announced,
            "jwks_uri": format!("{url}{JWKS_PATH}"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf"],
        })
    }

    fn handle(&self, method: &Method, uri: &Uri) -> Response {
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        self.log
            .lock()
            .expect("issuer log lock")
            .push(format!("{method} {target}"));
        let path = uri.path();
        if method != Method::GET {
            return http_stub::text(405, "only GET is served");
        }
        // Count first: a request that found the issuer down still happened.
        match path {
            DISCOVERY_PATH => {
                self.discovery_requests.fetch_add(1, Ordering::SeqCst);
            }
            JWKS_PATH => {
                self.jwks_requests.fetch_add(1, Ordering::SeqCst);
            }
            _ => return http_stub::text(404, "not found"),
        }
        if self.unavailable.load(Ordering::SeqCst) {
            return http_stub::text(503, "issuer unavailable");
        }
        let response = match path {
            DISCOVERY_PATH => http_stub::json(200, "application/json", &self.discovery()),
            _ => http_stub::json(200, "application/jwk-set+json", &self.jwks()),
        };
        // As kube-apiserver marks its discovery document and keys.
        http_stub::cacheable(response, 3600)
    }
}

/// A test OIDC issuer; its HTTP server (if any) stops on drop.
#[derive(Debug)]
pub struct OidcIssuer {
    shared: Arc<Shared>,
    alg: KeyAlg,
    _server: Option<HttpStub>,
}

impl OidcIssuer {
    /// Starts an issuer on 127.0.0.1 with one published ES256 key.
    pub fn start() -> Self {
        Self::start_with(KeyAlg::Es256)
    }

    /// Starts an issuer on 127.0.0.1 with one published key of `alg`; keys
    /// added by [`OidcIssuer::rotate`] use the same algorithm.
    pub fn start_with(alg: KeyAlg) -> Self {
        let shared = Arc::new(Shared::default());
        let handler_state = Arc::clone(&shared);
        let router = Router::new().fallback(move |method: Method, uri: Uri| {
            let state = Arc::clone(&handler_state);
            async move { state.handle(&method, &uri) }
        });
        let server = HttpStub::start("oidc-issuer", router);
        shared.url.set(server.url()).expect("URL set once");
        let issuer = Self {
            shared,
            alg,
            _server: Some(server),
        };
        issuer.add_key(alg);
        issuer
    }

    /// An issuer named `url` that serves nothing (the token server can only
    /// know its keys from a `jwks_file`), with one published key of `alg`.
    pub fn offline(url: &str, alg: KeyAlg) -> Self {
        let shared = Arc::new(Shared::default());
        shared.url.set(url.to_owned()).expect("URL set once");
        let issuer = Self {
            shared,
            alg,
            _server: None,
        };
        issuer.add_key(alg);
        issuer
    }

    /// The issuer identifier (`iss`): `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        self.shared.url().to_owned()
    }

    /// The JWKS URL announced by discovery.
    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.shared.url())
    }

    /// The algorithm of the issuer's keys.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// The JWKS as served right now.
    pub fn jwks(&self) -> Value {
        self.shared.jwks()
    }

    /// The discovery document as served right now.
    pub fn discovery(&self) -> Value {
        self.shared.discovery()
    }

    /// Writes the current JWKS to `path` (for `jwks_file`).
    pub fn write_jwks(&self, path: &Path) {
        let body = serde_json::to_vec_pretty(&self.jwks()).expect("serialize JWKS");
        std::fs::write(path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// How many `GET /jwks` requests arrived so far.
    pub fn jwks_requests(&self) -> usize {
        self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// How many discovery requests arrived so far.
    pub fn discovery_requests(&self) -> usize {
        self.shared.discovery_requests.load(Ordering::SeqCst)
    }

    /// Every request line received so far (`GET /jwks`, ...), oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().expect("issuer log lock").clone()
    }

    /// Makes discovery and JWKS answer 503 (`false`) or serve again (`true`).
    pub fn set_available(&self, available: bool) {
        self.shared.unavailable.store(!available, Ordering::SeqCst);
    }

    /// Makes discovery announce `issuer` instead of the issuer's own URL
    /// (`None` restores it): the mix-up OpenID Connect Discovery 1.0 section 4.3 guards against.
    pub fn announce_issuer(&self, issuer: Option<&str>) {
        *self
            .shared
            .announced_issuer
            .lock()
            .expect("issuer announce lock") = issuer.map(str::to_owned);
    }

    /// Generates and publishes another key beside the existing ones; it
    /// becomes the signing key.
    pub fn add_key(&self, alg: KeyAlg) -> Arc<IssuerKey> {
        let key = Arc::new(IssuerKey::generate(alg));
        self.shared
            .keys
            .lock()
            .expect("issuer keys lock")
            .push(Entry {
                key: Arc::clone(&key),
                published: true,
            });
        key
    }

    /// Rotates: publishes a new key, which signs from now on, and drops every
    /// older key from the JWKS. Returns the new key.
    pub fn rotate(&self) -> Arc<IssuerKey> {
        for entry in self
            .shared
            .keys
            .lock()
            .expect("issuer keys lock")
            .iter_mut()
        {
            entry.published = false;
        }
        self.add_key(self.alg)
    }

    /// The current signing key (the newest).
    pub fn current_key(&self) -> Arc<IssuerKey> {
        let keys = self.shared.keys.lock().expect("issuer keys lock");
        Arc::clone(&keys.last().expect("an issuer has a key").key)
    }

    /// The kids the JWKS lists right now.
    pub fn published_kids(&self) -> Vec<String> {
        let keys = self.shared.keys.lock().expect("issuer keys lock");
        keys.iter()
            .filter(|e| e.published)
            .map(|e| e.key.kid().to_owned())
            .collect()
    }

    /// Signs `claims` with the current key (its kid in the header).
    pub fn mint(&self, claims: &Value) -> String {
        self.current_key().sign(claims)
    }

    /// Signs `claims` with a fresh key of the issuer's algorithm that was
    /// never published; its kid is its own, unknown to any JWKS.
    pub fn mint_unpublished(&self, claims: &Value) -> String {
        IssuerKey::generate(self.alg).sign(claims)
    }

    /// A projected service-account token for `sa` with audience `audience`,
    /// valid for [`SA_TOKEN_LIFETIME`].
    pub fn service_account_token(&self, sa: &ServiceAccount, audience: &str) -> String {
        self.mint(&sa.claims(&self.url(), audience, SA_TOKEN_LIFETIME))
    }

    /// A GitHub Actions OIDC token for `workflow` with audience `audience`.
    pub fn github_token(&self, workflow: &GithubWorkflow, audience: &str) -> String {
        self.mint(&workflow.claims(&self.url(), audience))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_client::{http_client, send};

    fn get(url: &str) -> crate::token_client::HttpReply {
        send(http_client().get(url))
    }

    #[test]
    fn serves_discovery_and_jwks_and_counts_requests() {
        let issuer = OidcIssuer::start();
        let url = issuer.url();
        assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with('/'));

        let discovery = get(&format!("{url}{DISCOVERY_PATH}"));
        assert_eq!(discovery.status, 200);
        assert_eq!(discovery.json()["issuer"], url.as_str());
        assert_eq!(discovery.json()["jwks_uri"], issuer.jwks_url().as_str());
        assert_eq!(issuer.discovery_requests(), 1);

        let jwks = get(&issuer.jwks_url());
        assert_eq!(jwks.status, 200);
        assert_eq!(
            jwks.header("content-type").as_deref(),
            Some("application/jwk-set+json")
        );
        let keys = jwks.json()["keys"].as_array().cloned().unwrap_or_default();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kid"], issuer.current_key().kid());
        assert_eq!(keys[0]["alg"], "ES256");
        assert_eq!(keys[0]["use"], "sig");
        assert_eq!(keys[0]["kty"], "EC");
        assert_eq!(issuer.jwks_requests(), 1);

        assert_eq!(get(&format!("{url}/nope")).status, 404);
        issuer.set_available(false);
        assert_eq!(get(&issuer.jwks_url()).status, 503);
        assert_eq!(issuer.jwks_requests(), 2);
    }

    #[test]
    fn rotation_replaces_the_published_key() {
        let issuer = OidcIssuer::start_with(KeyAlg::Rs256);
        let old = issuer.current_key();
        let new = issuer.rotate();
        assert_ne!(old.kid(), new.kid());
        assert_eq!(issuer.published_kids(), [new.kid().to_owned()]);
        assert_eq!(issuer.current_key().kid(), new.kid());
        let served = get(&issuer.jwks_url()).json();
        assert_eq!(served, issuer.jwks());
        assert_eq!(served["keys"][0]["kty"], "RSA");
    }

    #[test]
    fn stops_on_drop() {
        let issuer = OidcIssuer::start();
        let addr = issuer.url().trim_start_matches("http://").to_owned();
        drop(issuer);
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "the issuer still accepts connections after drop"
        );
    }
}
