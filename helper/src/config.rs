//! The helper's YAML config: which registries it serves, where their token
//! server is, and which local identity it exchanges there.
//!
//! Search order: `--config`, `REGAUTH_HELPER_CONFIG`,
//! `$XDG_CONFIG_HOME/regauth/helper.yaml` (or `~/.config/...`), then
//! `/etc/regauth/helper.yaml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regauth_client::{FileError, MAX_CONFIG_BYTES};
use serde::Deserialize;

use crate::matcher::{Pattern, PatternError, Target};

/// Default timeout of one exchange: well under the kubelet's one minute.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest timeout allowed: the kubelet plugin must answer within a minute.
const MAX_TIMEOUT: Duration = Duration::from_secs(50);

/// Username returned in the `password` output form.
pub(crate) const DEFAULT_USERNAME: &str = "regauth";

/// Why the config could not be used. Each variant names the file; the
/// cause follows in the error's source chain, never repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the helper config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("the helper config {path} is larger than {} MiB", MAX_CONFIG_BYTES / (1024 * 1024))]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not valid YAML, or not the expected shape (an unknown key, a missing
    /// one, a value of the wrong type).
    #[error("the helper config {path} is not valid")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line (boxed: it is large).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A value is wrong.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Key path, like `registries[0].match`.
        key: String,
        /// What is wrong, and what is expected instead.
        message: String,
        /// The parser's reason, when a parser rejected the value.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    registries: Vec<RegistryFile>,
    #[serde(default)]
    cache_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(rename = "match")]
    patterns: Vec<String>,
    token_server: String,
    service: String,
    identity: IdentityFile,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    output: Output,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    forward_annotations: Vec<String>,
}

/// How `get` presents the credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Output {
    /// `Username: "<token>"`, `Secret: <refresh token>`: clients use the
    /// OAuth2 refresh grant.
    #[default]
    IdentityToken,
    /// A username and the refresh token as password: clients use Basic.
    Password,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum IdentityFile {
    Kubernetes {
        token_file: String,
    },
    OidcFile {
        token_file: String,
    },
    OidcEnv {
        variable: String,
    },
    GithubActions {
        audience: String,
    },
    ClientCertificate {
        cert: String,
        key: String,
    },
    Account {
        username: String,
        password_file: String,
    },
}

/// A local identity source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentitySource {
    /// A projected service-account token file, read fresh each time.
    Kubernetes {
        /// The token file.
        token_file: PathBuf,
    },
    /// An OIDC ID token in a file.
    OidcFile {
        /// The token file.
        token_file: PathBuf,
    },
    /// An OIDC ID token in an environment variable.
    OidcEnv {
        /// The variable's name.
        variable: String,
    },
    /// A GitHub Actions ID token requested for `audience`.
    GithubActions {
        /// The audience to request.
        audience: String,
    },
    /// A client certificate for mutual TLS (`client_credentials`).
    ClientCertificate {
        /// Certificate chain PEM.
        cert: PathBuf,
        /// Private key PEM.
        key: PathBuf,
    },
    /// An account and a file holding its password (`password` grant).
    Account {
        /// The account name.
        username: String,
        /// The password file.
        password_file: PathBuf,
    },
}

impl IdentitySource {
    /// The config name of this kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            IdentitySource::Kubernetes { .. } => "kubernetes",
            IdentitySource::OidcFile { .. } => "oidc_file",
            IdentitySource::OidcEnv { .. } => "oidc_env",
            IdentitySource::GithubActions { .. } => "github_actions",
            IdentitySource::ClientCertificate { .. } => "client_certificate",
            IdentitySource::Account { .. } => "account",
        }
    }
}

