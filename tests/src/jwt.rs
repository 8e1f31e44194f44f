//! Decoding and verifying the JWTs the token server issues.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// One entry of an access token's `access` claim.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AccessEntry {
    /// Resource type, e.g. `repository`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Resource name, e.g. `alice/demo`.
    pub name: String,
    /// Granted actions, e.g. `["pull", "push"]`.
    pub actions: Vec<String>,
}

/// The claims of a registry access token, typed as the contract demands
/// (`aud` a string, times integers, `access` present).
#[derive(Debug, Clone, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject (the principal's name).
    pub sub: String,
    /// Audience: the registry `service`, as a single string.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Not-before, seconds since the epoch.
    pub nbf: i64,
    /// Issued-at, seconds since the epoch.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
    /// Granted access.
    pub access: Vec<AccessEntry>,
}

impl AccessClaims {
    /// The actions granted on `type:name`, empty when none.
    pub fn actions_on(&self, kind: &str, name: &str) -> Vec<String> {
        let mut actions: Vec<String> = self
            .access
            .iter()
            .filter(|e| e.kind == kind && e.name == name)
            .flat_map(|e| e.actions.iter().cloned())
            .collect();
        actions.sort();
        actions.dedup();
        actions
    }
}

/// Verifies an ES256 access token against the signing certificate (PEM) and
/// checks `iss`, `aud`, `exp` and `nbf`; panics with the reason otherwise.
pub fn verify_access_token(
    token: &str,
    cert_pem: &[u8],
    service: &str,
    issuer: &str,
) -> AccessClaims {
    let key = DecodingKey::from_ec_pem(cert_pem).expect("signing certificate is an EC PEM");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[service]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 60;
    jsonwebtoken::decode::<AccessClaims>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("access token does not verify: {e}\ntoken: {token}"))
        .claims
}

/// Decodes a JWT's header without verifying anything.
pub fn unverified_header(token: &str) -> serde_json::Value {
    decode_segment(token, 0)
}

/// Decodes a JWT's claims without verifying anything.
pub fn unverified_claims(token: &str) -> serde_json::Value {
    decode_segment(token, 1)
}

fn decode_segment(token: &str, index: usize) -> serde_json::Value {
    let segment = token
        .split('.')
        .nth(index)
        .unwrap_or_else(|| panic!("not a JWT (segment {index} missing): {token}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap_or_else(|e| panic!("JWT segment {index} is not base64url: {e}"));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("JWT segment {index} is not JSON: {e}"))
}
