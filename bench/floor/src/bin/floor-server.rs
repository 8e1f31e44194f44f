//! The floor under `GET /token`: accept a connection, parse the Basic
//! header and the scope, and sign one ES256 access token of regauth's shape
//! with a key parsed once. No authentication, no policy, no logging, no
//! limits: only what any token server must do for every request.
//!
//! Usage: floor-server ADDR SIGNING_KEY_PEM

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    header: String,
}

fn answer(signer: &Signer, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    let user = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|t| t.split_once(':').map(|(u, _)| u.to_owned()))
        .unwrap_or_default();
    let scope = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("scope="))
        .unwrap_or_default();
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let iat = unix_now();
    let mut jti = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut jti);
    let claims = json!({
        "iss": "regauth-bench", "sub": user, "aud": "registry.bench",
        "exp": iat + 300, "nbf": iat - 10, "iat": iat,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "access": [{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let mut token = signer.header.clone();
    URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
    let Ok(sig) = signer.key.sign(&signer.rng, token.as_bytes()) else {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    };
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
    let body = json!({"token": token, "access_token": token, "expires_in": 300, "issued_at": iat});
    Response::new(Full::new(Bytes::from(body.to_string())))
}

/// The floor's one reader of the wall clock.
#[allow(clippy::disallowed_methods)]
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(key)) = (args.next(), args.next()) else {
        return Err("usage: floor-server ADDR SIGNING_KEY_PEM".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let pem = std::fs::read(key)?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
        .map_err(|e| e.to_string())?;
    let header = format!(
        "{}.",
        URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ES256","kid":"floor"}"#)
    );
    let signer = Arc::new(Signer {
        key,
        rng: SystemRandom::new(),
        header,
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            loop {
                let (tcp, _) = listener.accept().await?;
                let _ = tcp.set_nodelay(true);
                let signer = Arc::clone(&signer);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let resp = answer(&signer, &req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        })
}