/// One registry entry.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    /// The patterns this entry serves.
    pub(crate) patterns: Vec<Pattern>,
    /// Token server base URL, without a trailing slash.
    pub(crate) token_server: String,
    /// The registry's `service`.
    pub(crate) service: String,
    /// The identity to exchange.
    pub(crate) identity: IdentitySource,
    /// Extra CA bundle for the token server.
    pub(crate) ca_file: Option<PathBuf>,
    /// Timeout of one exchange.
    pub(crate) timeout: Duration,
    /// Output form.
    pub(crate) output: Output,
    /// Username for the password form (and kubelet responses).
    pub(crate) username: String,
    /// Kubelet mode: service-account annotation keys forwarded to the token server.
    pub(crate) forward_annotations: Vec<String>,
}

impl Registry {
    /// The entry's first pattern, to name it in messages.
    pub(crate) fn name(&self) -> String {
        self.patterns
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// The loaded config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was loaded from.
    pub(crate) path: PathBuf,
    /// Registry entries, first match wins.
    pub(crate) registries: Vec<Registry>,
    /// Where credentials are cached.
    pub(crate) cache_dir: PathBuf,
}

impl Config {
    /// The first entry whose pattern matches `target`.
    pub(crate) fn registry_for(&self, target: &Target) -> Option<&Registry> {
        self.registries
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(target)))
    }
}

/// Where to look for the config, in order, given `--config` and the environment.
pub(crate) fn candidates(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_owned()];
    }
    if let Some(p) = env("REGAUTH_HELPER_CONFIG").filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(x) = env("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(x).join("regauth/helper.yaml"));
    } else if let Some(h) = env("HOME").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(h).join(".config/regauth/helper.yaml"));
    }
    out.push(PathBuf::from("/etc/regauth/helper.yaml"));
    out
}

/// Finds and loads the config. `Ok(None)` when no file exists at any of the
/// implicit locations (nothing is configured); an explicit path that does not
/// exist is an error.
pub(crate) fn find(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Config>, ConfigError> {
    let list = candidates(explicit, env);
    let explicit =
        explicit.is_some() || env("REGAUTH_HELPER_CONFIG").is_some_and(|v| !v.is_empty());
    for path in &list {
        if explicit || path.exists() {
            return load(path, env).map(Some);
        }
    }
    Ok(None)
}

/// Loads the config at `path`; relative paths resolve against its directory.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let text = read_bounded(path, MAX_CONFIG_BYTES)?;
    parse(&text, path, env)
}

/// Reads the text at `path`, refusing more than `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<String, ConfigError> {
    regauth_client::read_bounded(path, limit).map_err(|e| match e {
        FileError::Io(source) => ConfigError::Read {
            path: path.to_owned(),
            source,
        },
        FileError::TooLarge(_) => ConfigError::TooLarge {
            path: path.to_owned(),
        },
    })
}

