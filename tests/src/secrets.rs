//! Random test secrets and files holding secrets.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Returns `n` cryptographically random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).expect("system random number generator");
    bytes
}

/// Returns a random lowercase hex string of `2 * n` characters.
pub fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random password, unique enough to be searched for in logs.
pub fn random_password() -> String {
    format!("pw-{}", random_hex(16))
}

/// Writes `contents` to a new file at `path` with mode 0600.
pub fn write_secret_file(path: &Path, contents: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
