//! Entry points for the fuzz targets in `fuzz/`: each runs one parser that
//! untrusted input reaches, and throws the result away. Not a stable API.

use std::path::Path;

use axum::http::{HeaderMap, HeaderValue, header};

/// Scope strings, as `scope` parameters carry them.
pub fn scopes(input: &str) {
    let _ = crate::scope::parse_all(input.split('&'), 32);
}

/// An `application/x-www-form-urlencoded` query string or body.
pub fn form(input: &[u8]) {
    let _ = crate::http::form::Form::parse(input);
}

/// `GET /token`: a query string and an `Authorization` header value.
pub fn get_request(query: &str, authorization: &[u8]) {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(authorization) {
        headers.insert(header::AUTHORIZATION, v);
    }
    let _ = crate::http::request::from_get(Some(query), &headers);
}

/// `POST /token`: a form body, every grant.
pub fn post_body(body: &[u8]) {
    if let Ok(form) = crate::http::form::Form::parse(body) {
        let _ = crate::http::request::parse_post(&form);
    }
}

/// A subject token's header and claims, before any signature check.
pub fn subject_token(token: &str) {
    let _ = crate::identity::jws::parse(token);
}

/// An issuer's key set as fetched: the `Cache-Control` value, then the
/// JWKS document.
pub fn issuer_jwks(cache_control: &str, document: &[u8]) {
    let _ = crate::identity::jwks::max_age(cache_control);
    let _ = crate::identity::jwks::parse_jwks(document);
}

/// A client certificate (DER) as TLS hands it over, read into a principal
/// under the default node convention.
pub fn client_certificate(der: &[u8]) {
    let _ = crate::identity::certificate::principal(der, &Default::default());
}

/// The server's YAML config. Relative paths resolve against a directory
/// that does not exist, so file references fail fast.
pub fn server_config(text: &str) {
    let _ = crate::config::load_str(
        text,
        Path::new("/nonexistent/regauth-fuzz"),
        Path::new("fuzz.yaml"),
    );
}

/// A `shared_state` URL: `redis://`, `rediss://`, `redis+sentinel://`,
/// `rediss+sentinel://`, or anything else.
pub fn shared_state_url(input: &str) {
    let _ = crate::shared::endpoint::Endpoint::parse(input);
}

/// A revocation as read back from Redis (a field, a newline, its value),
/// which any client of that Redis may have written; and the same text as
/// `revoke --subject` would read it.
pub fn revocation_entry(input: &str) {
    let (field, value) = input.split_once('\n').unwrap_or((input, ""));
    let _ = crate::shared::revocation::read_entry(field, value, std::time::Duration::from_secs(1));
    let _ = crate::revoke::subject(input);
}
