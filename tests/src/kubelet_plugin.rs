//! Runs `docker-credential-regauth kubelet`, the kubelet image credential
//! provider plugin, the way the kubelet runs it: the `kubelet` argument from
//! the provider's `args`, `REGAUTH_HELPER_CONFIG` from its `env`, a
//! `CredentialProviderRequest` on stdin, and one minute to answer.
//!
//! - [`config`] writes the helper config a node would ship;
//! - [`Request`] and [`Response`] are the two API objects, the response
//!   decoded as strictly as the kubelet decodes it;
//! - [`kubelet::Kubelet`] models what the kubelet does with a response
//!   before a credential reaches the CRI (its cache and keyring lookup);
//! - [`duration`] parses the Go durations of `cacheDuration`;
//! - [`silent::SilentServer`] is a token server that never answers.

pub mod config;
pub mod duration;
pub mod kubelet;
pub mod silent;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::bins::credential_helper_bin;
use crate::process::{CmdOutput, run_with_stdin};

/// The plugin API group.
pub const API_GROUP: &str = "credentialprovider.kubelet.k8s.io";
/// Every version of the plugin API the kubelet may speak, newest first.
pub const API_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha1"];
/// The request kind.
pub const REQUEST_KIND: &str = "CredentialProviderRequest";
/// The response kind.
pub const RESPONSE_KIND: &str = "CredentialProviderResponse";
/// The kubelet kills an exec plugin after this long.
pub const KUBELET_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of every plugin diagnostic on stderr.
pub const STDERR_PREFIX: &str = "docker-credential-regauth kubelet: ";

/// `credentialprovider.kubelet.k8s.io/VERSION`.
pub fn api_version(version: &str) -> String {
    format!("{API_GROUP}/{version}")
}

/// A `CredentialProviderRequest`, built like the kubelet builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The full `apiVersion`.
    pub api_version: String,
    /// The image being pulled.
    pub image: String,
    /// The pod's service-account token (service-account token mode only).
    pub service_account_token: Option<String>,
    /// The service account's annotations the provider config names.
    pub service_account_annotations: BTreeMap<String, String>,
}

impl Request {
    /// A `v1` request for `image`, without a service-account token.
    pub fn new(image: &str) -> Self {
        Self {
            api_version: api_version("v1"),
            image: image.to_owned(),
            service_account_token: None,
            service_account_annotations: BTreeMap::new(),
        }
    }

    /// Speaks `version` (`v1`, `v1beta1`, `v1alpha1`).
    pub fn version(mut self, version: &str) -> Self {
        self.api_version = api_version(version);
        self
    }

    /// Carries the pod's service-account token.
    pub fn token(mut self, token: &str) -> Self {
        self.service_account_token = Some(token.to_owned());
        self
    }

    /// Carries one service-account annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.service_account_annotations
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// The JSON the kubelet writes: `serviceAccountToken` and
    /// `serviceAccountAnnotations` are left out when empty (`omitempty`).
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "kind": REQUEST_KIND,
            "apiVersion": self.api_version,
            "image": self.image,
        });
        if let Some(token) = &self.service_account_token {
            body["serviceAccountToken"] = json!(token);
        }
        if !self.service_account_annotations.is_empty() {
            body["serviceAccountAnnotations"] = json!(self.service_account_annotations);
        }
        body
    }
}

/// One `auth` entry of a response: what the kubelet hands the CRI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

/// A `CredentialProviderResponse`. Every field is required and no other
/// field is accepted: the plugin contract promises exactly these.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Response {
    /// The full `apiVersion`.
    pub api_version: String,
    /// `CredentialProviderResponse`.
    pub kind: String,
    /// `Image`, `Registry` or `Global`.
    pub cache_key_type: String,
    /// A Go duration string.
    pub cache_duration: String,
    /// Credentials by image pattern.
    pub auth: BTreeMap<String, AuthConfig>,
}

