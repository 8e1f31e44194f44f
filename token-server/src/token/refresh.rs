//! Refresh tokens: the long-ish lived registry credential.
//!
//! They are HS256 JWTs under a secret shared by all replicas. Only this
//! server verifies them, so a MAC is enough and costs microseconds. Their
//! audience is this server's issuer, which is never a registry service, and
//! registries accept only asymmetric algorithms, so a registry can never take
//! one as an access token.

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{IssueError, Window, random_id};
use crate::clock::unix;
use crate::identity::Principal;
use crate::secret::Secret;

/// The `token_use` claim value that marks a refresh token.
const TOKEN_USE: &str = "refresh";

/// Why a refresh token was refused. The message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The token is past its `exp`.
    #[error("refresh token expired")]
    Expired,
    /// Not yet valid, bad signature, wrong audience, or not a JWT at all.
    #[error("refresh token is invalid")]
    Invalid,
    /// The account behind the token was removed or its password changed.
    #[error("refresh token was revoked")]
    Revoked,
}

/// The claims inside a refresh token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshClaims {
    /// Issuer: this server.
    pub iss: String,
    /// Audience: this server again, never a registry.
    pub aud: String,
    /// The principal's subject.
    pub sub: String,
    /// Issued at (seconds).
    pub iat: u64,
    /// Not before (seconds).
    pub nbf: u64,
    /// Expiry (seconds).
    pub exp: u64,
    /// Unique ID, for audit logs.
    pub jti: String,
    /// Marks the token as a refresh token.
    pub token_use: String,
    /// The principal the token stands for.
    pub principal: Principal,
    /// For accounts, a fingerprint of the password hash at issue time, so a
    /// password change revokes outstanding tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwv: Option<String>,
}

/// Issues and verifies refresh tokens.
pub struct RefreshTokens {
    issuer: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for RefreshTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshTokens")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl RefreshTokens {
    /// Uses `secret` (at least 32 bytes) for tokens of `issuer`.
    pub fn new(issuer: &str, secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.leeway = 0;
        // exp and nbf are checked in `verify` against the caller's clock, not
        // the system's, so tests control time.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        RefreshTokens {
            issuer: issuer.to_owned(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Issues a token for `principal` valid for `ttl` from `now`.
    pub fn issue(
        &self,
        principal: &Principal,
        pwv: Option<String>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(Secret, RefreshClaims), IssueError> {
        let window = Window::starting(now, ttl);
        let claims = RefreshClaims {
            iss: self.issuer.clone(),
            aud: self.issuer.clone(),
            sub: principal.subject(),
            iat: window.iat,
            nbf: window.nbf,
            exp: window.exp,
            jti: random_id()?,
            token_use: TOKEN_USE.to_owned(),
            principal: principal.clone(),
            pwv,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(IssueError::Mac)?;
        Ok((Secret::new(token), claims))
    }

    /// Verifies signature, issuer, audience, type and validity window.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<RefreshClaims, RefreshError> {
        let data = jsonwebtoken::decode::<RefreshClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| RefreshError::Invalid)?;
        let claims = data.claims;
        let now = unix(now);
        if claims.token_use != TOKEN_USE || claims.nbf > now {
            return Err(RefreshError::Invalid);
        }
        if claims.exp <= now {
            return Err(RefreshError::Expired);
        }
        Ok(claims)
    }

    /// True if `token` has the shape of a JWT; used to tell a refresh token
    /// from a password without a costly password check.
    pub fn looks_like_token(token: &str) -> bool {
        token.len() > 40 && token.split('.').count() == 3 && token.starts_with("eyJ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> RefreshTokens {
        RefreshTokens::new("regauth", &[7; 32])
    }

    fn alice() -> Principal {
        Principal {
            kind: crate::identity::Kind::Account,
            name: "alice".into(),
            attributes: Default::default(),
        }
    }

    #[test]
    fn round_trip() {
        let t = tokens();
        let now = crate::clock::now();
        let (tok, claims) = t
            .issue(&alice(), Some("v1".into()), Duration::from_secs(60), now)
            .unwrap();
        assert!(RefreshTokens::looks_like_token(tok.expose()));
        assert_eq!(t.verify(tok.expose(), now).unwrap(), claims);
        assert_eq!(claims.aud, "regauth");
        assert_eq!(claims.sub, "alice");
    }

    #[test]
    fn expired_tampered_wrong_audience() {
        let t = tokens();
        let now = crate::clock::now();
        let (tok, _) = t
            .issue(&alice(), None, Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(
            t.verify(tok.expose(), now + Duration::from_secs(61)),
            Err(RefreshError::Expired)
        );

        let mut parts: Vec<String> = tok.expose().split('.').map(String::from).collect();
        parts[1] = parts[1].replacen('e', "f", 1);
        assert_eq!(t.verify(&parts.join("."), now), Err(RefreshError::Invalid));

        let other = RefreshTokens::new("someone-else", &[7; 32]);
        let (foreign, _) = other
            .issue(&alice(), None, Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(t.verify(foreign.expose(), now), Err(RefreshError::Invalid));

        let wrong_key = RefreshTokens::new("regauth", &[8; 32]);
        let (forged, _) = wrong_key
            .issue(&alice(), None, Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(t.verify(forged.expose(), now), Err(RefreshError::Invalid));
        assert_eq!(t.verify("not a token", now), Err(RefreshError::Invalid));
    }

    #[test]
    fn not_valid_before_issue() {
        let t = tokens();
        let now = crate::clock::now();
        let (tok, _) = t
            .issue(&alice(), None, Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(
            t.verify(tok.expose(), now - Duration::from_secs(3600)),
            Err(RefreshError::Invalid)
        );
    }
}
