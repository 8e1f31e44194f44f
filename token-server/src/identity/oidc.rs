//! Verifying tokens from trusted issuers: Kubernetes service-account tokens
//! and other OIDC ID tokens (CI systems such as GitHub Actions or GitLab).
//!
//! Only asymmetric signatures are accepted, so a token "signed" with `none`
//! or with an HMAC keyed by the issuer's public key can never pass. Times are
//! checked against the `now` argument, with a small leeway for clock skew.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{JwksError, KeyCache};
use super::{Kind, Principal};
use crate::refresh::unix;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Signature algorithms accepted from issuers.
pub const ALLOWED_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// Longest subject token accepted.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a subject token was refused. Messages are safe to show the client and
/// never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a compact JWS, or its parts do not decode.
    #[error("subject token is not a well-formed JWT")]
    Malformed,
    /// `alg` is `none`, symmetric, or otherwise not accepted.
    #[error("subject token algorithm is not accepted; use RS256, ES256, PS256 or EdDSA")]
    Algorithm,
    /// No configured issuer has this `iss`.
    #[error("subject token issuer is not trusted")]
    UnknownIssuer,
    /// The issuer publishes no key with this kid.
    #[error("subject token is signed by a key the issuer does not publish")]
    UnknownKey,
    /// The signature does not verify.
    #[error("subject token signature is invalid")]
    Signature,
    /// `aud` names none of the accepted audiences.
    #[error("subject token audience is not accepted")]
    Audience,
    /// Past `exp`.
    #[error("subject token has expired")]
    Expired,
    /// Before `nbf` (or `iat` in the future).
    #[error("subject token is not valid yet")]
    NotYetValid,
    /// `iat` is older than the issuer's maximum token age.
    #[error("subject token is older than the maximum token age")]
    TooOld,
    /// A claim the issuer kind needs is missing or malformed.
    #[error("subject token lacks a valid `{0}` claim")]
    Claim(&'static str),
    /// The issuer's keys could not be fetched.
    #[error("issuer keys are unavailable: {0}")]
    Keys(#[from] JwksError),
}

impl IdentityError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Malformed => "malformed",
            IdentityError::Algorithm => "algorithm",
            IdentityError::UnknownIssuer => "unknown_issuer",
            IdentityError::UnknownKey => "unknown_key",
            IdentityError::Signature => "signature",
            IdentityError::Audience => "audience",
            IdentityError::Expired => "expired",
            IdentityError::NotYetValid => "not_yet_valid",
            IdentityError::TooOld => "too_old",
            IdentityError::Claim(_) => "claim",
            IdentityError::Keys(_) => "keys_unavailable",
        }
    }
}

/// What kind of tokens an issuer mints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    /// Kubernetes projected service-account tokens.
    Kubernetes,
    /// Generic OIDC ID tokens.
    Oidc,
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
    ) -> Result<(Principal, Arc<Issuer>), IdentityError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(IdentityError::Malformed);
        }
        let iss = unverified_issuer(token)?;
        let issuer = self
            .list
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(IdentityError::UnknownIssuer)?;
        let principal = issuer.verify(token, now).await?;
        Ok((principal, Arc::clone(issuer)))
    }
}

/// Reads `iss` without verifying, only to pick the issuer whose keys verify.
fn unverified_issuer(token: &str) -> Result<String, IdentityError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdentityError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| IdentityError::Malformed)?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| IdentityError::Malformed)?;
    claims["iss"]
        .as_str()
        .map(str::to_owned)
        .ok_or(IdentityError::Claim("iss"))
}

impl Issuer {
    /// Verifies signature, issuer, audience and times, then maps the claims
    /// to a principal.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Principal, IdentityError> {
        // Read `alg` before anything else: `none`, HS* and unknown names are
        // refused by name, before any key is looked up.
        let alg = header_alg(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdentityError::Malformed)?;
        if header.alg != alg || !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(IdentityError::Algorithm);
        }
        let key = self
            .keys
            .key(header.kid.as_deref())
            .await?
            .ok_or(IdentityError::UnknownKey)?;
        if key
            .alg
            .as_deref()
            .is_some_and(|a| a != alg_name(header.alg))
        {
            return Err(IdentityError::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Times are checked below against `now`, not the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidAudience => IdentityError::Audience,
                    K::InvalidIssuer => IdentityError::UnknownIssuer,
                    K::InvalidAlgorithm => IdentityError::Algorithm,
                    K::MissingRequiredClaim(claim) => IdentityError::Claim(match claim.as_str() {
                        "aud" => "aud",
                        "iss" => "iss",
                        _ => "exp",
                    }),
                    K::Json(_) | K::Base64(_) | K::Utf8(_) => IdentityError::Malformed,
                    _ => IdentityError::Signature,
                }
            })?;
        let claims = data.claims;
        check_times(&claims, now, self.max_token_age)?;
        match self.kind {
            IssuerKind::Kubernetes => kubernetes_principal(&claims, &self.name),
            IssuerKind::Oidc => oidc_principal(&claims, &self.name, &self.name_claim),
        }
    }
}

