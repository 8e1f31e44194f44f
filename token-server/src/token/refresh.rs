//! Refresh tokens: the long-ish lived registry credential.
//!
//! They are HS256 JWTs under a secret shared by all replicas. Only this
//! server verifies them, so a MAC is enough and costs microseconds. Their
//! audience is this server's issuer, which is never a registry service, and
//! registries accept only asymmetric algorithms, so a registry can never take
//! one as an access token.
//!
//! Rotation: several secrets may be configured. The first signs and every
//! one verifies, so a secret can be added everywhere before it signs and
//! removed once its tokens have expired, without logging anyone out. Each
//! token names its secret in the header `kid`: a fingerprint of the secret
//! (see [`secret_kid`]), never the secret. Verification takes the secret
//! with that kid directly; an unknown kid is invalid, because the secret
//! that made it is not trusted (any more). A token without a kid predates
//! rotation support: it is tried against every configured secret in order,
//! so tokens issued before the first rotation keep working through it.

use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{IssueError, Window, random_id};
use crate::clock::unix;
use crate::identity::Principal;
use crate::secret::Secret;

/// The `token_use` claim value that marks a refresh token.
const TOKEN_USE: &str = "refresh";

/// How a refresh token's `jti` starts, so that `revoke --jti` can tell it
/// from an access token's (which cannot be revoked) and refuse the latter.
/// Access token IDs are base64url, which has no '.'.
pub const REFRESH_JTI_PREFIX: &str = "rt.";

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
    /// Unique ID (`rt.` and 128 random bits): the audit log's
    /// `refresh_jti`, and what `revoke --jti` takes.
    pub jti: String,
    /// Marks the token as a refresh token.
    pub token_use: String,
    /// The principal the token stands for.
    pub principal: Principal,
    /// For accounts, a fingerprint of the password hash at issue time, so a
    /// password change revokes outstanding tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwv: Option<String>,
    /// What vouched for any other principal when the token was minted,
    /// checked against the config on every refresh: the `iss` of its
    /// issuer (kubernetes, oidc), or `sha256:` and the fingerprint of the
    /// client CA its certificate chained to (node, certificate). Absent in
    /// tokens minted before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// What a secret's kid is derived from, so the kid is no other MAC the
/// server computes with that secret.
const KID_LABEL: &[u8] = b"regauth refresh-secret kid";

/// The kid of a refresh secret: 16 hex digits of an HMAC-SHA256 keyed by
/// the secret over a fixed label. It names the secret in token headers,
/// logs and `check-config` output without revealing anything about it: it
/// tells a guesser no more than each token's own MAC, also an HMAC under the
/// secret over text the holder can read.
pub fn secret_kid(secret: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), KID_LABEL);
    tag.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One verifying secret.
struct VerifyingKey {
    kid: String,
    decoding: DecodingKey,
}

/// Issues and verifies refresh tokens.
pub struct RefreshTokens {
    issuer: String,
    /// The kid of the signing (first) secret.
    kid: String,
    encoding: EncodingKey,
    /// Every secret, the signing one first.
    verifying: Vec<VerifyingKey>,
    validation: Validation,
}

impl std::fmt::Debug for RefreshTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshTokens")
            .field("issuer", &self.issuer)
            .field("kids", &self.kids())
            .finish_non_exhaustive()
    }
}

impl RefreshTokens {
    /// Signs and verifies with `secret` (at least 32 bytes) for tokens of
    /// `issuer`.
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
        let kid = secret_kid(secret);
        RefreshTokens {
            issuer: issuer.to_owned(),
            verifying: vec![VerifyingKey {
                kid: kid.clone(),
                decoding: DecodingKey::from_secret(secret),
            }],
            kid,
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// Also verifies tokens signed with `secret`, after the secrets already
    /// added. A secret already present is not added twice.
    pub fn also_verifying(mut self, secret: &[u8]) -> Self {
        let kid = secret_kid(secret);
        if !self.verifying.iter().any(|k| k.kid == kid) {
            self.verifying.push(VerifyingKey {
                kid,
                decoding: DecodingKey::from_secret(secret),
            });
        }
        self
    }

    /// The kid of every secret, the signing one first.
    pub fn kids(&self) -> Vec<&str> {
        self.verifying.iter().map(|k| k.kid.as_str()).collect()
    }

    /// Issues a token for `principal` valid for `ttl` from `now`, bound to
    /// its password-hash fingerprint `pwv` or to what vouched for it, `via`.
    pub fn issue(
        &self,
        principal: &Principal,
        pwv: Option<String>,
        via: Option<String>,
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
            jti: format!("{REFRESH_JTI_PREFIX}{}", random_id()?),
            token_use: TOKEN_USE.to_owned(),
            principal: principal.clone(),
            pwv,
            via,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(IssueError::Mac)?;
        Ok((Secret::new(token), claims))
    }

    /// Verifies signature, issuer, audience, type and validity window. The
    /// MAC is compared in constant time (aws-lc's `hmac::verify`).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<RefreshClaims, RefreshError> {
        let decode = |key: &VerifyingKey| {
            jsonwebtoken::decode::<RefreshClaims>(token, &key.decoding, &self.validation)
                .map(|data| data.claims)
                .ok()
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| RefreshError::Invalid)?;
        let claims = match header.kid {
            Some(kid) => self
                .verifying
                .iter()
                .find(|k| k.kid == kid)
                .and_then(decode),
            None => self.verifying.iter().find_map(decode),
        }
        .ok_or(RefreshError::Invalid)?;
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
            .issue(
                &alice(),
                Some("v1".into()),
                None,
                Duration::from_secs(60),
                now,
            )
            .unwrap();
        assert!(RefreshTokens::looks_like_token(tok.expose()));
        assert_eq!(t.verify(tok.expose(), now).unwrap(), claims);
        assert_eq!(claims.aud, "regauth");
        assert_eq!(claims.sub, "alice");
        assert!(claims.jti.starts_with(REFRESH_JTI_PREFIX), "{}", claims.jti);
        assert_eq!(claims.jti.len(), REFRESH_JTI_PREFIX.len() + 22);
    }