impl Response {
    /// `cacheDuration` parsed; panics when it is no Go duration.
    pub fn cache_duration(&self) -> Duration {
        duration::parse_go_duration(&self.cache_duration).unwrap_or_else(|| {
            panic!(
                "cacheDuration {:?} is not a Go duration",
                self.cache_duration
            )
        })
    }

    /// The single credential every `auth` entry carries; panics when `auth`
    /// is empty or its entries differ.
    pub fn credential(&self) -> &AuthConfig {
        let mut values = self.auth.values();
        let first = values
            .next()
            .unwrap_or_else(|| panic!("the response has no credential: {self:?}"));
        assert!(
            values.all(|v| v == first),
            "one registry entry answers with one credential, yet the auth entries differ: {:?}",
            self.auth.keys().collect::<Vec<_>>()
        );
        first
    }

    /// The `auth` keys, sorted.
    pub fn auth_keys(&self) -> Vec<String> {
        self.auth.keys().cloned().collect()
    }
}

/// One finished plugin run.
#[derive(Debug)]
pub struct Invocation {
    /// What the process produced.
    pub output: CmdOutput,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Invocation {
    /// Asserts exit 0 and a stdout holding exactly one JSON object (and an
    /// optional final newline), which is returned.
    pub fn json(&self, what: &str) -> Value {
        assert!(
            self.output.success(),
            "{what}: the plugin failed:\n{}",
            self.output.describe()
        );
        let mut stream =
            serde_json::Deserializer::from_str(&self.output.stdout).into_iter::<Value>();
        let value = match stream.next() {
            Some(Ok(value)) => value,
            other => panic!(
                "{what}: stdout is not JSON ({other:?}):\n{}",
                self.output.describe()
            ),
        };
        let rest = &self.output.stdout[stream.byte_offset()..];
        assert!(
            rest.trim().is_empty(),
            "{what}: stdout holds more than one JSON value:\n{}",
            self.output.describe()
        );
        assert!(
            value.is_object(),
            "{what}: the response is not a JSON object: {value}"
        );
        value
    }

    /// [`Invocation::json`], decoded strictly as a [`Response`].
    pub fn response(&self, what: &str) -> Response {
        let value = self.json(what);
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{what}: not a CredentialProviderResponse ({e}): {value}"))
    }

    /// Asserts the failure contract: exit status 1, nothing on stdout (the
    /// kubelet would try to decode it), and a one-line reason on stderr that
    /// starts with [`STDERR_PREFIX`] and mentions every one of `keywords`
    /// (case-insensitive). Returns stderr.
    pub fn assert_refused(&self, what: &str, keywords: &[&str]) -> &str {
        assert_eq!(
            self.output.status.code(),
            Some(1),
            "{what}: the plugin must exit 1:\n{}",
            self.output.describe()
        );
        assert!(
            self.output.stdout.is_empty(),
            "{what}: nothing may reach stdout on failure:\n{}",
            self.output.describe()
        );
        let stderr = self.output.stderr.as_str();
        assert!(
            stderr.starts_with(STDERR_PREFIX),
            "{what}: stderr must start with {STDERR_PREFIX:?}:\n{}",
            self.output.describe()
        );
        let lower = stderr.to_lowercase();
        for keyword in keywords {
            assert!(
                lower.contains(&keyword.to_lowercase()),
                "{what}: stderr should mention {keyword:?}:\n{}",
                self.output.describe()
            );
        }
        stderr
    }
}

/// The plugin as one node's kubelet runs it: a config file and an empty `HOME`.
#[derive(Debug, Clone)]
pub struct Plugin {
    config: PathBuf,
    home: PathBuf,
}

impl Plugin {
    /// A plugin reading `config` (passed as `REGAUTH_HELPER_CONFIG`, as the
    /// shipped `CredentialProviderConfig` does), with `HOME` at `home`.
    pub fn new(config: &Path, home: &Path) -> Self {
        std::fs::create_dir_all(home).expect("create plugin HOME");
        Self {
            config: config.to_owned(),
            home: home.to_owned(),
        }
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Runs `docker-credential-regauth kubelet` with `stdin`, from an empty
    /// environment plus `PATH`, `HOME` and `REGAUTH_HELPER_CONFIG` (no
    /// proxies, no `REGAUTH_LOG`), killed after [`KUBELET_EXEC_TIMEOUT`]
    /// like the kubelet does (which fails the test).
    pub fn run_raw(&self, stdin: &[u8]) -> Invocation {
        let mut cmd = Command::new(credential_helper_bin());
        cmd.arg("kubelet")
            .env_clear()
            .env("HOME", &self.home)
            .env("REGAUTH_HELPER_CONFIG", &self.config)
            .current_dir(&self.home);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        let start = Instant::now();
        let output = run_with_stdin(cmd, stdin, KUBELET_EXEC_TIMEOUT);
        Invocation {
            output,
            elapsed: start.elapsed(),
        }
    }

    /// Runs the plugin with `request`.
    pub fn run(&self, request: &Request) -> Invocation {
        let body = serde_json::to_vec(&request.to_json()).expect("serialize request");
        self.run_raw(&body)
    }

    /// Runs the plugin with `request` and returns its (strictly decoded)
    /// response; panics unless it succeeded.
    pub fn answer(&self, request: &Request, what: &str) -> Response {
        self.run(request).response(what)
    }
}

/// Removes ANSI escape sequences (the token server's text logs may be coloured).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of field `key` in a `tracing` text log line (`key=value` or
/// `key="value"`), if present.
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let needle = format!(" {key}=");
    let start = line.find(&needle)? + needle.len();
    let rest = &line[start..];
    let Some(quoted) = rest.strip_prefix('"') else {
        return Some(rest.split(' ').next().unwrap_or_default().to_owned());
    };
    let mut value = String::new();
    let mut escaped = false;
    for c in quoted.chars() {
        match (escaped, c) {
            (true, c) => {
                value.push(c);
                escaped = false;
            }
            (false, '\\') => escaped = true,
            (false, '"') => break,
            (false, c) => value.push(c),
        }
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_leave_out_empty_optional_fields() {
        let plain = Request::new("r.test/a:1").version("v1beta1").to_json();
        assert_eq!(
            plain,
            json!({"kind": REQUEST_KIND, "apiVersion": api_version("v1beta1"), "image": "r.test/a:1"})
        );
        let sa = Request::new("r.test/a:1")
            .token("t")
            .annotation("k", "v")
            .to_json();
        assert_eq!(sa["serviceAccountToken"], "t");
        assert_eq!(sa["serviceAccountAnnotations"], json!({"k": "v"}));
    }

    #[test]
    fn responses_are_decoded_strictly() {
        let good = json!({"apiVersion": api_version("v1"), "kind": RESPONSE_KIND,
            "cacheKeyType": "Registry", "cacheDuration": "1m0s",
            "auth": {"r.test": {"username": "u", "password": "p"}}});
        let resp: Response = serde_json::from_value(good.clone()).unwrap();
        assert_eq!(resp.cache_duration(), Duration::from_secs(60));
        assert_eq!(resp.credential().password, "p");
        let mut extra = good.clone();
        extra["expiresAt"] = json!("x");
        assert!(serde_json::from_value::<Response>(extra).is_err());
        let mut extra_auth = good;
        extra_auth["auth"]["r.test"]["auth"] = json!("x");
        assert!(serde_json::from_value::<Response>(extra_auth).is_err());
    }

    #[test]
    fn log_fields() {
        let line = "INFO regauth::audit: x outcome=\"exchanged\" annotations=a=b,c=d jti=1";
        assert_eq!(log_field(line, "outcome").as_deref(), Some("exchanged"));
        assert_eq!(log_field(line, "annotations").as_deref(), Some("a=b,c=d"));
        assert_eq!(log_field(line, "missing"), None);
        assert_eq!(strip_ansi("\u{1b}[3mk\u{1b}[0m\u{1b}[2m=\u{1b}[0mv"), "k=v");
    }
}
