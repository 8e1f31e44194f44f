//! `signing_keys` and `refresh_secret_file`: the key material.

use super::MIN_SECRET_BYTES;
use super::check::Check;
use super::file::ConfigFile;
use crate::keys::{KeySet, SigningKey};

/// Loads every signing key; `None` when there is none usable.
pub(super) fn signing_keys(file: &ConfigFile, c: &mut Check) -> Option<KeySet> {
    if file.signing_keys.value.is_empty() {
        c.fail(
            "signing_keys",
            &file.signing_keys,
            "list at least one key (regauth-token-server keys generate)",
        );
    }
    let mut keys = Vec::new();
    for (i, k) in file.signing_keys.value.iter().enumerate() {
        match SigningKey::load(
            &c.path(&k.key.value),
            &c.path(&k.cert.value),
            file.embed_x5c,
        ) {
            Ok(key) => keys.push(key),
            Err(e) => c.fail_with(format!("signing_keys[{i}]"), &k.key, &e),
        }
    }
    KeySet::new(keys)
}

/// The refresh-token MAC secret.
pub(super) fn refresh_secret(file: &ConfigFile, c: &mut Check) -> Option<Vec<u8>> {
    let at = &file.refresh_secret_file;
    match std::fs::read(c.path(&at.value)) {
        Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => Some(bytes),
        Ok(_) => {
            c.fail(
                "refresh_secret_file",
                at,
                format!(
                    "holds fewer than {MIN_SECRET_BYTES} bytes; create one with `regauth-token-server keys secret --out FILE`"
                ),
            );
            None
        }
        Err(e) => {
            c.fail_with("refresh_secret_file", at, &e);
            None
        }
    }
}
