//! The YAML config file, translated into [`Settings`]: the only place that
//! knows the file's shape.
//!
//! Every problem found is reported, each with its key path and line, rather
//! than stopping at the first. Unknown keys are errors, because a misspelled
//! security option that is silently ignored is worse than no option. Each
//! section of the file has its own module.

mod accounts;
mod basics;
mod check;
mod file;
mod issuers;
mod keys;
mod limits;
mod policy;
mod shared_state;
mod tls;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use check::Check;
use file::ConfigFile;

use crate::settings::Settings;
use crate::token::refresh::RefreshTokens;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5001";
/// Default access token lifetime.
const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(300);
/// Default refresh token lifetime.
const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(3600);
/// Default password cache lifetime.
const DEFAULT_PASSWORD_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of credentials issued for workload identity.
const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
/// Default maximum age of subject tokens.
const DEFAULT_MAX_TOKEN_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default minimum interval between issuer key refetches.
const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// Default longest time issuer keys are trusted without a refetch.
const DEFAULT_JWKS_MAX_REFRESH: Duration = Duration::from_secs(300);
/// Largest config file read: anything bigger is not a config, and reading
/// it whole would only spend memory.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// Smallest accepted refresh secret.
const MIN_SECRET_BYTES: usize = 32;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, like `policy[2].resource`.
    pub key: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Why a config could not be loaded: every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path} is larger than {} MiB, the limit for a config file", MAX_CONFIG_BYTES / (1024 * 1024))]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not valid YAML, or not the expected shape (unknown key, wrong type).
    #[error("{path} is not a valid config")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's error, with its location (boxed: it is large).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// The file parsed but values are wrong.
    #[error("{}", Issues(.path, .issues))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
    },
}

struct Issues<'a>(&'a Path, &'a [ConfigIssue]);

impl fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}: {}: {}",
                self.0.display(),
                issue.line,
                issue.key,
                issue.message
            )?;
        }
        Ok(())
    }
}

/// Reads and validates the config file at `path`. Relative paths inside it
/// are relative to the file's directory.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = read_bounded(path, MAX_CONFIG_BYTES)?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    load_str(&text, &base, path)
}

/// Reads the text at `path`, refusing more than `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Parses `text` as a config whose relative paths resolve against `base`;
/// `name` labels error messages.
pub fn load_str(text: &str, base: &Path, name: &Path) -> Result<Settings, ConfigError> {
    let file: ConfigFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
        path: name.to_owned(),
        source: Box::new(e),
    })?;
    let mut check = Check::new(base);
    let settings = translate(&file, &mut check);
    match settings {
        Some(s) if check.issues.is_empty() => Ok(s),
        _ => {
            let mut issues = check.issues;
            issues.sort_by_key(|i| i.line);
            Err(ConfigError::Invalid {
                path: name.to_owned(),
                issues,
            })
        }
    }
}

