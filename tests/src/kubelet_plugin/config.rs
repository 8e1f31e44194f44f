//! The helper config (`helper.yaml`) a node ships for the kubelet plugin,
//! written from test values. Strings are JSON-quoted YAML scalars.

use std::path::{Path, PathBuf};

use crate::secrets::write_secret_file;
use crate::token_server::SERVICE;

/// The identity an entry exchanges when the request carries no
/// service-account token: the node's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdentity {
    /// `kind: account`, with the password in a file.
    Account {
        /// The account.
        username: String,
        /// The file holding its password.
        password_file: PathBuf,
    },
    /// `kind: client_certificate`: mutual TLS with the node's certificate.
    ClientCertificate {
        /// Certificate PEM file.
        cert: PathBuf,
        /// Key PEM file.
        key: PathBuf,
    },
}

impl NodeIdentity {
    /// An account identity whose password is written to `dir/NAME.password`
    /// (mode 0600).
    pub fn account(dir: &Path, username: &str, password: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create identity dir");
        let password_file = dir.join(format!("{username}.password"));
        write_secret_file(&password_file, password.as_bytes());
        NodeIdentity::Account {
            username: username.to_owned(),
            password_file,
        }
    }

    fn to_yaml(&self) -> String {
        let fields = match self {
            NodeIdentity::Account {
                username,
                password_file,
            } => format!(
                "kind: account, username: {}, password_file: {}",
                quote(username),
                quote_path(password_file)
            ),
            NodeIdentity::ClientCertificate { cert, key } => format!(
                "kind: client_certificate, cert: {}, key: {}",
                quote_path(cert),
                quote_path(key)
            ),
        };
        format!("    identity: {{{fields}}}\n")
    }
}

/// One `registries:` entry.
#[derive(Debug, Clone)]
pub struct Entry {
    patterns: Vec<String>,
    token_server: String,
    service: String,
    identity: NodeIdentity,
    ca_file: Option<PathBuf>,
    timeout: Option<String>,
    username: Option<String>,
    forward_annotations: Vec<String>,
}

impl Entry {
    /// An entry serving `patterns` from `token_server` for the test
    /// [`SERVICE`], exchanging `identity` when no pod token comes along.
    pub fn new(patterns: &[&str], token_server: &str, identity: NodeIdentity) -> Self {
        Self {
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            token_server: token_server.to_owned(),
            service: SERVICE.to_owned(),
            identity,
            ca_file: None,
            timeout: None,
            username: None,
            forward_annotations: Vec::new(),
        }
    }

    /// Sets `ca_file`: the CA bundle the token server's certificate chains to.
    pub fn ca_file(mut self, path: &Path) -> Self {
        self.ca_file = Some(path.to_owned());
        self
    }

    /// Sets `timeout` (a duration such as `2s`).
    pub fn timeout(mut self, timeout: &str) -> Self {
        self.timeout = Some(timeout.to_owned());
        self
    }

    /// Sets `username`, the name the responses carry.
    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.to_owned());
        self
    }

    /// Sets `forward_annotations`.
    pub fn forward_annotations(mut self, keys: &[&str]) -> Self {
        self.forward_annotations = keys.iter().map(|k| (*k).to_owned()).collect();
        self
    }

    fn to_yaml(&self) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|i| quote(i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = format!(
            "  - match: [{}]\n    token_server: {}\n    service: {}\n",
            list(&self.patterns),
            quote(&self.token_server),
            quote(&self.service)
        );
        out.push_str(&self.identity.to_yaml());
        if let Some(ca) = &self.ca_file {
            out.push_str(&format!("    ca_file: {}\n", quote_path(ca)));
        }
        if let Some(timeout) = &self.timeout {
            out.push_str(&format!("    timeout: {}\n", quote(timeout)));
        }
        if let Some(username) = &self.username {
            out.push_str(&format!("    username: {}\n", quote(username)));
        }
        if !self.forward_annotations.is_empty() {
            out.push_str(&format!(
                "    forward_annotations: [{}]\n",
                list(&self.forward_annotations)
            ));
        }
        out
    }
}

/// The whole config: `entries` in order (first match wins) and `cache_dir`.
pub fn config_yaml(entries: &[Entry], cache_dir: &Path) -> String {
    let mut out = String::from("registries:\n");
    for entry in entries {
        out.push_str(&entry.to_yaml());
    }
    out.push_str(&format!("cache_dir: {}\n", quote_path(cache_dir)));
    out
}

/// Writes `dir/helper.yaml` with `entries` and a cache in `dir/cache`;
/// returns the config's path.
pub fn write_config(dir: &Path, entries: &[Entry]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create plugin config dir");
    let path = dir.join("helper.yaml");
    std::fs::write(&path, config_yaml(entries, &dir.join("cache"))).expect("write helper.yaml");
    path
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("serialize string")
}

fn quote_path(p: &Path) -> String {
    quote(
        p.to_str()
            .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_set_key() {
        let identity = NodeIdentity::ClientCertificate {
            cert: "/n/c.pem".into(),
            key: "/n/k.pem".into(),
        };
        let entry = Entry::new(&["r.test:5000", "r.test:5000/team"], "http://t", identity)
            .ca_file(Path::new("/ca.pem"))
            .timeout("2s")
            .username("node")
            .forward_annotations(&["regauth.io/purpose"]);
        assert_eq!(
            config_yaml(&[entry], Path::new("/cache")),
            "registries:\n\
             \x20 - match: [\"r.test:5000\", \"r.test:5000/team\"]\n\
             \x20   token_server: \"http://t\"\n\
             \x20   service: \"registry.test\"\n\
             \x20   identity: {kind: client_certificate, cert: \"/n/c.pem\", key: \"/n/k.pem\"}\n\
             \x20   ca_file: \"/ca.pem\"\n\
             \x20   timeout: \"2s\"\n\
             \x20   username: \"node\"\n\
             \x20   forward_annotations: [\"regauth.io/purpose\"]\n\
             cache_dir: \"/cache\"\n"
        );
    }
}
