//! Access tokens: short-lived JWTs that a registry verifies offline.
//!
//! `now` is always an argument so tests can fix the clock.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{IssueError, Window, random_id};
use crate::keys::SigningKey;
use crate::policy::Grant;
use crate::secret::Secret;

/// The claims of an access token, in the shape distribution expects:
/// `aud` is a string and times are integers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccessClaims<'a> {
    /// Issuer, matched against the registry's `auth.token.issuer`.
    pub iss: &'a str,
    /// The authenticated subject; empty for anonymous callers.
    pub sub: &'a str,
    /// The registry `service` this token is for.
    pub aud: &'a str,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Not before (seconds since the epoch).
    pub nbf: u64,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Unique token ID.
    pub jti: String,
    /// Granted access; may be empty.
    pub access: &'a [Grant],
}

/// A signed access token with the facts the reply needs.
#[derive(Debug)]
pub struct AccessToken {
    /// The compact JWS.
    pub token: Secret,
    /// Its `jti`, for the audit log.
    pub jti: String,
    /// `iat` as seconds.
    pub issued_at: u64,
    /// Lifetime in seconds.
    pub expires_in: u64,
}

/// Signs an access token for `sub` on `service` carrying `access`.
pub fn access_token(
    key: &SigningKey,
    issuer: &str,
    sub: &str,
    service: &str,
    access: &[Grant],
    ttl: Duration,
    now: SystemTime,
) -> Result<AccessToken, IssueError> {
    let window = Window::starting(now, ttl);
    let claims = AccessClaims {
        iss: issuer,
        sub,
        aud: service,
        exp: window.exp,
        nbf: window.nbf,
        iat: window.iat,
        jti: random_id()?,
        access,
    };
    let json = serde_json::to_vec(&claims)?;
    let token = Secret::new(key.sign_claims(&json)?);
    Ok(AccessToken {
        token,
        jti: claims.jti,
        issued_at: window.iat,
        expires_in: ttl.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Algorithm, generate};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn claim_types_match_what_registries_expect() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let g = generate(Algorithm::Es256, "t", now).unwrap();
        std::fs::write(dir.path().join("k"), g.key_pem).unwrap();
        std::fs::write(dir.path().join("c"), g.cert_pem).unwrap();
        let key = SigningKey::load(&dir.path().join("k"), &dir.path().join("c"), false).unwrap();
        let grants = [Grant {
            resource_type: "repository".into(),
            name: "alice/demo".into(),
            actions: vec!["pull".into()],
        }];
        let t = access_token(
            &key,
            "iss",
            "alice",
            "registry.test",
            &grants,
            Duration::from_secs(300),
            now,
        )
        .unwrap();
        let payload = t.token.expose().split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(claims["aud"].is_string(), "aud must be a JSON string");
        for k in ["exp", "nbf", "iat"] {
            assert!(claims[k].is_u64(), "{k} must be an integer");
        }
        assert_eq!(claims["iat"], 1_800_000_000u64);
        assert_eq!(claims["exp"], 1_800_000_300u64);
        assert!(claims["nbf"].as_u64().unwrap() < 1_800_000_000);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
        assert_eq!(
            claims["access"],
            serde_json::json!([{"type":"repository","name":"alice/demo","actions":["pull"]}])
        );
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.token.expose().split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid());
        let t2 = access_token(
            &key,
            "iss",
            "alice",
            "registry.test",
            &grants,
            Duration::from_secs(300),
            now,
        )
        .unwrap();
        assert_ne!(t.jti, t2.jti);
    }
}
