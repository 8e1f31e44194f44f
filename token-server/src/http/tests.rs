//! Router tests: real requests through `router(state).oneshot(..)`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tower::ServiceExt;

use super::{AppState, Clock, router};
use crate::config;
use crate::keys::{Algorithm, generate};

/// A config directory (keys, secret, config.yaml) and a server state over it.
struct World {
    dir: tempfile::TempDir,
    state: Arc<AppState>,
}

/// One answer: status, headers and the JSON body (`Null` if not JSON).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl World {
    /// Accounts alice (`alice-pw`) and bob (`bob-pw`), the default policy.
    fn new() -> Self {
        Self::with("", 4)
    }

    /// `extra_rules` go first in the policy; alice's hash has `cost`.
    fn with(extra_rules: &str, cost: u32) -> Self {
        Self::with_limits(extra_rules, cost, "")
    }

    /// As [`World::with`], with more `limits:` lines.
    fn with_limits(extra_rules: &str, cost: u32, extra_limits: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(Algorithm::Es256, "t", crate::clock::now()).unwrap();
        std::fs::write(dir.path().join("k.pem"), g.key_pem).unwrap();
        std::fs::write(dir.path().join("c.pem"), g.cert_pem).unwrap();
        std::fs::write(dir.path().join("secret"), [9u8; 32]).unwrap();
        write_config_with_limits(
            dir.path(),
            "test-issuer",
            &bcrypt::hash("alice-pw", cost).unwrap(),
            extra_rules,
            extra_limits,
        );
        let state = state_for(dir.path(), crate::clock::now);
        World { dir, state }
    }

    /// Another server over the same directory (re-reading the config),
    /// with its own clock.
    fn restart(&self, clock: Clock) -> Arc<AppState> {
        state_for(self.dir.path(), clock)
    }

    async fn get(&self, uri: &str, auth: Option<&str>) -> Reply {
        send(&self.state, get(uri, auth)).await
    }

    async fn post(&self, body: &str) -> Reply {
        send(&self.state, post(body)).await
    }
}

fn write_config(dir: &Path, issuer: &str, alice_hash: &str, extra_rules: &str) {
    write_config_with_limits(dir, issuer, alice_hash, extra_rules, "");
}

fn write_config_with_limits(
    dir: &Path,
    issuer: &str,
    alice_hash: &str,
    extra_rules: &str,
    extra_limits: &str,
) {
    let bob = bcrypt::hash("bob-pw", 4).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            r#"
issuer: {issuer}
services: [registry.test, other.test]
signing_keys: [{{key: k.pem, cert: c.pem}}]
refresh_secret_file: secret
accounts:
  - {{name: alice, password_hash: "{alice_hash}"}}
  - {{name: bob, password_hash: "{bob}"}}
policy:
{extra_rules}  - comment: read-only shared area
    resource: "library/**"
    actions: [pull]
  - kind: account
    resource: "${{name}}/**"
    actions: ["*"]
limits:
  max_body_bytes: 2048
  max_scopes: 4
{extra_limits}"#
        ),
    )
    .unwrap();
}

fn state_for(dir: &Path, clock: Clock) -> Arc<AppState> {
    AppState::new(config::load(&dir.join("config.yaml")).unwrap(), clock).unwrap()
}

fn basic(user: &str, pw: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{pw}")))
}

async fn send(state: &Arc<AppState>, req: Request<Body>) -> Reply {
    let resp = router(Arc::clone(state)).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn get(uri: &str, auth: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri);
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    b.body(Body::empty()).unwrap()
}

fn post(body: &str) -> Request<Body> {
    Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

const ALICE_GET: &str = "/token?service=registry.test";

fn alice() -> String {
    basic("alice", "alice-pw")
}

#[tokio::test]
async fn password_grants_only_what_policy_allows() {
    let w = World::new();
    let Reply { status, body, .. } = w.get("/token?service=registry.test&scope=repository:alice/demo:pull,push&scope=repository:bob/demo:pull,push&scope=repository:library/base:pull,push",
            Some(&alice())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token"], body["access_token"]);
    assert!(body.get("refresh_token").is_none());
    let c = claims(body["token"].as_str().unwrap());
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], "registry.test");
    assert_eq!(c["iss"], "test-issuer");
    assert_eq!(
        c["access"],
        serde_json::json!([
            {"type":"repository","name":"alice/demo","actions":["pull","push"]},
            {"type":"repository","name":"library/base","actions":["pull"]},
        ])
    );
}

