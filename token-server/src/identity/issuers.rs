//! Trusted token issuers, and the verification of the subject tokens they
//! mint: Kubernetes service-account tokens and other OIDC ID tokens. The
//! verified claims become a principal in `kubernetes` or `oidc`.
//!
//! Only asymmetric signatures are accepted, so a token "signed" with `none`
//! or with an HMAC keyed by the issuer's public key can never pass. Times are
//! checked against the `now` argument, with a small leeway for clock skew.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::Principal;
use super::jwks::KeyCache;
use super::jws;
pub use super::subject_token::SubjectTokenError;
use crate::clock::unix;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// What kind of tokens an issuer mints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    /// Kubernetes projected service-account tokens.
    Kubernetes,
    /// Generic OIDC ID tokens.
    Oidc,
}

impl IssuerKind {
    /// The kind of the principals its tokens become.
    pub fn principal_kind(self) -> super::Kind {
        match self {
            IssuerKind::Kubernetes => super::Kind::Kubernetes,
            IssuerKind::Oidc => super::Kind::Oidc,
        }
    }
}

/// One trusted issuer.
#[derive(Debug)]
pub struct Issuer {
    /// Label for logs; also the principal's `issuer` attribute.
    pub name: String,
    /// What it mints.
    pub kind: IssuerKind,
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Lifetime of the credential issued in exchange.
    pub credential_ttl: Duration,
    /// Oldest `iat` accepted.
    pub max_token_age: Duration,
    /// OIDC only: the claim that names the principal.
    pub name_claim: String,
    /// Its keys.
    pub keys: KeyCache,
}

/// Every trusted issuer, looked up by `iss`.
#[derive(Debug, Default)]
pub struct Issuers {
    list: Vec<Arc<Issuer>>,
}

impl Issuers {
    /// The given issuers; `iss` values must be distinct.
    pub fn new(list: Vec<Issuer>) -> Self {
        Issuers {
            list: list.into_iter().map(Arc::new).collect(),
        }
    }

    /// The configured issuers.
    pub fn all(&self) -> &[Arc<Issuer>] {
        &self.list
    }

    /// Verifies `token` and returns its principal and issuer.
    pub async fn verify(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<(Principal, Arc<Issuer>), SubjectTokenError> {
        let unverified = jws::parse(token)?;
        let iss = unverified.issuer()?;
        let issuer = self
            .list
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(SubjectTokenError::UnknownIssuer)?;
        let principal = issuer.verify(token, unverified, now).await?;
        Ok((principal, Arc::clone(issuer)))
    }
}

impl Issuer {
    /// Verifies signature, issuer, audience and times of a token already
    /// parsed, then maps its claims to a principal.
    async fn verify(
        &self,
        token: &str,
        unverified: jws::Unverified,
        now: SystemTime,
    ) -> Result<Principal, SubjectTokenError> {
        let key = self
            .keys
            .key(unverified.kid.as_deref())
            .await?
            .ok_or(SubjectTokenError::UnknownKey)?;
        if key
            .alg
            .as_deref()
            .is_some_and(|a| a != alg_name(unverified.alg))
        {
            return Err(SubjectTokenError::Algorithm);
        }
        let mut validation = Validation::new(unverified.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Times are checked below against `now`, not the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // Only the signature and the iss/aud checks are taken from here; the
        // claims used below are the strictly parsed ones (no duplicates).
        jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, &validation).map_err(
            |e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidAudience => SubjectTokenError::Audience,
                    K::InvalidIssuer => SubjectTokenError::UnknownIssuer,
                    K::InvalidAlgorithm => SubjectTokenError::Algorithm,
                    K::MissingRequiredClaim(claim) => {
                        SubjectTokenError::Claim(match claim.as_str() {
                            "aud" => "aud",
                            "iss" => "iss",
                            _ => "exp",
                        })
                    }
                    K::Json(_) | K::Base64(_) | K::Utf8(_) => SubjectTokenError::Malformed,
                    _ => SubjectTokenError::Signature,
                }
            },
        )?;
        let claims = unverified.claims;
        check_times(&claims, now, self.max_token_age)?;
        match self.kind {
            IssuerKind::Kubernetes => super::kubernetes::principal(&claims, &self.name),
            IssuerKind::Oidc => super::oidc::principal(&claims, &self.name, &self.name_claim),
        }
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::PS256 => "PS256",
        Algorithm::EdDSA => "EdDSA",
        _ => "",
    }
}

