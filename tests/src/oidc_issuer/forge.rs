//! Forged tokens: what an attacker without the issuer's private key can make.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::keys::IssuerKey;

/// A JWS with header `header`, payload `claims` and the given raw
/// signature bytes (empty for an unsecured JWT).
pub fn compact(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Unsecured JWTs (RFC 7519 section 6): `alg` set to `none` (and the
/// spellings `None`, `NONE`, `nOnE`), an empty signature, and `kid` naming
/// a published key so a lookup by kid succeeds.
pub fn alg_none(kid: &str, claims: &Value) -> Vec<(String, String)> {
    ["none", "None", "NONE", "nOnE"]
        .into_iter()
        .map(|alg| {
            (
                format!("alg {alg:?}, empty signature"),
                compact(&json!({"alg": alg, "typ": "JWT", "kid": kid}), claims, b""),
            )
        })
        .collect()
}

/// HMAC-signed tokens whose secret is public: the issuer key's SPKI in PEM
/// (with and without its final newline), in DER, and its JWK as JSON. A
/// verifier that picks the algorithm from the token header and feeds "the
/// key" into HMAC accepts these (the classic RS/ES-to-HS confusion).
pub fn hmac_with_public_key(key: &IssuerKey, claims: &Value) -> Vec<(String, String)> {
    let pem = key.public_key_pem();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("public key PEM", pem.clone().into_bytes()),
        (
            "public key PEM without final newline",
            pem.trim_end().as_bytes().to_vec(),
        ),
        ("public key DER", key.public_key_der().to_vec()),
        ("public JWK JSON", key.jwk().to_string().into_bytes()),
    ];
    let mut tokens = Vec::new();
    for (label, secret) in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.typ = Some("JWT".into());
            header.kid = Some(key.kid().to_owned());
            let token = jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&secret))
                .expect("HMAC signing cannot fail");
            tokens.push((format!("{alg:?} keyed with the {label}"), token));
        }
    }
    tokens
}

/// `token` with its payload replaced by `claims` and the original header
/// and signature kept (a signature over other claims).
pub fn swap_payload(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().expect("JWT header");
    let _ = parts.next().expect("JWT payload");
    let signature = parts.next().expect("JWT signature");
    format!(
        "{header}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{unverified_claims, unverified_header};
    use crate::oidc_issuer::keys::KeyAlg;

    #[test]
    fn alg_none_tokens_have_an_empty_signature() {
        let claims = json!({"sub": "x"});
        for (label, token) in alg_none("k1", &claims) {
            assert!(token.ends_with('.'), "{label}: {token}");
            assert_eq!(unverified_claims(&token), claims);
            assert_eq!(unverified_header(&token)["kid"], "k1");
        }
    }

    #[test]
    fn hmac_forgeries_verify_with_the_public_pem_as_secret() {
        let key = IssuerKey::generate(KeyAlg::Es256);
        let claims = json!({"sub": "x", "exp": 4_000_000_000_i64});
        let forged = hmac_with_public_key(&key, &claims);
        assert_eq!(forged.len(), 12);
        let (_, first) = &forged[0];
        // A confused verifier would accept it: it checks under HS256 with the PEM.
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(
            first,
            &jsonwebtoken::DecodingKey::from_secret(key.public_key_pem().as_bytes()),
            &validation,
        )
        .expect("the forgery is a valid HS256 token under the PEM secret");
    }

    #[test]
    fn swapped_payload_keeps_header_and_signature() {
        let key = IssuerKey::generate(KeyAlg::Es256);
        let token = key.sign(&json!({"sub": "a"}));
        let swapped = swap_payload(&token, &json!({"sub": "b"}));
        assert_eq!(unverified_claims(&swapped)["sub"], "b");
        assert_eq!(token.rsplit('.').next(), swapped.rsplit('.').next());
    }
}