#[tokio::test]
async fn anonymous_gets_an_empty_or_public_grant() {
    let w = World::new();
    let Reply { status, body, .. } = w
        .get(
            "/token?service=registry.test&scope=repository:alice/demo:pull",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "denial is not an error");
    assert_eq!(
        claims(body["token"].as_str().unwrap())["access"],
        serde_json::json!([])
    );
    let Reply { body, .. } = w
        .get(
            "/token?service=registry.test&scope=repository:library/x:pull",
            None,
        )
        .await;
    assert_eq!(
        claims(body["token"].as_str().unwrap())["access"][0]["actions"],
        serde_json::json!(["pull"])
    );
}

#[tokio::test]
async fn access_token_verifies_against_published_jwks() {
    let w = World::new();
    let Reply { body, .. } = w
        .get(
            "/token?service=other.test&scope=repository:bob/x:pull",
            Some(&basic("bob", "bob-pw")),
        )
        .await;
    let token = body["token"].as_str().unwrap();
    let Reply {
        status, body: jwks, ..
    } = w.get("/.well-known/jwks.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk = set
        .find(&kid)
        .expect("signing key is published under its kid");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["other.test"]);
    v.set_issuer(&["test-issuer"]);
    v.validate_nbf = true;
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims["access"][0]["name"], "bob/x");
}

#[tokio::test]
async fn offline_get_then_refresh_token_as_basic_password() {
    let w = World::new();
    let Reply { status, body, .. } = w
        .get(
            "/token?service=registry.test&offline_token=true&client_id=t",
            Some(&alice()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        claims(&refresh)["aud"],
        "test-issuer",
        "refresh audience is the server, not a registry"
    );

    let Reply { status, body, .. } = w
        .get(
            "/token?service=registry.test&offline_token=true&scope=repository:alice/a:push",
            Some(&basic("whoever", &refresh)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["refresh_token"],
        refresh.as_str(),
        "refresh tokens are not rotated"
    );
    assert_eq!(
        claims(body["token"].as_str().unwrap())["access"][0]["actions"],
        serde_json::json!(["push"])
    );
}

#[tokio::test]
async fn post_password_and_refresh_grants() {
    let w = World::new();
    let Reply { status, body, .. } = w.post("grant_type=password&username=alice&password=alice-pw&access_type=offline&service=registry.test&client_id=t&scope=repository%3Aalice%2Fa%3Apull+repository%3Abob%2Fb%3Apull").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "repository:alice/a:pull");
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    let Reply { status, body, .. } = w.post(&format!("grant_type=refresh_token&refresh_token={refresh}&service=registry.test&client_id=t&scope=repository:alice/a:push")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["refresh_token"], refresh.as_str());
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["access"][0]["actions"],
        serde_json::json!(["push"])
    );

    // Without access_type=offline there is no refresh token.
    let Reply { body, .. } = w
        .post("grant_type=password&username=alice&password=alice-pw&service=registry.test")
        .await;
    assert!(body.get("refresh_token").is_none());
}