fn check_times(
    claims: &Map<String, Value>,
    now: SystemTime,
    max_age: Duration,
) -> Result<(), SubjectTokenError> {
    let now = unix(now);
    let leeway = LEEWAY.as_secs();
    let time = |name: &'static str| -> Result<Option<u64>, SubjectTokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().map(|f| f as u64))
                .map(Some)
                .ok_or(SubjectTokenError::Claim(name)),
        }
    };
    let exp = time("exp")?.ok_or(SubjectTokenError::Claim("exp"))?;
    if exp + leeway <= now {
        return Err(SubjectTokenError::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| nbf > now + leeway) {
        return Err(SubjectTokenError::NotYetValid);
    }
    // Without iat the age is unknown: refuse rather than trust it forever.
    let iat = time("iat")?.ok_or(SubjectTokenError::Claim("iat"))?;
    if iat > now + leeway {
        return Err(SubjectTokenError::NotYetValid);
    }
    if now.saturating_sub(iat) > max_age.as_secs() {
        return Err(SubjectTokenError::TooOld);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Kind;
    use crate::identity::jwks::KeySource;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    struct TestIssuer {
        _dir: tempfile::TempDir,
        issuer: Issuer,
        key: EncodingKey,
        public_point: Vec<u8>,
    }

    fn test_issuer(kind: IssuerKind) -> TestIssuer {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}]});
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        let issuer = Issuer {
            name: "test".into(),
            kind,
            issuer: "https://issuer.test".into(),
            audiences: vec!["regauth".into()],
            credential_ttl: Duration::from_secs(3600),
            max_token_age: Duration::from_secs(86400),
            name_claim: "sub".into(),
            keys: KeyCache::new(
                KeySource::File(dir.path().join("jwks.json")),
                reqwest::Client::new(),
                false,
                crate::identity::jwks::RefreshBounds {
                    min: Duration::from_secs(60),
                    max: Duration::from_secs(300),
                },
            ),
        };
        TestIssuer {
            _dir: dir,
            issuer,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public_point: point,
        }
    }

    fn sa_claims(now: u64, ns: &str) -> Value {
        json!({
            "iss": "https://issuer.test", "aud": ["regauth"], "exp": now + 600, "iat": now, "nbf": now,
            "sub": format!("system:serviceaccount:{ns}:builder"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": "builder", "uid": "u1"},
                "pod": {"name": "p", "uid": "pu"}, "node": {"name": "n1", "uid": "nu"}}
        })
    }

    fn sign(t: &TestIssuer, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, claims, &t.key).unwrap()
    }

    async fn verify(t: &TestIssuer, token: &str) -> Result<Principal, SubjectTokenError> {
        let unverified = jws::parse(token)?;
        t.issuer.verify(token, unverified, now()).await
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[tokio::test]
    async fn kubernetes_token_maps_to_principal() {
        let t = test_issuer(IssuerKind::Kubernetes);
        let token = sign(&t, &sa_claims(1_800_000_000, "team-a"));
        let p = verify(&t, &token).await.unwrap();
        assert_eq!(p.kind, Kind::Kubernetes);
        assert_eq!(p.name, "system:serviceaccount:team-a:builder");
        assert_eq!(p.variable("namespace"), Some("team-a"));
        assert_eq!(p.variable("service_account"), Some("builder"));
        assert_eq!(p.variable("node"), Some("n1"));
        assert_eq!(p.variable("pod_uid"), Some("pu"));
    }

    #[tokio::test]
    async fn oidc_claims_become_attributes() {
        let t = test_issuer(IssuerKind::Oidc);
        let claims = json!({"iss": "https://issuer.test", "aud": "regauth", "exp": 1_800_000_600u64,
            "iat": 1_800_000_000u64, "sub": "repo:org/app:ref:refs/heads/main", "repository": "org/app",
            "run_number": 7, "nested": {"x": 1}});
        let p = verify(&t, &sign(&t, &claims)).await.unwrap();
        assert_eq!(p.name, "repo:org/app:ref:refs/heads/main");
        assert_eq!(p.variable("claim:repository"), Some("org/app"));
        assert_eq!(p.variable("claim:run_number"), Some("7"));
        assert_eq!(p.variable("claim:nested"), None);
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_for_the_right_reason() {
        let t = test_issuer(IssuerKind::Kubernetes);
        let base = 1_800_000_000u64;
        let check = |mutate: &dyn Fn(&mut Value)| {
            let mut c = sa_claims(base, "team-a");
            mutate(&mut c);
            sign(&t, &c)
        };
        let cases: Vec<(String, SubjectTokenError)> = vec![
            (
                check(&|c| c["aud"] = json!(["other"])),
                SubjectTokenError::Audience,
            ),
            (
                check(&|c| c["iss"] = json!("https://evil.test")),
                SubjectTokenError::UnknownIssuer,
            ),
            (
                check(&|c| c["exp"] = json!(base - 100)),
                SubjectTokenError::Expired,
            ),
            (
                check(&|c| c["nbf"] = json!(base + 300)),
                SubjectTokenError::NotYetValid,
            ),
            (
                check(&|c| c["iat"] = json!(base - 90_000)),
                SubjectTokenError::TooOld,
            ),
            (
                check(&|c| {
                    c.as_object_mut()
                        .unwrap()
                        .remove("iat")
                        .map(|_| ())
                        .unwrap()
                }),
                SubjectTokenError::Claim("iat"),
            ),
            (
                check(&|c| c["sub"] = json!("system:serviceaccount:kube-system:admin")),
                SubjectTokenError::SubjectMismatch,
            ),
            ("a.b".into(), SubjectTokenError::Malformed),
        ];
        for (token, expected) in cases {
            assert_eq!(
                verify(&t, &token).await.unwrap_err().to_string(),
                expected.to_string()
            );
        }
    }

    #[tokio::test]
    async fn none_and_hmac_with_public_key_are_refused() {
        let t = test_issuer(IssuerKind::Kubernetes);
        let claims = sa_claims(1_800_000_000, "team-a");
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let none = format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
        );
        assert_eq!(
            verify(&t, &none).await.unwrap_err().to_string(),
            SubjectTokenError::Algorithm.to_string()
        );
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let forged =
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&t.public_point)).unwrap();
        assert_eq!(
            verify(&t, &forged).await.unwrap_err().to_string(),
            SubjectTokenError::Algorithm.to_string()
        );
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("unknown".into());
        let other = jsonwebtoken::encode(&h, &claims, &t.key).unwrap();
        assert_eq!(
            verify(&t, &other).await.unwrap_err().to_string(),
            SubjectTokenError::UnknownKey.to_string()
        );
        let mut tampered = sign(&t, &claims);
        tampered.truncate(tampered.len() - 4);
        tampered.push_str("AAAA");
        assert_eq!(
            verify(&t, &tampered).await.unwrap_err().to_string(),
            SubjectTokenError::Signature.to_string()
        );
    }
}
