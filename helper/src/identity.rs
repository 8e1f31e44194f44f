//! Reading the local identity named in the config.
//!
//! Reading is cheap and local: files and environment variables. Only the
//! GitHub Actions source needs the network, and it fetches its token at
//! exchange time. Each identity has a fingerprint of stable facts (issuer,
//! subject, audience, certificate, account name), never of the secret itself,
//! so the cache key survives token rotation and never encodes a secret.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::IdentitySource;

/// Longest token or password file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Why the identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
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
    /// A variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
}

/// Secret material, exchanged at the token server.
pub enum Material {
    /// A JWT for RFC 8693 token exchange.
    Jwt {
        /// The token.
        token: String,
        /// Its RFC 8693 token type URN.
        token_type: &'static str,
    },
    /// GitHub Actions: request an ID token at exchange time.
    GithubActions {
        /// `ACTIONS_ID_TOKEN_REQUEST_URL`.
        url: String,
        /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
        bearer: String,
        /// The audience to request.
        audience: String,
    },
    /// Certificate and key PEM for mutual TLS.
    Certificate {
        /// Certificate chain then key, PEM.
        pem: Vec<u8>,
    },
    /// Account name and password.
    Account {
        /// The name.
        username: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Material::Jwt { .. } => "Jwt(***)",
            Material::GithubActions { .. } => "GithubActions(***)",
            Material::Certificate { .. } => "Certificate(***)",
            Material::Account { .. } => "Account(***)",
        })
    }
}

/// A local identity, ready to exchange.
#[derive(Debug)]
pub struct Identity {
    /// Hash of stable, non-secret facts about the identity.
    pub fingerprint: String,
    /// What it is, for messages (`service account team-a/builder`).
    pub summary: String,
    /// When the presented token expires (seconds since the epoch), if known.
    pub expires_at: Option<u64>,
    /// The secret part.
    pub material: Material,
    /// Service-account annotations the config allows forwarding to the
    /// token server (kubelet mode only).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The RFC 8693 type of a JWT.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The RFC 8693 type of an OIDC ID token.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// SHA-256 hex of the parts, separated so they cannot run together.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_secret_file(path: &Path) -> Result<String, IdentityError> {
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
    let trimmed = text.trim().to_owned();
    if trimmed.is_empty() {
        return Err(IdentityError::Empty(path.display().to_string()));
    }
    Ok(trimmed)
}

/// The unverified claims of a JWT: the helper only reads them to describe
/// and fingerprint the identity; the token server verifies.
pub fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

fn jwt_identity(
    token: String,
    token_type: &'static str,
    label: &str,
    kind: &str,
) -> Result<Identity, IdentityError> {
    let claims =
        unverified_claims(&token).ok_or_else(|| IdentityError::NotJwt(label.to_owned()))?;
    let text = |k: &str| {
        claims
            .get(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    let (iss, sub, aud) = (text("iss"), text("sub"), text("aud"));
    let summary = match claims
        .pointer("/kubernetes.io/namespace")
        .and_then(|n| n.as_str())
    {
        Some(ns) => format!(
            "service account {ns}/{}",
            claims
                .pointer("/kubernetes.io/serviceaccount/name")
                .and_then(|n| n.as_str())
                .unwrap_or("?")
        ),
        None => format!("{kind} token for {sub}"),
    };
    Ok(Identity {
        fingerprint: fingerprint(&["jwt", &iss, &sub, &aud]),
        summary: format!("{summary} (issuer {iss})"),
        expires_at: claims.get("exp").and_then(|e| e.as_u64()),
        material: Material::Jwt { token, token_type },
        annotations: Default::default(),
    })
}

/// The identity of a pod's service-account token, as the kubelet passes it.
pub fn service_account_token(token: &str) -> Result<Identity, IdentityError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(IdentityError::Empty("serviceAccountToken".into()));
    }
    jwt_identity(
        token.to_owned(),
        TOKEN_TYPE_JWT,
        "serviceAccountToken",
        "kubernetes",
    )
}

