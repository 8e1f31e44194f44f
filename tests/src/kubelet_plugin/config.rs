//! The helper config a node ships for the kubelet plugin. It is the same
//! `helper.yaml` the credential helper reads, so the same writer serves both.

use std::path::{Path, PathBuf};

use crate::credential_helper::config::HelperConfig;
pub use crate::credential_helper::config::{Identity as NodeIdentity, RegistryEntry as Entry};

/// Writes `dir/helper.yaml` with `entries` (first match wins) and a cache in
/// `dir/cache`; returns the config's path.
pub fn write_config(dir: &Path, entries: &[Entry]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create plugin config dir");
    let path = dir.join("helper.yaml");
    let config = entries
        .iter()
        .cloned()
        .fold(HelperConfig::new(), HelperConfig::registry)
        .cache_dir(&dir.join("cache"));
    config.write(&path);
    path
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
        let dir = tempfile::tempdir().unwrap();
        let yaml = std::fs::read_to_string(write_config(dir.path(), &[entry])).unwrap();
        for line in [
            "  - match: [\"r.test:5000\", \"r.test:5000/team\"]",
            "      kind: client_certificate",
            "    ca_file: \"/ca.pem\"",
            "    timeout: \"2s\"",
            "    username: \"node\"",
            "    forward_annotations: [\"regauth.io/purpose\"]",
        ] {
            assert!(
                yaml.lines().any(|l| l == line),
                "missing {line:?} in:\n{yaml}"
            );
        }
    }
}