/// Translates every section, collecting all problems; `None` when one
/// section could not produce anything at all.
fn translate(file: &ConfigFile, c: &mut Check) -> Option<Settings> {
    let basics = basics::basics(file, c);
    let tls = file.tls.as_ref().and_then(|t| tls::tls(t, c));
    let certificates = tls::certificate_rules(file.tls.as_ref(), c);
    let keys = keys::signing_keys(file, c);
    let secrets = keys::refresh_secrets(file, c);
    let policy = policy::policy(file, c);
    let limits = limits::limits(&file.limits, c);
    let issuers = issuers::issuers(&file.issuers, c);
    let shared_state = shared_state::shared_state(file, c);
    let revocation_unavailable = shared_state::revocation_unavailable(file, c);
    let revocation_staleness = shared_state::revocation_staleness(file, c);
    let (secret, verify_only) = secrets.as_deref()?.split_first()?;
    let accounts = accounts::accounts(file, secret, basics.password_cache_ttl, c)?;
    let accounts = verify_only
        .iter()
        .fold(accounts, |a, s| a.also_fingerprinting(s));
    let refresh = verify_only
        .iter()
        .fold(RefreshTokens::new(&basics.issuer, secret), |r, s| {
            r.also_verifying(s)
        });
    Some(Settings {
        listen: basics.listen?,
        public_url: basics.public_url?,
        refresh,
        issuer: basics.issuer,
        services: basics.services,
        access_token_ttl: basics.access_token_ttl,
        refresh_token_ttl: basics.refresh_token_ttl,
        keys: keys?,
        accounts,
        policy,
        limits,
        issuers,
        certificates,
        tls,
        shared_state,
        revocation_unavailable,
        revocation_staleness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Principal;
    use crate::scope::Scope;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
    }

    #[test]
    fn reference_config_loads_and_means_what_its_comments_say() {
        let s = load(&fixtures().join("reference.yaml")).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5001");
        assert_eq!(
            s.services,
            ["registry.example.com", "registry-mirror.example.com"]
        );
        assert_eq!(s.access_token_ttl, Duration::from_secs(300));
        assert_eq!(s.keys.all().len(), 2);
        assert_eq!(s.keys.current().alg(), crate::keys::Algorithm::Es256);
        assert_eq!(s.accounts.len(), 3);
        let now = std::time::Instant::now();
        use crate::identity::account::Verified;
        for (user, pw) in [
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
        ] {
            assert!(
                matches!(
                    s.accounts.verify_slow(user, pw.as_bytes(), now),
                    Verified::Yes { .. }
                ),
                "{user}"
            );
        }
        let alice = s.accounts.principal("alice").unwrap();
        let decide = |p: &Principal, scope: &str| {
            let scope: Scope = scope.parse().unwrap();
            s.policy.decide(p, &[scope]).remove(0).grant.actions
        };
        assert_eq!(
            decide(&Principal::anonymous(), "repository:public/x:pull,push"),
            ["pull"]
        );
        assert!(decide(&Principal::anonymous(), "repository:alice/x:pull").is_empty());
        assert_eq!(decide(&alice, "registry:catalog:*"), ["*"]);
        assert_eq!(
            decide(&alice, "repository:teams/platform/x:pull,push,delete"),
            ["pull", "push"]
        );
        assert!(decide(&alice, "repository:teams/other/x:pull").is_empty());
        assert_eq!(decide(&alice, "repository:alice/x/y:delete"), ["delete"]);
        let bob = s.accounts.principal("bob").unwrap();
        assert!(decide(&bob, "registry:catalog:*").is_empty());
        assert!(
            decide(&bob, "repository:teams/platform/x:pull").is_empty(),
            "bob has no team label"
        );
    }

    #[test]
    fn oversized_config_is_refused_naming_the_file_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regauth.yaml");
        std::fs::write(&path, "issuer: x\n").unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap(), "issuer: x\n");
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains("regauth.yaml") && shown.contains("16 MiB"),
            "{shown}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = "issuer: x\nservices: [x]\nsigning_keys: []\nrefresh_secret_file: nope\n\
                    access_token_ttl: 5 parsecs\npolicy:\n  - kind: robot\n    resource: \"${a b}\"\n    actions: []\n";
        let err = load_str(text, Path::new("/nonexistent"), Path::new("bad.yaml")).unwrap_err();
        let ConfigError::Invalid { issues, .. } = &err else {
            panic!("{err}")
        };
        let found: Vec<(&str, usize)> = issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            found,
            [
                ("services", 2),
                ("signing_keys", 3),
                ("refresh_secret_file", 4),
                ("access_token_ttl", 5),
                ("policy[0].kind", 7),
                ("policy[0].resource", 8),
                ("policy[0].actions", 9),
            ]
        );
        assert!(err.to_string().starts_with("bad.yaml:2: services: "));
    }

    /// The problems of a minimal config followed by `text`, under keys
    /// that start with one of `prefixes`.
    fn issues_under(text: &str, prefixes: &[&str]) -> Vec<ConfigIssue> {
        let head = "issuer: x\nservices: [y]\nsigning_keys: []\nrefresh_secret_file: s\n";
        match load_str(
            &format!("{head}{text}"),
            Path::new("/nonexistent"),
            Path::new("c"),
        ) {
            Err(ConfigError::Invalid { issues, .. }) => issues
                .into_iter()
                .filter(|i| prefixes.iter().any(|p| i.key.starts_with(p)))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    /// Shared-state mistakes name their key and line, and a password in
    /// the URL never appears in a message.
    #[test]
    fn shared_state_problems_are_located_and_keep_the_password_out() {
        let issues = |text: &str| -> Vec<(String, usize, String)> {
            issues_under(text, &["shared_state", "revocation"])
                .into_iter()
                .map(|i| (i.key, i.line, i.message))
                .collect()
        };
        let found = issues("shared_state: http://:hunter2@redis:6379/0\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].0.as_str(), found[0].1), ("shared_state", 5));
        assert!(!found[0].2.contains("hunter2"), "{found:?}");
        let found = issues(
            "shared_state: redis://127.0.0.1:6379/0\nshared_state_ca_file: ca.pem\nrevocation_unavailable: maybe\n",
        );
        let keys: Vec<(&str, usize)> = found.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
        assert_eq!(
            keys,
            [("shared_state_ca_file", 6), ("revocation_unavailable", 7)]
        );
        assert!(found[0].2.contains("rediss://"), "{found:?}");
        let found = issues("shared_state_ca_file: ca.pem\n");
        assert_eq!(found[0].2, "needs shared_state");
    }

    /// Before, issuers named `*` or `-` were accepted, though those names
    /// stand for "any issuer" and "no issuer" in revocations, so a
    /// revocation naming one matched the wrong principals. Names are now
    /// letters, digits, '.', '_' and '-', not the markers, and distinct.
    #[test]
    fn issuer_names_that_collide_with_revocation_markers_are_refused() {
        let entry = |name: &str| {
            format!(
                "  - name: {}\n    kind: oidc\n    issuer: https://{}.example\n    audiences: [r]\n",
                serde_json::to_string(name).unwrap(),
                name.len()
            )
        };
        for bad in ["*", "-", "", "a:b", "a b", "x\ny", &"n".repeat(65)] {
            let found = issues_under(&format!("issuers:\n{}", entry(bad)), &["issuers"]);
            assert!(
                found.iter().any(|i| i.key == "issuers[0].name"),
                "{bad:?} accepted: {found:?}"
            );
        }
        let found = issues_under(
            &format!(
                "issuers:\n{}{}",
                entry("cluster-a"),
                entry("cluster-a").replace("https://9", "https://other")
            ),
            &["issuers"],
        );
        assert_eq!(
            found.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["issuers[1].name"],
            "{found:?}"
        );
        for good in ["cluster-a", "github", "ci.example_1"] {
            let found = issues_under(&format!("issuers:\n{}", entry(good)), &["issuers"]);
            assert!(
                !found.iter().any(|i| i.key.ends_with(".name")),
                "{good:?}: {found:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_syntax_errors_with_a_line() {
        let err = load_str(
            "issuer: x\nservices: [y]\nbogus: 1\n",
            Path::new("."),
            Path::new("c.yaml"),
        )
        .unwrap_err();
        let msg = std::error::Error::source(&err).unwrap().to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }));
        assert!(msg.contains("bogus") && msg.contains("line 3"), "{msg}");
        let err = load_str(
            "issuer: x\nservices: [y]\npolicy:\n  - resource: a\n    action: [pull]\n",
            Path::new("."),
            Path::new("c.yaml"),
        )
        .unwrap_err();
        let err = std::error::Error::source(&err).unwrap().to_string();
        assert!(err.contains("action") && err.contains("line 5"), "{err}");
    }

    /// Before, `actions: [pull, pussh]` loaded and granted nothing for the
    /// typo; unknown actions of known resource types are errors now.
    #[test]
    fn unknown_actions_of_known_types_are_errors() {
        let issues = |text: &str| -> Vec<(String, String)> {
            issues_under(text, &["policy", "resource_types"])
                .into_iter()
                .map(|i| (i.key, i.message))
                .collect()
        };
        let found = issues(
            "policy:\n  - {resource: \"a/**\", actions: [pull, pussh]}\n  - {type: registry, resource: catalog, actions: [pull]}\n  - {type: \"*\", resource: x, actions: [pul]}\n",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].0, "policy[0].actions");
        assert!(
            found[0].1.contains("\"pussh\"") && found[0].1.contains("pull, push, delete"),
            "{}",
            found[0].1
        );
        assert_eq!(found[1].0, "policy[1].actions");
        assert_eq!(found[2].0, "policy[2].actions");
        let ok = issues(
            "resource_types: {helm: [fetch]}\npolicy:\n  - {type: helm, resource: c, actions: [fetch]}\n  - {type: custom, resource: d, actions: [anything]}\n  - {resource: e, actions: [\"*\"]}\n",
        );
        assert!(ok.is_empty(), "{ok:?}");
        let declared = issues(
            "resource_types: {helm: [fetch], repository: [pull]}\npolicy:\n  - {type: helm, resource: c, actions: [fech]}\n",
        );
        assert_eq!(
            declared.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["resource_types.repository", "policy[0].actions"]
        );
    }

    /// A name defined twice is reported where the second definition is,
    /// naming the first; before, the problem pointed at the `issuer` line.
    #[test]
    fn duplicate_accounts_are_reported_at_the_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let g =
            crate::keys::generate(crate::keys::Algorithm::Es256, "t", crate::clock::now()).unwrap();
        std::fs::write(dir.path().join("k"), g.key_pem).unwrap();
        std::fs::write(dir.path().join("c"), g.cert_pem).unwrap();
        std::fs::write(dir.path().join("s"), [1u8; 32]).unwrap();
        let h = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("bob:{h}\nalice:{h}\n")).unwrap();
        let text = format!(
            "issuer: x\nservices: [y]\nsigning_keys: [{{key: k, cert: c}}]\nrefresh_secret_file: s\n\
             accounts:\n  - {{name: alice, password_hash: \"{h}\"}}\n  - {{name: alice, password_hash: \"{h}\"}}\n\
             htpasswd_files: [htpasswd]\n"
        );
        let err = load_str(&text, dir.path(), Path::new("c.yaml")).unwrap_err();
        let ConfigError::Invalid { issues, .. } = &err else {
            panic!("{err}")
        };
        let found: Vec<(&str, usize)> = issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            found,
            [
                ("accounts[1]", 7),
                ("htpasswd_files[0] (htpasswd, line 2)", 8)
            ],
            "{err}"
        );
        assert!(issues[0].message.contains("already defined by accounts[0]"));
    }

    /// The identity example loads, and a token signed like the air-gapped
    /// cluster's (fixture claims, fixture key) gets what its comments say.
    #[tokio::test]
    async fn identity_example_config_works_as_documented() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let s = load(&fixtures().join("identity.yaml")).unwrap();
        assert!(s.tls.is_some());
        assert_eq!(s.public_url, "https://auth.example.com:5001");
        assert_eq!(s.issuers.all().len(), 3);

        let mut claims: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures().join("identity/kubernetes-sa-token-claims.json")).unwrap(),
        )
        .unwrap();
        let now = crate::clock::now();
        let t = crate::clock::unix(now);
        claims["iss"] = "https://cluster-a.example.com".into();
        claims["aud"] = serde_json::json!(["registry.example.com"]);
        claims["iat"] = t.into();
        claims["nbf"] = t.into();
        claims["exp"] = (t + 600).into();
        let pem = std::fs::read(fixtures().join("identity/cluster-sa-signer.key")).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("cluster-a-2026".into());
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
        let key = EncodingKey::from_ec_der(der.secret_pkcs8_der());
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let (principal, issuer) = s.issuers.verify(&token, now).await.unwrap();
        assert_eq!(issuer.name, "cluster-a");
        assert_eq!(principal.name, "system:serviceaccount:team-a:builder");

        let decide = |p: &Principal, scope: &str| {
            let scope: Scope = scope.parse().unwrap();
            s.policy.decide(p, &[scope]).remove(0).grant.actions
        };
        assert_eq!(
            decide(&principal, "repository:team-a/app:pull,push,delete"),
            ["pull", "push"]
        );
        assert!(decide(&principal, "repository:team-b/app:pull").is_empty());
        assert_eq!(
            decide(&principal, "repository:ci/anything:push"),
            ["push"],
            "builder rule"
        );

        let mut gha = Principal {
            kind: crate::identity::Kind::Oidc,
            name: "repo:example-org/app:ref:refs/heads/main".into(),
            attributes: Default::default(),
        };
        for (k, v) in [
            ("issuer", "github"),
            ("claims.repository", "example-org/app"),
            ("claims.repository_owner", "example-org"),
            ("claims.ref", "refs/heads/main"),
        ] {
            gha.attributes.insert(k.into(), v.into());
        }
        assert_eq!(decide(&gha, "repository:ci/example-org/app:push"), ["push"]);
        assert!(decide(&gha, "repository:ci/example-org/other:push").is_empty());
        gha.attributes
            .insert("claims.ref".into(), "refs/heads/feature".into());
        assert!(
            decide(&gha, "repository:ci/example-org/app:push").is_empty(),
            "main only"
        );
    }
}