/// Reads the identity `source` describes; `env` reads environment variables.
pub fn read(
    source: &IdentitySource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Identity, IdentityError> {
    let need = |k: &str| {
        env(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| IdentityError::MissingEnv(k.to_owned()))
    };
    match source {
        IdentitySource::Kubernetes { token_file } => {
            let token = read_secret_file(token_file)?;
            jwt_identity(
                token,
                TOKEN_TYPE_JWT,
                &token_file.display().to_string(),
                "kubernetes",
            )
        }
        IdentitySource::OidcFile { token_file } => {
            let token = read_secret_file(token_file)?;
            jwt_identity(
                token,
                TOKEN_TYPE_ID_TOKEN,
                &token_file.display().to_string(),
                "OIDC",
            )
        }
        IdentitySource::OidcEnv { variable } => {
            let token = need(variable)?;
            jwt_identity(
                token.trim().to_owned(),
                TOKEN_TYPE_ID_TOKEN,
                variable,
                "OIDC",
            )
        }
        IdentitySource::GithubActions { audience } => {
            let url = need("ACTIONS_ID_TOKEN_REQUEST_URL")?;
            let bearer = need("ACTIONS_ID_TOKEN_REQUEST_TOKEN")?;
            // The workflow run is the identity; its token is fetched on exchange.
            let repo = env("GITHUB_REPOSITORY").unwrap_or_default();
            let run = env("GITHUB_RUN_ID").unwrap_or_default();
            let job = env("GITHUB_JOB").unwrap_or_default();
            Ok(Identity {
                fingerprint: fingerprint(&["github_actions", audience, &repo, &run, &job]),
                summary: format!("GitHub Actions run {run} of {repo}"),
                expires_at: None,
                material: Material::GithubActions {
                    url,
                    bearer,
                    audience: audience.clone(),
                },
                annotations: Default::default(),
            })
        }
        IdentitySource::ClientCertificate { cert, key } => {
            let read = |p: &Path| {
                std::fs::read(p).map_err(|source| IdentityError::Read {
                    path: p.display().to_string(),
                    source,
                })
            };
            let cert_pem = read(cert)?;
            let key_pem = read(key)?;
            let cert_text = String::from_utf8_lossy(&cert_pem).into_owned();
            if !cert_text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(IdentityError::Empty(format!(
                    "{} (no CERTIFICATE block)",
                    cert.display()
                )));
            }
            let mut pem = cert_pem.clone();
            pem.push(b'\n');
            pem.extend_from_slice(&key_pem);
            Ok(Identity {
                // The certificate is public; the key never enters the hash.
                fingerprint: fingerprint(&["client_certificate", &cert_text]),
                summary: format!("client certificate {}", cert.display()),
                expires_at: None,
                material: Material::Certificate { pem },
                annotations: Default::default(),
            })
        }
        IdentitySource::Account {
            username,
            password_file,
        } => {
            let password = read_secret_file(password_file)?;
            Ok(Identity {
                fingerprint: fingerprint(&["account", username]),
                summary: format!("account {username}"),
                expires_at: None,
                material: Material::Account {
                    username: username.clone(),
                    password,
                },
                annotations: Default::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
        assert_eq!(b.expires_at, Some(5600));
        assert_eq!(
            a.summary,
            "service account team-a/builder (issuer https://k8s)"
        );
        let Material::Jwt { token, .. } = &b.material else {
            panic!()
        };
        assert!(!a.fingerprint.contains(token.as_str()));
        assert!(
            !format!("{b:?}").contains(token.as_str()),
            "Debug must not print the token"
        );
    }

    #[test]
    fn unreadable_empty_and_malformed_sources_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = IdentitySource::Kubernetes {
            token_file: dir.path().join("nope"),
        };
        assert!(
            read(&missing, &|_| None)
                .unwrap_err()
                .to_string()
                .contains("cannot read")
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
            read(&IdentitySource::OidcFile { token_file: f }, &|_| None),
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
        let Material::Account { password, .. } = a.material else {
            panic!()
        };
        assert_eq!(password, "s3cret");
    }
}
