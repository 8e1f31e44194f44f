//! Reading the local identity named in the config.
//!
//! Reading is cheap and local: files and environment variables. Only the
//! GitHub Actions source needs the network, and it fetches its token at
//! exchange time. Each identity has a fingerprint of stable facts (issuer,
//! subject, audience, certificate, account name), never of the secret itself,
//! so the cache key survives token rotation and never encodes a secret.
//!
//! A pod's service-account token handed over by the kubelet is different: it
//! comes from outside, so its fingerprint is a hash of the exact token, and
//! the cache serves a credential only to the very token that was exchanged.

use std::collections::BTreeMap;
use std::path::Path;

use regauth_client::{Secret, SubjectTokenType, unverified_claims};

use crate::config::IdentitySource;

/// Longest token or password file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Clock skew allowed for a token's `nbf`, as the token server allows.
const NBF_LEEWAY: u64 = 30;

/// Why the identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file or variable is empty.
    #[error("{0} is empty")]
    Empty(String),
    /// A token is not a JWT.
    #[error("{0} does not hold a JWT")]
    NotJwt(String),
    /// A certificate file holds no certificate.
    #[error("{0} holds no PEM CERTIFICATE block")]
    NoCertificate(String),
    /// A variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// A token that must carry `exp` has none.
    #[error("{0} has no exp claim")]
    NoExpiry(String),
    /// A token has expired.
    #[error("{what} expired {}s ago (exp {exp})", .now - .exp)]
    Expired {
        /// Which token.
        what: String,
        /// Its `exp`.
        exp: u64,
        /// The time of the check.
        now: u64,
    },
    /// A token is not valid yet.
    #[error("{what} is not valid for another {}s (nbf {nbf})", .nbf - .now)]
    NotYetValid {
        /// Which token.
        what: String,
        /// Its `nbf`.
        nbf: u64,
        /// The time of the check.
        now: u64,
    },
}

/// Secret material, exchanged at the token server.
#[derive(Debug)]
pub(crate) enum Material {
    /// A JWT for RFC 8693 token exchange.
    Jwt {
        /// The token.
        token: Secret,
        /// Its RFC 8693 token type.
        token_type: SubjectTokenType,
    },
    /// GitHub Actions: request an ID token at exchange time.
    GithubActions {
        /// `ACTIONS_ID_TOKEN_REQUEST_URL`.
        url: String,
        /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
        bearer: Secret,
        /// The audience to request.
        audience: String,
    },
    /// Certificate chain, then key, PEM, for mutual TLS.
    Certificate {
        /// The PEM text.
        pem: Secret,
    },
    /// Account name and password.
    Account {
        /// The name.
        username: String,
        /// The password.
        password: Secret,
    },
}

/// A local identity, ready to exchange.
#[derive(Debug)]
pub(crate) struct Identity {
    /// Hash of stable, non-secret facts about the identity, or of the exact
    /// token when the token comes from outside (the kubelet).
    pub(crate) fingerprint: String,
    /// When set, a cached credential may be served only if its entry is
    /// bound to this value: the hash of the exact token that was exchanged.
    pub(crate) binding: Option<String>,
    /// What it is, for messages (`service account team-a/builder`).
    pub(crate) summary: String,
    /// When the presented token expires (seconds since the epoch), if known.
    pub(crate) expires_at: Option<u64>,
    /// The secret part.
    pub(crate) material: Material,
    /// Service-account annotations the config allows forwarding to the
    /// token server (kubelet mode only).
    pub(crate) annotations: BTreeMap<String, String>,
}

/// SHA-256 hex of the parts, separated so they cannot run together.
pub(crate) fn fingerprint(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p.as_bytes());
    }
    // A table, not `format!` per byte: every `get` computes three of these.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ctx.finish();
    let mut out = String::with_capacity(2 * digest.as_ref().len());
    for b in digest.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

fn read_secret_file(path: &Path) -> Result<Secret, IdentityError> {
    use std::io::Read;
    let err = |source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_SECRET_BYTES)
        .read_to_string(&mut text)
        .map_err(err)?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(IdentityError::Empty(path.display().to_string()));
    }
    Ok(Secret::from(trimmed))
}

/// The facts of a JWT identity the helper reads without verifying: the
/// token server verifies.
struct JwtFacts {
    claims: serde_json::Map<String, serde_json::Value>,
}

impl JwtFacts {
    fn read(token: &Secret, label: &str) -> Result<Self, IdentityError> {
        unverified_claims(token.expose())
            .map(|claims| JwtFacts { claims })
            .ok_or_else(|| IdentityError::NotJwt(label.to_owned()))
    }