/// Parses config `text` as if read from `path`: relative paths resolve
/// against `path`'s directory, and errors name it. `env` supplies the
/// default cache directory's variables.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let file: ConfigFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| base.join(p);
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
        source: None,
    };
    let mut registries = Vec::new();
    for (i, r) in file.registries.iter().enumerate() {
        let key = |f: &str| format!("registries[{i}].{f}");
        if r.patterns.is_empty() {
            return Err(invalid(
                key("match"),
                "list at least one registry pattern".into(),
            ));
        }
        let patterns = r
            .patterns
            .iter()
            .map(|p| Pattern::new(p))
            .collect::<Result<Vec<_>, PatternError>>()
            .map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                key: key("match"),
                message: "expected HOST[:PORT][/PATH], with * globs inside host labels".into(),
                source: Some(Box::new(e)),
            })?;
        let token_server = r.token_server.trim_end_matches('/').to_owned();
        if !(token_server.starts_with("https://") || token_server.starts_with("http://")) {
            return Err(invalid(
                key("token_server"),
                "must be an http:// or https:// URL".into(),
            ));
        }
        if r.service.is_empty() {
            return Err(invalid(key("service"), "must not be empty".into()));
        }
        let timeout = match &r.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => {
                let bad = |source: Option<humantime::DurationError>| ConfigError::Invalid {
                    path: path.to_owned(),
                    key: key("timeout"),
                    message: format!("{t:?} is not a duration between 1ms and 50s"),
                    source: source.map(|e| Box::new(e) as _),
                };
                let d = humantime::parse_duration(t).map_err(|e| bad(Some(e)))?;
                if d.is_zero() || d > MAX_TIMEOUT {
                    return Err(bad(None));
                }
                d
            }
        };
        let identity = match &r.identity {
            IdentityFile::Kubernetes { token_file } => IdentitySource::Kubernetes {
                token_file: resolve(token_file),
            },
            IdentityFile::OidcFile { token_file } => IdentitySource::OidcFile {
                token_file: resolve(token_file),
            },
            IdentityFile::OidcEnv { variable } => IdentitySource::OidcEnv {
                variable: variable.clone(),
            },
            IdentityFile::GithubActions { audience } => IdentitySource::GithubActions {
                audience: audience.clone(),
            },
            IdentityFile::ClientCertificate { cert, key } => IdentitySource::ClientCertificate {
                cert: resolve(cert),
                key: resolve(key),
            },
            IdentityFile::Account {
                username,
                password_file,
            } => IdentitySource::Account {
                username: username.clone(),
                password_file: resolve(password_file),
            },
        };
        registries.push(Registry {
            patterns,
            token_server,
            service: r.service.clone(),
            identity,
            ca_file: r.ca_file.as_deref().map(resolve),
            timeout,
            output: r.output,
            username: r
                .username
                .clone()
                .unwrap_or_else(|| DEFAULT_USERNAME.to_owned()),
            forward_annotations: r.forward_annotations.clone(),
        });
    }
    let cache_dir = match &file.cache_dir {
        Some(d) => resolve(d),
        None => default_cache_dir(env),
    };
    Ok(Config {
        path: path.to_owned(),
        registries,
        cache_dir,
    })
}