    #[test]
    fn expired_tampered_wrong_audience() {
        let t = tokens();
        let now = crate::clock::now();
        let (tok, _) = t
            .issue(&alice(), None, None, Duration::from_secs(60), now)
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
            .issue(&alice(), None, None, Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(t.verify(foreign.expose(), now), Err(RefreshError::Invalid));

        let wrong_key = RefreshTokens::new("regauth", &[8; 32]);
        let (forged, _) = wrong_key
            .issue(&alice(), None, None, Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(t.verify(forged.expose(), now), Err(RefreshError::Invalid));
        assert_eq!(t.verify("not a token", now), Err(RefreshError::Invalid));
    }

    #[test]
    fn tokens_name_their_secret_by_a_fingerprint_that_is_not_the_secret() {
        let t = tokens();
        let now = crate::clock::now();
        let (tok, _) = t
            .issue(&alice(), None, None, Duration::from_secs(60), now)
            .unwrap();
        let header = jsonwebtoken::decode_header(tok.expose()).unwrap();
        let kid = header.kid.unwrap();
        assert_eq!(kid, secret_kid(&[7; 32]));
        assert_eq!(kid.len(), 16);
        assert!(kid.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(kid, secret_kid(&[8; 32]));
        assert_eq!(t.kids(), [kid.as_str()]);
        assert!(!format!("{t:?}").contains("[7, 7"));
    }

    /// The publish, sign, retire sequence: A; A signs and B verifies; B
    /// signs and A verifies; B alone.
    #[test]
    fn rotation_keeps_old_tokens_valid_until_their_secret_is_retired() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let now = crate::clock::now();
        let ttl = Duration::from_secs(60);
        let only_a = RefreshTokens::new("regauth", &a);
        let (from_a, claims_a) = only_a.issue(&alice(), None, None, ttl, now).unwrap();

        let published = RefreshTokens::new("regauth", &a).also_verifying(&b);
        assert_eq!(published.verify(from_a.expose(), now), Ok(claims_a.clone()));

        let signing = RefreshTokens::new("regauth", &b).also_verifying(&a);
        assert_eq!(signing.kids(), [secret_kid(&b), secret_kid(&a)]);
        assert_eq!(signing.verify(from_a.expose(), now), Ok(claims_a));
        let (from_b, claims_b) = signing.issue(&alice(), None, None, ttl, now).unwrap();
        let kid = jsonwebtoken::decode_header(from_b.expose()).unwrap().kid;
        assert_eq!(kid, Some(secret_kid(&b)), "the first secret signs");
        assert_eq!(published.verify(from_b.expose(), now), Ok(claims_b.clone()));

        let retired = RefreshTokens::new("regauth", &b);
        assert_eq!(retired.verify(from_b.expose(), now), Ok(claims_b));
        assert_eq!(
            retired.verify(from_a.expose(), now),
            Err(RefreshError::Invalid),
            "a retired secret's tokens are refused"
        );
        let same_twice = RefreshTokens::new("regauth", &b).also_verifying(&b);
        assert_eq!(same_twice.kids().len(), 1);
    }

    /// Tokens from before rotation support have no kid: every secret is
    /// tried. A kid names exactly one secret: a known kid on a token MACed
    /// with another secret, or an unknown kid, is invalid.
    #[test]
    fn tokens_without_kid_try_every_secret_and_a_kid_picks_one() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let now = crate::clock::now();
        let t = RefreshTokens::new("regauth", &b).also_verifying(&a);
        let (tok, claims) = RefreshTokens::new("regauth", &a)
            .issue(&alice(), None, None, Duration::from_secs(60), now)
            .unwrap();
        let with_header = |kid: Option<String>| {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = kid;
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&a)).unwrap()
        };
        assert_eq!(t.verify(&with_header(None), now), Ok(claims.clone()));
        assert_eq!(
            t.verify(&with_header(Some(secret_kid(&a))), now),
            Ok(claims.clone())
        );
        assert_eq!(
            t.verify(&with_header(Some(secret_kid(&b))), now),
            Err(RefreshError::Invalid)
        );
        assert_eq!(
            t.verify(&with_header(Some("0123456789abcdef".into())), now),
            Err(RefreshError::Invalid)
        );
        assert_eq!(t.verify(tok.expose(), now), Ok(claims));
        let stranger = RefreshTokens::new("regauth", &[3u8; 32]);
        let (foreign, _) = stranger
            .issue(&alice(), None, None, Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(t.verify(foreign.expose(), now), Err(RefreshError::Invalid));
    }

    #[test]
    fn not_valid_before_issue() {
        let t = tokens();
        let now = crate::clock::now();
        let (tok, _) = t
            .issue(&alice(), None, None, Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(
            t.verify(tok.expose(), now - Duration::from_secs(3600)),
            Err(RefreshError::Invalid)
        );
    }
}
