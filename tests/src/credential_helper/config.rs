//! The helper's YAML config (`helper.yaml`), written from test values.
//!
//! Every string is emitted as a JSON-quoted scalar, which YAML reads
//! verbatim, so paths and names need no escaping rules of their own.

use std::path::{Path, PathBuf};

use crate::token_server::SERVICE;

/// The local identity a registry entry exchanges (`identity:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `kind: kubernetes`: a projected service-account token file.
    Kubernetes {
        /// The token file.
        token_file: PathBuf,
    },
    /// `kind: oidc_file`: an OIDC ID token in a file.
    OidcFile {
        /// The token file.
        token_file: PathBuf,
    },
    /// `kind: oidc_env`: an OIDC ID token in an environment variable.
    OidcEnv {
        /// The variable's name.
        variable: String,
    },
    /// `kind: github_actions`: a token requested from the Actions runtime.
    GithubActions {
        /// The audience to request.
        audience: String,
    },
    /// `kind: client_certificate`: mutual TLS with a client certificate.
    ClientCertificate {
        /// Certificate PEM file.
        cert: PathBuf,
        /// Private key PEM file.
        key: PathBuf,
    },
    /// `kind: account`: an account and a file holding its password.
    Account {
        /// The account name.
        username: String,
        /// The password file.
        password_file: PathBuf,
    },
}

impl Identity {
    /// An account identity whose password is written to `dir/NAME.password`
    /// (mode 0600).
    pub fn account(dir: &Path, username: &str, password: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create identity dir");
        let password_file = dir.join(format!("{username}.password"));
        crate::secrets::write_secret_file(&password_file, password.as_bytes());
        Identity::Account {
            username: username.to_owned(),
            password_file,
        }
    }

    /// The `kind:` value.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Kubernetes { .. } => "kubernetes",
            Identity::OidcFile { .. } => "oidc_file",
            Identity::OidcEnv { .. } => "oidc_env",
            Identity::GithubActions { .. } => "github_actions",
            Identity::ClientCertificate { .. } => "client_certificate",
            Identity::Account { .. } => "account",
        }
    }

    fn to_yaml(&self) -> String {
        let mut out = format!("    identity:\n      kind: {}\n", self.kind());
        let fields: Vec<(&str, String)> = match self {
            Identity::Kubernetes { token_file } | Identity::OidcFile { token_file } => {
                vec![("token_file", path_str(token_file))]
            }
            Identity::OidcEnv { variable } => vec![("variable", variable.clone())],
            Identity::GithubActions { audience } => vec![("audience", audience.clone())],
            Identity::ClientCertificate { cert, key } => {
                vec![("cert", path_str(cert)), ("key", path_str(key))]
            }
            Identity::Account {
                username,
                password_file,
            } => vec![
                ("username", username.clone()),
                ("password_file", path_str(password_file)),
            ],
        };
        for (key, value) in fields {
            out.push_str(&format!("      {key}: {}\n", quote(&value)));
        }
        out
    }
}

/// How `get` presents the credential (`output:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `Username: "<token>"`: clients use the OAuth2 refresh grant (POST).
    IdentityToken,
    /// A username and the refresh token as password: clients use Basic (GET).
    Password,
}

impl Output {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            Output::IdentityToken => "identity_token",
            Output::Password => "password",
        }
    }
}

/// One `registries:` entry. Unset optional keys are left out, so the
/// helper's defaults apply.
#[derive(Debug, Clone)]
pub struct RegistryEntry {
    patterns: Vec<String>,
    token_server: String,
    service: String,
    identity: Identity,
    output: Option<Output>,
    username: Option<String>,
    ca_file: Option<PathBuf>,
    timeout: Option<String>,
    forward_annotations: Vec<String>,
}

impl RegistryEntry {
    /// An entry serving `patterns` from `token_server` (base URL) for the
    /// test [`SERVICE`], exchanging `identity`.
    pub fn new(patterns: &[&str], token_server: &str, identity: Identity) -> Self {
        Self {
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            token_server: token_server.to_owned(),
            service: SERVICE.to_owned(),
            identity,
            output: None,
            username: None,
            ca_file: None,
            timeout: None,
            forward_annotations: Vec::new(),
        }
    }

    /// Sets `forward_annotations:` (kubelet mode).
    pub fn forward_annotations(mut self, keys: &[&str]) -> Self {
        self.forward_annotations = keys.iter().map(|k| (*k).to_owned()).collect();
        self
    }