/// `REGAUTH_CACHE_DIR`, else `$XDG_CACHE_HOME/regauth`, else
/// `~/.cache/regauth`, else `/var/cache/regauth`.
pub(crate) fn default_cache_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(d) = env("REGAUTH_CACHE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(x) = env("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("regauth");
    }
    match env("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache/regauth"),
        None => PathBuf::from("/var/cache/regauth"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    proptest::proptest! {
        /// Any text parses to a config or to an error that names the file.
        #[test]
        fn parsing_never_panics(text in "(registries:|cache_dir:|  - |match:|token_server:|identity:|kind:|[ -~\n]){0,60}") {
            if let Err(e) = parse(&text, Path::new("/etc/regauth/helper.yaml"), &no_env) {
                let shown = e.to_string();
                proptest::prop_assert!(shown.contains("helper.yaml"), "{}", shown);
            }
        }
    }

    #[test]
    fn search_order() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/u".to_owned()),
            _ => None,
        };
        assert_eq!(
            candidates(None, &env),
            [
                PathBuf::from("/home/u/.config/regauth/helper.yaml"),
                PathBuf::from("/etc/regauth/helper.yaml")
            ]
        );
        let env2 = |k: &str| match k {
            "XDG_CONFIG_HOME" => Some("/x".to_owned()),
            "REGAUTH_HELPER_CONFIG" => Some("/env.yaml".to_owned()),
            _ => None,
        };
        assert_eq!(candidates(None, &env2), [PathBuf::from("/env.yaml")]);
        assert_eq!(
            candidates(Some(Path::new("/flag.yaml")), &env2),
            [PathBuf::from("/flag.yaml")]
        );
    }

    #[test]
    fn loads_every_identity_kind_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.yaml");
        std::fs::write(
            &path,
            r#"
registries:
  - match: ["*.example.com", "127.0.0.1:5000"]
    token_server: https://auth.example.com/
    service: registry.example.com
    identity: {kind: kubernetes, token_file: token}
  - match: [a.test]
    token_server: http://127.0.0.1:5001
    service: s
    output: password
    timeout: 3s
    identity: {kind: account, username: alice, password_file: /etc/pw}
  - match: [b.test]
    token_server: http://x
    service: s
    identity: {kind: github_actions, audience: regauth}
  - match: [c.test]
    token_server: http://x
    service: s
    identity: {kind: client_certificate, cert: c.pem, key: k.pem}
  - match: [d.test]
    token_server: http://x
    service: s
    identity: {kind: oidc_env, variable: CI_JOB_JWT}
"#,
        )
        .unwrap();
        let c = load(&path, &no_env).unwrap();
        assert_eq!(c.registries.len(), 5);
        assert_eq!(c.registries[0].token_server, "https://auth.example.com");
        assert_eq!(
            c.registries[0].identity,
            IdentitySource::Kubernetes {
                token_file: dir.path().join("token")
            }
        );
        assert_eq!(c.registries[1].output, Output::Password);
        assert_eq!(c.registries[1].timeout, Duration::from_secs(3));
        assert_eq!(c.registries[0].timeout, DEFAULT_TIMEOUT);
        let t = Target::parse("registry.example.com").unwrap();
        assert_eq!(c.registry_for(&t).unwrap().service, "registry.example.com");
        assert!(
            c.registry_for(&Target::parse("other.test").unwrap())
                .is_none()
        );

        std::fs::write(&path, "registries:\n  - match: [a]\n    token_server: http://x\n    service: s\n    identity: {kind: account, username: a, password_file: p, extra: 1}\n").unwrap();
        assert!(matches!(
            load(&path, &no_env),
            Err(ConfigError::Syntax { .. })
        ));
        std::fs::write(&path, "registries:\n  - match: [a]\n    token_server: ftp://x\n    service: s\n    identity: {kind: oidc_env, variable: V}\n").unwrap();
        let err = load(&path, &no_env).unwrap_err().to_string();
        assert!(err.contains("registries[0].token_server"), "{err}");
    }

    #[test]
    fn oversized_config_is_refused_naming_the_file_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.yaml");
        std::fs::write(&path, "# padding\n").unwrap();
        assert!(matches!(
            read_bounded(&path, 10),
            Ok(text) if text == "# padding\n"
        ));
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let err = load(&path, &no_env).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains("helper.yaml") && shown.contains("16 MiB"),
            "{shown}"
        );
    }

    #[test]
    fn missing_implicit_config_is_not_an_error_but_missing_explicit_is() {
        let env = |k: &str| match k {
            "HOME" => Some("/nonexistent-home".to_owned()),
            _ => None,
        };
        if !Path::new("/etc/regauth/helper.yaml").exists() {
            assert!(find(None, &env).unwrap().is_none());
        }
        assert!(find(Some(Path::new("/nonexistent/helper.yaml")), &env).is_err());
    }

    #[test]
    fn example_config_in_fixtures_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/helper.yaml");
        let c = load(&path, &no_env).unwrap();
        assert_eq!(c.registries.len(), 4);
        assert_eq!(c.cache_dir, PathBuf::from("/var/cache/regauth"));
        let pick = |loc: &str| {
            c.registry_for(&Target::parse(loc).unwrap())
                .map(|r| r.identity.kind())
        };
        assert_eq!(pick("registry.example.com"), Some("kubernetes"));
        assert_eq!(
            pick("eu.mirror.example.com:5000/app:1"),
            Some("client_certificate")
        );
        assert_eq!(
            pick("eu.mirror.example.com/app"),
            None,
            "the port must match"
        );
        assert_eq!(pick("ci.example.com"), Some("github_actions"));
        assert_eq!(pick("legacy.example.com/team/app:1"), Some("account"));
        assert_eq!(
            pick("legacy.example.com/other/app"),
            None,
            "the path is a prefix"
        );
        assert!(
            c.registries[0]
                .ca_file
                .as_ref()
                .unwrap()
                .ends_with("tls/server-ca.crt")
        );
    }
}