    fn text(&self, k: &str) -> String {
        self.claims
            .get(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    }

    fn time(&self, k: &str) -> Option<u64> {
        self.claims.get(k).and_then(serde_json::Value::as_u64)
    }

    fn summary(&self, kind: &str) -> String {
        let pointer = |p: &str| {
            self.claims
                .get("kubernetes.io")
                .and_then(|k| k.pointer(p))
                .and_then(|n| n.as_str())
        };
        let who = match pointer("/namespace") {
            Some(ns) => format!(
                "service account {ns}/{}",
                pointer("/serviceaccount/name").unwrap_or("?")
            ),
            None => format!("{kind} token for {}", self.text("sub")),
        };
        // The claims are unverified (a pod's token is anyone's input) and the
        // summary reaches logs and messages: no control characters.
        format!("{who} (issuer {})", self.text("iss"))
            .chars()
            .take(300)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    }
}

fn jwt_identity(
    token: Secret,
    token_type: SubjectTokenType,
    label: &str,
    kind: &str,
) -> Result<Identity, IdentityError> {
    let facts = JwtFacts::read(&token, label)?;
    Ok(Identity {
        fingerprint: fingerprint(&[
            "jwt",
            &facts.text("iss"),
            &facts.text("sub"),
            &facts.text("aud"),
        ]),
        binding: None,
        summary: facts.summary(kind),
        expires_at: facts.time("exp"),
        material: Material::Jwt { token, token_type },
        annotations: BTreeMap::new(),
    })
}

/// The identity of a pod's service-account token, as the kubelet passes it.
///
/// Its claims are unverified here, so nothing is trusted from them: the
/// token must not be expired or not yet valid at `now` (a token that is
/// could only ever be refused), and its fingerprint is the hash of the
/// exact token, so a cached credential is served only to the token the
/// token server accepted for it.
pub(crate) fn service_account_token(token: &Secret, now: u64) -> Result<Identity, IdentityError> {
    const LABEL: &str = "serviceAccountToken";
    let token = Secret::from(token.expose().trim());
    if token.is_empty() {
        return Err(IdentityError::Empty(LABEL.into()));
    }
    let facts = JwtFacts::read(&token, LABEL)?;
    let exp = facts
        .time("exp")
        .ok_or_else(|| IdentityError::NoExpiry(LABEL.into()))?;
    if exp <= now {
        return Err(IdentityError::Expired {
            what: LABEL.into(),
            exp,
            now,
        });
    }
    if let Some(nbf) = facts.time("nbf").filter(|nbf| *nbf > now + NBF_LEEWAY) {
        return Err(IdentityError::NotYetValid {
            what: LABEL.into(),
            nbf,
            now,
        });
    }
    let binding = fingerprint(&["subject_token", token.expose()]);
    Ok(Identity {
        fingerprint: fingerprint(&["bound_jwt", &binding]),
        binding: Some(binding),
        summary: facts.summary("kubernetes"),
        expires_at: Some(exp),
        material: Material::Jwt {
            token,
            token_type: SubjectTokenType::Jwt,
        },
        annotations: BTreeMap::new(),
    })
}

/// Reads the identity `source` describes; `env` reads environment variables.
pub(crate) fn read(
    source: &IdentitySource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Identity, IdentityError> {
    let need = |k: &str| {
        env(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| IdentityError::MissingEnv(k.to_owned()))
    };
    match source {
        IdentitySource::Kubernetes { token_file } => jwt_identity(
            read_secret_file(token_file)?,
            SubjectTokenType::Jwt,
            &token_file.display().to_string(),
            "kubernetes",
        ),
        IdentitySource::OidcFile { token_file } => jwt_identity(
            read_secret_file(token_file)?,
            SubjectTokenType::IdToken,
            &token_file.display().to_string(),
            "OIDC",
        ),
        IdentitySource::OidcEnv { variable } => jwt_identity(
            Secret::from(need(variable)?.trim()),
            SubjectTokenType::IdToken,
            variable,
            "OIDC",
        ),
        IdentitySource::GithubActions { audience } => {
            let url = need("ACTIONS_ID_TOKEN_REQUEST_URL")?;
            let bearer = Secret::new(need("ACTIONS_ID_TOKEN_REQUEST_TOKEN")?);
            // The workflow run is the identity; its token is fetched on exchange.
            let repo = env("GITHUB_REPOSITORY").unwrap_or_default();
            let run = env("GITHUB_RUN_ID").unwrap_or_default();
            let job = env("GITHUB_JOB").unwrap_or_default();
            Ok(Identity {
                fingerprint: fingerprint(&["github_actions", audience, &repo, &run, &job]),
                binding: None,
                summary: format!("GitHub Actions run {run} of {repo}"),
                expires_at: None,
                material: Material::GithubActions {
                    url,
                    bearer,
                    audience: audience.clone(),
                },
                annotations: BTreeMap::new(),
            })
        }
        IdentitySource::ClientCertificate { cert, key } => {
            let read = |p: &Path| {
                std::fs::read(p).map_err(|source| IdentityError::Read {
                    path: p.display().to_string(),
                    source,
                })
            };
            let cert_text = String::from_utf8_lossy(&read(cert)?).into_owned();
            if !cert_text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(IdentityError::NoCertificate(cert.display().to_string()));
            }
            let key_text = String::from_utf8_lossy(&read(key)?).into_owned();
            Ok(Identity {
                // The certificate is public; the key never enters the hash.
                fingerprint: fingerprint(&["client_certificate", &cert_text]),
                binding: None,
                summary: format!("client certificate {}", cert.display()),
                expires_at: None,
                material: Material::Certificate {
                    pem: Secret::new(format!("{cert_text}\n{key_text}")),
                },
                annotations: BTreeMap::new(),
            })
        }
        IdentitySource::Account {
            username,
            password_file,
        } => Ok(Identity {
            fingerprint: fingerprint(&["account", username]),
            binding: None,
            summary: format!("account {username}"),
            expires_at: None,
            material: Material::Account {
                username: username.clone(),
                password: read_secret_file(password_file)?,
            },
            annotations: BTreeMap::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::path::PathBuf;

    #[test]
    fn fingerprints_are_lowercase_sha256_hex_of_length_prefixed_parts() {
        // sha256(be64(1) "a" be64(0)), as `sha256sum` prints it.
        assert_eq!(
            fingerprint(&["a", ""]),
            "6aa98e17c109dd8e2ae23a478ceb48e193c730289ba48d741388a3cc8b38ef4f"
        );
    }

    fn jwt(claims: &str) -> String {
        format!(
            "eyJhbGciOiJFUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn kubernetes_token_fingerprint_survives_rotation_and_hides_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        let claims = |iat: u64| {
            format!(
                r#"{{"iss":"https://k8s","sub":"system:serviceaccount:team-a:builder","aud":["regauth"],"iat":{iat},"exp":{},"kubernetes.io":{{"namespace":"team-a","serviceaccount":{{"name":"builder"}}}}}}"#,
                iat + 3600
            )
        };
        std::fs::write(&f, jwt(&claims(1000))).unwrap();
        let src = IdentitySource::Kubernetes {
            token_file: f.clone(),
        };
        let a = read(&src, &|_| None).unwrap();
        std::fs::write(&f, format!("{}\n", jwt(&claims(2000)))).unwrap();
        let b = read(&src, &|_| None).unwrap();
        assert_eq!(
            a.fingerprint, b.fingerprint,
            "a rotated token is the same identity"
        );
        assert_eq!(b.binding, None);
        assert_eq!(b.expires_at, Some(5600));
        assert_eq!(
            a.summary,
            "service account team-a/builder (issuer https://k8s)"
        );
        let Material::Jwt { token, .. } = &b.material else {
            panic!()
        };
        assert!(!a.fingerprint.contains(token.expose()));
        assert!(
            !format!("{b:?}").contains(token.expose()),
            "Debug must not print the token"
        );
    }

    #[test]
    fn a_kubelet_token_is_bound_to_itself_and_checked_for_time() {
        let now = 10_000;
        let claims = |exp: u64, nbf: u64| {
            format!(
                r#"{{"iss":"https://k8s","sub":"system:serviceaccount:a:b","aud":"r","exp":{exp},"nbf":{nbf},"iat":{nbf}}}"#
            )
        };
        let good = Secret::new(jwt(&claims(now + 600, now - 10)));
        let id = service_account_token(&good, now).unwrap();
        let binding = id.binding.clone().unwrap();
        assert_eq!(id.expires_at, Some(now + 600));
        assert!(!id.fingerprint.contains(good.expose()) && !binding.contains(good.expose()));
        assert!(!format!("{id:?}").contains(good.expose()));

        // Same subject, other bytes (a flipped signature): another binding.
        let flipped = Secret::new(format!("{}x", good.expose()));
        let other = service_account_token(&flipped, now).unwrap();
        assert_ne!(other.binding.as_deref(), Some(binding.as_str()));
        assert_ne!(other.fingerprint, id.fingerprint);
        // The same token with whitespace around it is the same token.
        let padded = Secret::new(format!(" {}\n", good.expose()));
        assert_eq!(
            service_account_token(&padded, now).unwrap().binding,
            Some(binding)
        );

        let expired = Secret::new(jwt(&claims(now, now - 600)));
        assert!(matches!(
            service_account_token(&expired, now),
            Err(IdentityError::Expired { exp, .. }) if exp == now
        ));
        let early = Secret::new(jwt(&claims(now + 7200, now + 3600)));
        let err = service_account_token(&early, now).unwrap_err();
        assert!(matches!(err, IdentityError::NotYetValid { .. }), "{err}");
        let skewed = Secret::new(jwt(&claims(now + 7200, now + NBF_LEEWAY)));
        assert!(service_account_token(&skewed, now).is_ok(), "within leeway");
        let no_exp = Secret::new(jwt(r#"{"sub":"system:serviceaccount:a:b"}"#));
        assert!(matches!(
            service_account_token(&no_exp, now),
            Err(IdentityError::NoExpiry(_))
        ));
        assert!(matches!(
            service_account_token(&Secret::from("x.y"), now),
            Err(IdentityError::NotJwt(_))
        ));
        assert!(matches!(
            service_account_token(&Secret::from("  "), now),
            Err(IdentityError::Empty(_))
        ));
    }

    #[test]
    fn unreadable_empty_and_malformed_sources_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = IdentitySource::Kubernetes {
            token_file: dir.path().join("nope"),
        };
        let err = read(&missing, &|_| None).unwrap_err();
        assert!(err.to_string().starts_with("cannot read "), "{err}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept"
        );
        let f = dir.path().join("empty");
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(
            read(
                &IdentitySource::OidcFile {
                    token_file: f.clone()
                },
                &|_| None
            ),
            Err(IdentityError::Empty(_))
        ));
        std::fs::write(&f, "not-a-jwt").unwrap();
        assert!(matches!(
            read(
                &IdentitySource::OidcFile {
                    token_file: f.clone()
                },
                &|_| None
            ),
            Err(IdentityError::NotJwt(_))
        ));
        let env_src = IdentitySource::OidcEnv {
            variable: "CI_TOKEN".into(),
        };
        assert!(matches!(
            read(&env_src, &|_| None),
            Err(IdentityError::MissingEnv(_))
        ));
        let gha = IdentitySource::GithubActions {
            audience: "regauth".into(),
        };
        assert!(
            read(&gha, &|_| None)
                .unwrap_err()
                .to_string()
                .contains("ACTIONS_ID_TOKEN_REQUEST_URL")
        );
        let cert = IdentitySource::ClientCertificate {
            cert: PathBuf::from("/nonexistent.pem"),
            key: PathBuf::from("/k"),
        };
        assert!(read(&cert, &|_| None).is_err());
        let not_a_cert = IdentitySource::ClientCertificate {
            cert: f,
            key: PathBuf::from("/k"),
        };
        assert!(matches!(
            read(&not_a_cert, &|_| None),
            Err(IdentityError::NoCertificate(_))
        ));
    }

    #[test]
    fn a_summary_carries_no_control_characters() {
        let token = Secret::new(jwt(
            r#"{"iss":"https://k8s\nINFO forged line","sub":"x\u001b[31m","exp":99999999999}"#,
        ));
        let id = service_account_token(&token, 1000).unwrap();
        assert!(!id.summary.chars().any(char::is_control), "{}", id.summary);
    }

    #[test]
    fn no_identity_material_shows_in_debug() {
        let secret = "m4terial-s3cret";
        let materials = [
            Material::Jwt {
                token: Secret::from(secret),
                token_type: SubjectTokenType::Jwt,
            },
            Material::GithubActions {
                url: "https://actions.example/token".into(),
                bearer: Secret::from(secret),
                audience: "regauth".into(),
            },
            Material::Certificate {
                pem: Secret::from(secret),
            },
            Material::Account {
                username: "alice".into(),
                password: Secret::from(secret),
            },
        ];
        for m in materials {
            let shown = format!("{m:?}");
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn accounts_fingerprint_by_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let src = IdentitySource::Account {
            username: "alice".into(),
            password_file: f.clone(),
        };
        let a = read(&src, &|_| None).unwrap();
        assert_eq!(a.fingerprint, fingerprint(&["account", "alice"]));
        assert!(!format!("{a:?}").contains("s3cret"));
        let Material::Account { password, .. } = a.material else {
            panic!()
        };
        assert_eq!(password.expose(), "s3cret");
    }
}
