//! Entry points for the fuzz targets in `fuzz/`: each runs the parsers that
//! one kind of untrusted input reaches, as the binary would, and throws the
//! result away. Nothing here reads a file, the network or the clock. Not a
//! stable API.

use std::path::Path;
use std::sync::OnceLock;

use crate::config::{self, Config};
use crate::credential;
use crate::identity;
use crate::kubelet;
use crate::matcher::Target;
use crate::protocol;

/// A fixed time for token checks: 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;

/// A config with every pattern shape (plain host, glob with port, path),
/// so server URLs and images are matched as the helper matches them.
const CONFIG: &str = r#"
registries:
  - match: ["registry.example.com", "127.0.0.1:5000"]
    token_server: https://auth.example.com:5001
    service: registry.example.com
    identity: {kind: kubernetes, token_file: token}
    forward_annotations: [regauth.io/purpose]
  - match: ["*.mirror.example.com:5000"]
    token_server: https://auth.example.com:5001
    service: registry.example.com
    output: password
    identity: {kind: client_certificate, cert: c.pem, key: k.pem}
  - match: ["legacy.example.com/team"]
    token_server: https://auth.example.com:5001
    service: registry.example.com
    identity: {kind: account, username: alice, password_file: pw}
cache_dir: /nonexistent/regauth-fuzz
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn config() -> Option<&'static Config> {
    static CONFIG_CELL: OnceLock<Option<Config>> = OnceLock::new();
    CONFIG_CELL
        .get_or_init(|| config::parse(CONFIG, Path::new("fuzz.yaml"), &no_env).ok())
        .as_ref()
}

/// The stdin of `get` and `erase`: a server URL, bounded and UTF-8 checked,
/// then matched against the registry entries.
pub fn server_url(input: &[u8]) {
    let Ok(text) = protocol::read_input(input) else {
        return;
    };
    let Some(config) = config() else {
        return;
    };
    let _ = credential::registry_for(config, text.trim());
}

/// The stdin of `store`: `{"ServerURL","Username","Secret"}`, then its URL
/// as `get` would read it.
pub fn store(input: &[u8]) {
    let Ok(text) = protocol::read_input(input) else {
        return;
    };
    if let Ok(url) = protocol::parse_store(&text) {
        let _ = Target::parse(&url);
    }
}

/// The stdin of `kubelet`: a `CredentialProviderRequest` (v1, v1beta1,
/// v1alpha1), its image matched against the registry entries, and its
/// service-account token's claims read, without any exchange.
pub fn kubelet_request(input: &[u8]) {
    let Ok(text) = protocol::read_input(input) else {
        return;
    };
    let Ok(request) = kubelet::parse(&text) else {
        return;
    };
    if let (Some(config), Some(target)) = (config(), Target::parse(&request.image)) {
        let _ = config.registry_for(&target);
    }
    if let Some(token) = &request.service_account_token {
        let _ = identity::service_account_token(token, NOW);
    }
}

/// `helper.yaml`, with its registry patterns.
pub fn helper_config(text: &str) {
    let _ = config::parse(
        text,
        Path::new("/nonexistent/regauth-fuzz/helper.yaml"),
        &no_env,
    );
}