#[tokio::test]
async fn chunked_post_body_without_content_length() {
    let w = World::new();
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"grant_type=pass")),
        Ok(Bytes::from_static(b"word&username=alice&pass")),
        Ok(Bytes::from_static(b"word=alice-pw&service=registry.test")),
    ];
    let req = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let Reply { status, body, .. } = send(&w.state, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn oversized_bodies_get_413_with_or_without_length() {
    let w = World::new();
    let big = format!(
        "grant_type=password&username=alice&password={}",
        "x".repeat(4096)
    );
    let Reply { status, body, .. } = w.post(&big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "invalid_request");

    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..10).map(|_| Ok(Bytes::from(vec![b'a'; 1000]))).collect();
    let req = Request::post("/token")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let Reply { status, .. } = send(&w.state, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn bad_credentials_are_401_on_get_and_invalid_grant_on_post() {
    let w = World::new();
    for auth in [basic("alice", "wrong"), basic("nobody", "alice-pw")] {
        let resp = w.get("/token?service=registry.test", Some(&auth)).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        assert!(resp.headers.contains_key(header::WWW_AUTHENTICATE));
    }
    let Reply { status, body, .. } = w
        .post("grant_type=password&username=alice&password=nope&service=registry.test")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn hostile_get_requests_get_clear_400s() {
    let w = World::new();
    let long_scope = format!("repository:{}:pull", "a".repeat(600));
    let many: String = (0..5)
        .map(|i| format!("&scope=repository:r{i}:pull"))
        .collect();
    let cases: Vec<(String, Option<String>, &str)> = vec![
        (
            "/token?service=registry.test&scope=repository".into(),
            None,
            "INVALID_SCOPE",
        ),
        (
            "/token?service=registry.test&scope=repository:a:".into(),
            None,
            "INVALID_SCOPE",
        ),
        (
            format!("/token?service=registry.test&scope={long_scope}"),
            None,
            "INVALID_SCOPE",
        ),
        (
            format!("/token?service=registry.test{many}"),
            None,
            "INVALID_SCOPE",
        ),
        (
            "/token?service=registry.test&scope=%ff%fe".into(),
            None,
            "INVALID_REQUEST",
        ),
        ("/token?service=nope.test".into(), None, "INVALID_REQUEST"),
        ("/token".into(), None, "INVALID_REQUEST"),
        (
            "/token?service=registry.test".into(),
            Some("Basic %%%".into()),
            "INVALID_REQUEST",
        ),
        (
            "/token?service=registry.test".into(),
            Some("Basic bm9jb2xvbg==".into()),
            "INVALID_REQUEST",
        ),
        (
            "/token?service=registry.test".into(),
            Some("Digest abc".into()),
            "INVALID_REQUEST",
        ),
        (
            format!("/token?service=registry.test&x={}", "y".repeat(9000)),
            None,
            "INVALID_REQUEST",
        ),
    ];
    for (uri, auth, code) in cases {
        let Reply { status, body, .. } = w.get(&uri, auth.as_deref()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["errors"][0]["code"], code, "{uri}");
        assert!(!body["errors"][0]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn hostile_posts_get_oauth_errors() {
    let w = World::new();
    let cases = [
        (
            "grant_type=magic&service=registry.test",
            "unsupported_grant_type",
        ),
        ("service=registry.test", "invalid_request"),
        (
            "grant_type=password&service=registry.test&password=x",
            "invalid_request",
        ),
        (
            "grant_type=refresh_token&service=registry.test",
            "invalid_request",
        ),
        (
            "grant_type=refresh_token&service=registry.test&refresh_token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAAAAAAAAAAAAAAAAAAAAAA",
            "invalid_grant",
        ),
        (
            "grant_type=password&service=registry.test&username=alice&password=alice-pw&scope=bad",
            "invalid_scope",
        ),
        (
            "grant_type=password&username=%ff&password=x",
            "invalid_request",
        ),
    ];
    for (body, error) in cases {
        let Reply {
            status,
            body: reply,
            ..
        } = w.post(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["error"], error, "{body}: {reply}");
    }
    let req = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(send(&w.state, req).await.body["error"], "invalid_request");
}

fn two_hours_later() -> SystemTime {
    crate::clock::now() + Duration::from_secs(7200)
}

#[tokio::test]
async fn refresh_tokens_expire_and_are_revoked_by_password_change() {
    let w = World::new();
    let offline = "grant_type=password&username=alice&password=alice-pw&access_type=offline&service=registry.test";
    let refresh = w.post(offline).await.body["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let refresh_req = || {
        post(&format!(
            "grant_type=refresh_token&refresh_token={refresh}&service=registry.test"
        ))
    };

    let later = w.restart(two_hours_later);
    let r = send(&later, refresh_req()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error_description"], "refresh token expired");

    // Same secret, same account name, new password: the old token is revoked.
    let new_hash = bcrypt::hash("new-pw", 4).unwrap();
    write_config(w.dir.path(), "test-issuer", &new_hash, "");
    let changed = w.restart(crate::clock::now);
    let r = send(&changed, refresh_req()).await;
    assert_eq!(r.body["error_description"], "refresh token was revoked");
    let r = send(&w.state, refresh_req()).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the unchanged server still accepts it"
    );
}

#[tokio::test]
async fn health_and_unknown_paths() {
    let w = World::new();
    let resp = w.get("/healthz", None).await;
    assert_eq!(resp.status, StatusCode::OK);
    let Reply { status, body, .. } = w.get("/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errors"][0]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn client_credentials_without_a_certificate_is_invalid_client() {
    let w = World::new();
    let r = w
        .post("grant_type=client_credentials&service=registry.test")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "invalid_client");
}

#[tokio::test]
async fn token_exchange_request_errors() {
    let w = World::new();
    let exchange = "grant_type=urn:ietf:params:oauth:grant-type:token-exchange";
    let jwt_type = "subject_token_type=urn:ietf:params:oauth:token-type:jwt";
    let forged = format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"iss":"https://nobody.test","aud":"x","exp":1}"#)
    );
    let cases = [
        (
            format!("{exchange}&audience=registry.test&{jwt_type}"),
            "invalid_request",
            "missing subject_token",
        ),
        (
            format!(
                "{exchange}&audience=registry.test&subject_token=a.b.c&subject_token_type=urn:x"
            ),
            "invalid_request",
            "unsupported subject_token_type",
        ),
        (
            format!("{exchange}&audience=registry.test&subject_token=a.b.c"),
            "invalid_request",
            "missing subject_token_type",
        ),
        (
            format!("{exchange}&audience=elsewhere.test&{jwt_type}&subject_token={forged}"),
            "invalid_target",
            "unknown audience",
        ),
        (
            format!("{exchange}&audience=registry.test&{jwt_type}&subject_token={forged}"),
            "invalid_request",
            "issuer is not trusted",
        ),
        (
            format!("{exchange}&audience=registry.test&{jwt_type}&subject_token=not-a-jwt"),
            "invalid_request",
            "not a well-formed JWT",
        ),
        (
            format!(
                "{exchange}&audience=registry.test&{jwt_type}&subject_token={forged}&requested_token_type=urn:ietf:params:oauth:token-type:access_token"
            ),
            "invalid_request",
            "is not issued",
        ),
    ];
    for (body, error, text) in cases {
        let Reply {
            status,
            body: reply,
            ..
        } = w.post(&body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["error"], error, "{body}: {reply}");
        assert!(
            reply["error_description"].as_str().unwrap().contains(text),
            "{body}: {reply}"
        );
    }
}

#[tokio::test]
async fn authorization_server_metadata() {
    let w = World::new();
    let Reply {
        status, body: m, ..
    } = w.get("/.well-known/oauth-authorization-server", None).await;
    assert_eq!(status, StatusCode::OK);
    let base = m["issuer"].as_str().unwrap();
    assert_eq!(m["token_endpoint"], format!("{base}/token"));
    assert_eq!(m["jwks_uri"], format!("{base}/.well-known/jwks.json"));
    let grants: Vec<&str> = m["grant_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    for g in [
        "password",
        "refresh_token",
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ] {
        assert!(grants.contains(&g), "{g}");
    }
}

/// A client CA named `name` (its certificate, PEM) and a node certificate
/// it signed (DER).
fn node_ca(name: &str) -> (String, CertificateDer<'static>) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:worker-1");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.der().clone())
}

/// A verified client certificate (as the TLS listener records it) makes a
/// GET without Basic the node, not anonymous, when it chains to the client
/// CA of the settings in force; its refresh token names that CA. One from
/// another CA of the same name (the bundle changed since the connection
/// was made) is refused.
#[tokio::test]
async fn get_with_a_verified_node_certificate_is_the_node() {
    let w = World::with(
        "  - kind: node\n    resource: \"nodes/${node}/**\"\n    actions: [pull]\n",
        4,
    );
    let (ca_pem, cert) = node_ca("node CA");
    let (_, stranger) = node_ca("node CA");
    let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&server_key)
        .unwrap();
    let dir = w.dir.path();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("client-ca.pem"), &ca_pem).unwrap();
    let mut config = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    config.push_str("tls:\n  cert: server.crt\n  key: server.key\n  client_ca: client-ca.pem\n");
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let state = w.restart(crate::clock::now);
    let request = |cert: &CertificateDer<'static>| {
        let mut req = get(
            "/token?service=registry.test&scope=repository:nodes/worker-1/x:pull&offline_token=true",
            None,
        );
        req.extensions_mut().insert(crate::authenticate::Peer {
            addr: Some("127.0.0.1:9".parse().unwrap()),
            certificates: Some(vec![cert.clone()].into()),
        });
        req
    };
    let Reply { status, body, .. } = send(&state, request(&cert)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = claims(body["token"].as_str().unwrap());
    assert_eq!(c["sub"], "node:worker-1");
    assert_eq!(c["access"][0]["actions"], serde_json::json!(["pull"]));
    let refresh = body["refresh_token"]
        .as_str()
        .expect("an authenticated node may ask for a refresh token");
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    assert_eq!(
        claims(refresh)["via"],
        crate::identity::certificate::fingerprint(&ca_der),
        "the refresh token names the CA"
    );
    let Reply { status, body, .. } = send(&state, request(&stranger)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn repeated_failures_get_429_with_retry_after_then_recover() {
    let w = World::new();
    let wrong = || {
        get(
            "/token?service=registry.test",
            Some(&basic("alice", "wrong")),
        )
    };
    for _ in 0..5 {
        let Reply { status, .. } = send(&w.state, wrong()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let resp = w.get("/token?service=registry.test", Some(&alice())).await;
    assert_eq!(
        resp.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    assert_eq!(resp.headers[header::RETRY_AFTER], "1");
    let Reply { status, body, .. } = w
        .post("grant_type=password&username=alice&password=alice-pw&service=registry.test")
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"], "slow_down");
    let Reply { status, .. } = w
        .get(
            "/token?service=registry.test",
            Some(&basic("bob", "bob-pw")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "other accounts are not affected");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let Reply { status, .. } = w.get("/token?service=registry.test", Some(&alice())).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "after the backoff the right password works"
    );
}

#[tokio::test]
async fn metrics_and_readiness() {
    let w = World::new();
    w.get(ALICE_GET, Some(&alice())).await;
    w.get(ALICE_GET, Some(&alice())).await;
    w.get(ALICE_GET, Some(&basic("alice", "nope"))).await;
    let resp = router(Arc::clone(&w.state))
        .oneshot(get("/metrics", None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    for want in [
        "regauth_requests_total{endpoint=\"/token\",outcome=\"ok\"} 2",
        "regauth_requests_total{endpoint=\"/token\",outcome=\"unauthorized\"} 1",
        "regauth_auth_failures_total{reason=\"bad_credentials\"} 1",
        "regauth_password_cache_total{result=\"hit\"} 1",
        "regauth_token_issue_seconds_count 2",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    let Reply { status, body, .. } = w.get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["signing_keys"], 1);
}

/// containerd, handed a plugin's username and password pair, sends the
/// refresh token through the password grant first.
#[tokio::test]
async fn password_grant_accepts_a_refresh_token_as_the_password() {
    let w = World::new();
    let Reply { body, .. } = w.post("grant_type=password&username=alice&password=alice-pw&access_type=offline&service=registry.test").await;
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let Reply { status, body, .. } = w.post(&format!(
            "grant_type=password&username=regauth&password={refresh}&service=registry.test&scope=repository:alice/x:pull"
        )).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["sub"],
        "alice"
    );
}

/// A config reload in the middle of a request does not split it: the
/// request authenticated under the old config is decided and signed under
/// the old config too. The reload lands while the password hash runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_mid_request_leaves_the_request_on_one_config() {
    // A cost-12 hash takes long enough to swap the config while it runs.
    let w = World::with("", 12);
    let state = Arc::clone(&w.state);
    let request = tokio::spawn(async move {
        send(
            &state,
            get(
                "/token?service=registry.test&scope=repository:alice/x:pull",
                Some(&alice()),
            ),
        )
        .await
    });
    // The cache miss is counted just before the hash starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while w.state.metrics().password_cache_misses() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never hashed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The new config has another issuer and grants alice no pull: the
    // first matching rule wins and allows only delete.
    let deny_all = "  - kind: account\n    resource: \"alice/**\"\n    actions: [delete]\n";
    write_config(
        w.dir.path(),
        "reloaded-issuer",
        &bcrypt::hash("other-pw", 4).unwrap(),
        deny_all,
    );
    w.state
        .replace_settings(config::load(&w.dir.path().join("config.yaml")).unwrap());
    let reply = request.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let c = claims(reply.body["token"].as_str().unwrap());
    assert_eq!(
        c["iss"], "test-issuer",
        "signed under the config it began with"
    );
    assert_eq!(
        c["access"][0]["actions"],
        serde_json::json!(["pull"]),
        "decided under the config it began with"
    );
    // The next request runs under the new config.
    let after = w
        .get(
            "/token?service=registry.test&scope=repository:alice/x:pull",
            Some(&basic("alice", "other-pw")),
        )
        .await;
    let c = claims(after.body["token"].as_str().unwrap());
    assert_eq!(c["iss"], "reloaded-issuer");
    assert_eq!(c["access"], serde_json::json!([]));
}

/// A request from `addr`, as the listener records it.
fn from(addr: &str, mut req: Request<Body>) -> Request<Body> {
    req.extensions_mut().insert(crate::authenticate::Peer {
        addr: Some(addr.parse().unwrap()),
        certificates: None,
    });
    req
}

/// Sends every request at once and returns the statuses.
async fn all_at_once(state: &Arc<AppState>, requests: Vec<Request<Body>>) -> Vec<StatusCode> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|req| {
            let state = Arc::clone(state);
            tokio::spawn(async move { send(&state, req).await.status })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn hashes(w: &World) -> u64 {
    w.state.metrics().password_hashes().get()
}

/// Concurrent guesses are reserved against the allowance before hashing:
/// before, 40 at once ran 40 hashes and none was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_passwords_hash_at_most_the_allowance() {
    let w = World::new();
    let guesses = (0..40)
        .map(|i| {
            from(
                "10.0.0.1:1000",
                get(ALICE_GET, Some(&basic("alice", &format!("guess-{i}")))),
            )
        })
        .collect();
    let statuses = all_at_once(&w.state, guesses).await;
    assert_eq!(hashes(&w), 5, "the account's allowance is 5");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        5
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS)
    );

    // One address spraying invented names: 4 x 5 = 20.
    let w = World::new();
    let spray = (0..60)
        .map(|i| {
            from(
                "10.0.0.2:1000",
                get(ALICE_GET, Some(&basic(&format!("user{i}"), "pw"))),
            )
        })
        .collect();
    let statuses = all_at_once(&w.state, spray).await;
    assert_eq!(hashes(&w), 20, "the address's allowance is 20");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        40
    );
}

/// Fifty parallel pulls with the same password cost one hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_checks_share_one_hash() {
    let w = World::with("", 8);
    let same = (0..50)
        .map(|_| from("10.0.0.3:1000", get(ALICE_GET, Some(&alice()))))
        .collect();
    let statuses = all_at_once(&w.state, same).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(hashes(&w), 1);
}

/// Unknown names get a record too, so 429 does not tell them from real ones.
#[tokio::test]
async fn invented_names_are_throttled_like_real_ones() {
    let w = World::new();
    for name in ["alice", "nobody-here"] {
        for _ in 0..5 {
            let r = w.get(ALICE_GET, Some(&basic(name, "wrong"))).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        }
        let r = w.get(ALICE_GET, Some(&basic(name, "wrong"))).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{name}");
    }
}

/// With every hashing slot busy past the queue timeout, a check is refused
/// with 503 and Retry-After rather than piling up threads and memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_password_hashing_is_503_with_retry_after() {
    let w = World::with_limits(
        "",
        12,
        "  max_concurrent_password_checks: 1\n  password_check_queue_timeout: 50ms\n",
    );
    let state = Arc::clone(&w.state);
    let slow = tokio::spawn(async move {
        send(
            &state,
            from("10.0.1.1:1000", get(ALICE_GET, Some(&alice()))),
        )
        .await
    });
    // The one slot is taken once the hash has started (a cost-12 bcrypt
    // takes far longer than the 50 ms queue timeout).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hashes(&w) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hash never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = send(
        &w.state,
        from(
            "10.0.1.2:1000",
            get(ALICE_GET, Some(&basic("bob", "bob-pw"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    assert_eq!(r.body["errors"][0]["code"], "UNAVAILABLE");
    assert_eq!(
        slow.await.unwrap().status,
        StatusCode::OK,
        "the running check finishes"
    );
    assert_eq!(
        w.get(ALICE_GET, Some(&basic("bob", "bob-pw"))).await.status,
        StatusCode::OK,
        "a refused check did not count against bob"
    );
}