fn header_alg(token: &str) -> Result<Algorithm, IdentityError> {
    let segment = token.split('.').next().ok_or(IdentityError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| IdentityError::Malformed)?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| IdentityError::Malformed)?;
    match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Ok(Algorithm::RS256),
        Some("ES256") => Ok(Algorithm::ES256),
        Some("PS256") => Ok(Algorithm::PS256),
        Some("EdDSA") => Ok(Algorithm::EdDSA),
        _ => Err(IdentityError::Algorithm),
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
) -> Result<(), IdentityError> {
    let now = unix(now);
    let leeway = LEEWAY.as_secs();
    let time = |name: &'static str| -> Result<Option<u64>, IdentityError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().map(|f| f as u64))
                .map(Some)
                .ok_or(IdentityError::Claim(name)),
        }
    };
    let exp = time("exp")?.ok_or(IdentityError::Claim("exp"))?;
    if exp + leeway <= now {
        return Err(IdentityError::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| nbf > now + leeway) {
        return Err(IdentityError::NotYetValid);
    }
    // Without iat the age is unknown: refuse rather than trust it forever.
    let iat = time("iat")?.ok_or(IdentityError::Claim("iat"))?;
    if iat > now + leeway {
        return Err(IdentityError::NotYetValid);
    }
    if now.saturating_sub(iat) > max_age.as_secs() {
        return Err(IdentityError::TooOld);
    }
    Ok(())
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Maps a projected service-account token: `sub` must agree with the
/// `kubernetes.io` claim, so the two cannot be mixed from different accounts.
fn kubernetes_principal(
    claims: &Map<String, Value>,
    issuer_name: &str,
) -> Result<Principal, IdentityError> {
    let k8s = claims
        .get("kubernetes.io")
        .ok_or(IdentityError::Claim("kubernetes.io"))?;
    let namespace =
        text(k8s, "/namespace").ok_or(IdentityError::Claim("kubernetes.io.namespace"))?;
    let sa = text(k8s, "/serviceaccount/name")
        .ok_or(IdentityError::Claim("kubernetes.io.serviceaccount"))?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(IdentityError::Claim("sub"))?;
    let expected = format!("system:serviceaccount:{namespace}:{sa}");
    if sub != expected {
        return Err(IdentityError::Claim("sub"));
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("issuer".to_owned(), issuer_name.to_owned());
    attributes.insert("namespace".to_owned(), namespace.to_owned());
    attributes.insert("service_account".to_owned(), sa.to_owned());
    for (attr, pointer) in [
        ("service_account_uid", "/serviceaccount/uid"),
        ("pod", "/pod/name"),
        ("pod_uid", "/pod/uid"),
        ("node", "/node/name"),
        ("node_uid", "/node/uid"),
    ] {
        if let Some(v) = text(k8s, pointer) {
            attributes.insert(attr.to_owned(), v.to_owned());
        }
    }
    Ok(Principal {
        kind: Kind::Kubernetes,
        name: expected,
        attributes,
    })
}

/// Maps an OIDC token: the name from `name_claim`, every scalar top-level
/// claim as `claims.NAME`.
fn oidc_principal(
    claims: &Map<String, Value>,
    issuer_name: &str,
    name_claim: &str,
) -> Result<Principal, IdentityError> {
    let name = claims
        .get(name_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(IdentityError::Claim("name claim"))?;
    let mut attributes = BTreeMap::new();
    attributes.insert("issuer".to_owned(), issuer_name.to_owned());
    for (k, v) in claims {
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        attributes.insert(format!("claims.{k}"), value);
    }
    Ok(Principal {
        kind: Kind::Oidc,
        name: name.to_owned(),
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::jwks::KeySource;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
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
                Duration::from_secs(60),
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

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[tokio::test]
    async fn kubernetes_token_maps_to_principal() {
        let t = test_issuer(IssuerKind::Kubernetes);
        let token = sign(&t, &sa_claims(1_800_000_000, "team-a"));
        let p = t.issuer.verify(&token, now()).await.unwrap();
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
        let p = t.issuer.verify(&sign(&t, &claims), now()).await.unwrap();
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
        let cases: Vec<(String, IdentityError)> = vec![
            (
                check(&|c| c["aud"] = json!(["other"])),
                IdentityError::Audience,
            ),
            (
                check(&|c| c["iss"] = json!("https://evil.test")),
                IdentityError::UnknownIssuer,
            ),
            (
                check(&|c| c["exp"] = json!(base - 100)),
                IdentityError::Expired,
            ),
            (
                check(&|c| c["nbf"] = json!(base + 300)),
                IdentityError::NotYetValid,
            ),
            (
                check(&|c| c["iat"] = json!(base - 90_000)),
                IdentityError::TooOld,
            ),
            (
                check(&|c| {
                    c.as_object_mut()
                        .unwrap()
                        .remove("iat")
                        .map(|_| ())
                        .unwrap()
                }),
                IdentityError::Claim("iat"),
            ),
            (
                check(&|c| c["sub"] = json!("system:serviceaccount:kube-system:admin")),
                IdentityError::Claim("sub"),
            ),
            ("a.b".into(), IdentityError::Malformed),
        ];
        for (token, expected) in cases {
            assert_eq!(t.issuer.verify(&token, now()).await.unwrap_err(), expected);
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
            t.issuer.verify(&none, now()).await.unwrap_err(),
            IdentityError::Algorithm
        );
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let forged =
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&t.public_point)).unwrap();
        assert_eq!(
            t.issuer.verify(&forged, now()).await.unwrap_err(),
            IdentityError::Algorithm
        );
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("unknown".into());
        let other = jsonwebtoken::encode(&h, &claims, &t.key).unwrap();
        assert_eq!(
            t.issuer.verify(&other, now()).await.unwrap_err(),
            IdentityError::UnknownKey
        );
        let mut tampered = sign(&t, &claims);
        tampered.truncate(tampered.len() - 4);
        tampered.push_str("AAAA");
        assert_eq!(
            t.issuer.verify(&tampered, now()).await.unwrap_err(),
            IdentityError::Signature
        );
    }
}