    /// Sets `output:`.
    pub fn output(mut self, output: Output) -> Self {
        self.output = Some(output);
        self
    }

    /// Sets `username:` (used by the password form).
    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.to_owned());
        self
    }

    /// Sets `ca_file:` (an extra CA for an https token server).
    pub fn ca_file(mut self, path: &Path) -> Self {
        self.ca_file = Some(path.to_owned());
        self
    }

    /// Sets `timeout:` (a duration like `5s`).
    pub fn timeout(mut self, timeout: &str) -> Self {
        self.timeout = Some(timeout.to_owned());
        self
    }

    /// Sets `service:`.
    pub fn service(mut self, service: &str) -> Self {
        self.service = service.to_owned();
        self
    }

    /// The output form the helper will use (its default is the identity token).
    pub fn output_form(&self) -> Output {
        self.output.unwrap_or(Output::IdentityToken)
    }

    /// The entry as a YAML list item.
    fn to_yaml(&self) -> String {
        let patterns: Vec<String> = self.patterns.iter().map(|p| quote(p)).collect();
        let mut out = format!(
            "  - match: [{}]\n    token_server: {}\n    service: {}\n",
            patterns.join(", "),
            quote(&self.token_server),
            quote(&self.service)
        );
        if let Some(output) = self.output {
            out.push_str(&format!("    output: {}\n", output.name()));
        }
        if let Some(username) = &self.username {
            out.push_str(&format!("    username: {}\n", quote(username)));
        }
        if let Some(ca) = &self.ca_file {
            out.push_str(&format!("    ca_file: {}\n", quote(&path_str(ca))));
        }
        if let Some(timeout) = &self.timeout {
            out.push_str(&format!("    timeout: {}\n", quote(timeout)));
        }
        out.push_str(&self.identity.to_yaml());
        if !self.forward_annotations.is_empty() {
            let keys: Vec<String> = self.forward_annotations.iter().map(|k| quote(k)).collect();
            out.push_str(&format!("    forward_annotations: [{}]\n", keys.join(", ")));
        }
        out
    }
}

/// A whole `helper.yaml`.
#[derive(Debug, Clone, Default)]
pub struct HelperConfig {
    registries: Vec<RegistryEntry>,
    cache_dir: Option<PathBuf>,
}

impl HelperConfig {
    /// A config with no entries yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a registry entry (first match wins in the helper).
    pub fn registry(mut self, entry: RegistryEntry) -> Self {
        self.registries.push(entry);
        self
    }

    /// Sets `cache_dir:`.
    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_owned());
        self
    }

    /// The config as YAML.
    pub fn to_yaml(&self) -> String {
        let mut out = String::from("registries:");
        if self.registries.is_empty() {
            out.push_str(" []");
        }
        out.push('\n');
        for entry in &self.registries {
            out.push_str(&entry.to_yaml());
        }
        if let Some(dir) = &self.cache_dir {
            out.push_str(&format!("cache_dir: {}\n", quote(&path_str(dir))));
        }
        out
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_yaml())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("serialize string")
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_entries_with_only_the_keys_set() {
        let yaml = HelperConfig::new()
            .registry(
                RegistryEntry::new(
                    &["127.0.0.1:5000"],
                    "http://127.0.0.1:5001",
                    Identity::Kubernetes {
                        token_file: PathBuf::from("/t/token"),
                    },
                )
                .output(Output::Password)
                .username("ci-bot"),
            )
            .registry(RegistryEntry::new(
                &["a.test", "b.test:5000"],
                "https://127.0.0.1:5002",
                Identity::Account {
                    username: "alice".into(),
                    password_file: PathBuf::from("pw"),
                },
            ))
            .cache_dir(Path::new("/c"))
            .to_yaml();
        assert_eq!(
            yaml,
            "registries:\n\
             \x20 - match: [\"127.0.0.1:5000\"]\n    token_server: \"http://127.0.0.1:5001\"\n    service: \"registry.test\"\n    output: password\n    username: \"ci-bot\"\n    identity:\n      kind: kubernetes\n      token_file: \"/t/token\"\n\
             \x20 - match: [\"a.test\", \"b.test:5000\"]\n    token_server: \"https://127.0.0.1:5002\"\n    service: \"registry.test\"\n    identity:\n      kind: account\n      username: \"alice\"\n      password_file: \"pw\"\n\
             cache_dir: \"/c\"\n"
        );
    }
}
