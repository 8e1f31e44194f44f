//! `signing_keys` and `refresh_secrets` (or `refresh_secret_file`): the key
//! material.

use super::check::Check;
use super::file::{ConfigFile, S};
use super::{ConfigIssue, MIN_SECRET_BYTES};
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

/// The refresh-token MAC secrets, the signing one first: from
/// `refresh_secrets`, or the one `refresh_secret_file`. Exactly one of the
/// two keys is set. `None` when no secret is usable.
pub(super) fn refresh_secrets(file: &ConfigFile, c: &mut Check) -> Option<Vec<Vec<u8>>> {
    match (&file.refresh_secret_file, &file.refresh_secrets) {
        (Some(one), None) => refresh_secret("refresh_secret_file".into(), one, c).map(|s| vec![s]),
        (None, Some(list)) => {
            if list.value.is_empty() {
                c.fail(
                    "refresh_secrets",
                    list,
                    "list at least one secret file (regauth-token-server keys secret --out FILE)",
                );
                return None;
            }
            // Each secret with its index in the list, for the duplicate message.
            let mut secrets: Vec<(usize, Vec<u8>)> = Vec::new();
            let mut usable = true;
            for (i, at) in list.value.iter().enumerate() {
                let key = format!("refresh_secrets[{i}]");
                match refresh_secret(key.clone(), at, c) {
                    Some(s) => {
                        if let Some((first, _)) = secrets.iter().find(|(_, t)| *t == s) {
                            c.fail(
                                key,
                                at,
                                format!("holds the same secret as refresh_secrets[{first}]"),
                            );
                        }
                        secrets.push((i, s));
                    }
                    None => usable = false,
                }
            }
            usable.then(|| secrets.into_iter().map(|(_, s)| s).collect())
        }
        (Some(_), Some(list)) => {
            c.fail(
                "refresh_secrets",
                list,
                "set refresh_secrets or refresh_secret_file, not both (a single file is refresh_secrets: [FILE])",
            );
            None
        }
        (None, None) => {
            // No line of the file is to blame: the key is missing.
            c.issues.push(ConfigIssue {
                key: "refresh_secrets".into(),
                line: 0,
                message: "missing: set refresh_secrets (a list of files) or refresh_secret_file; \
                          create one with `regauth-token-server keys secret --out FILE`"
                    .into(),
            });
            None
        }
    }
}

/// One refresh-token MAC secret file, at least [`MIN_SECRET_BYTES`] long.
fn refresh_secret(key: String, at: &S<String>, c: &mut Check) -> Option<Vec<u8>> {
    match std::fs::read(c.path(&at.value)) {
        Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => Some(bytes),
        Ok(_) => {
            c.fail(
                key,
                at,
                format!(
                    "holds fewer than {MIN_SECRET_BYTES} bytes; create one with `regauth-token-server keys secret --out FILE`"
                ),
            );
            None
        }
        Err(e) => {
            c.fail_with(key, at, &e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{ConfigError, load_str};
    use crate::token::refresh::secret_kid;

    /// A directory with a signing key (`k`, `c`) and secrets `a` (32 ones),
    /// `b` (32 twos), `a-copy` (`a` again) and `short` (16 bytes).
    fn dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let g =
            crate::keys::generate(crate::keys::Algorithm::Es256, "t", crate::clock::now()).unwrap();
        std::fs::write(dir.path().join("k"), g.key_pem).unwrap();
        std::fs::write(dir.path().join("c"), g.cert_pem).unwrap();
        std::fs::write(dir.path().join("a"), [1u8; 32]).unwrap();
        std::fs::write(dir.path().join("a-copy"), [1u8; 32]).unwrap();
        std::fs::write(dir.path().join("b"), [2u8; 32]).unwrap();
        std::fs::write(dir.path().join("short"), [3u8; 16]).unwrap();
        dir
    }

    const HEAD: &str = "issuer: x\nservices: [y]\nsigning_keys: [{key: k, cert: c}]\n";

    fn issues(dir: &Path, secrets: &str) -> Vec<(String, usize, String)> {
        match load_str(&format!("{HEAD}{secrets}"), dir, Path::new("c.yaml")) {
            Err(ConfigError::Invalid { issues, .. }) => issues
                .into_iter()
                .map(|i| (i.key, i.line, i.message))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_first_refresh_secret_signs_and_all_verify() {
        let d = dir();
        let s = load_str(
            &format!("{HEAD}refresh_secrets:\n  - b\n  - a\n"),
            d.path(),
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(
            s.refresh.kids(),
            [secret_kid(&[2; 32]), secret_kid(&[1; 32])]
        );
        let s = load_str(
            &format!("{HEAD}refresh_secret_file: a\n"),
            d.path(),
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(s.refresh.kids(), [secret_kid(&[1; 32])]);
    }

    #[test]
    fn exactly_one_of_the_two_secret_keys_is_set() {
        let d = dir();
        let both = issues(d.path(), "refresh_secret_file: a\nrefresh_secrets: [b]\n");
        assert_eq!(both.len(), 1, "{both:?}");
        assert_eq!((both[0].0.as_str(), both[0].1), ("refresh_secrets", 5));
        assert!(both[0].2.contains("not both"), "{}", both[0].2);

        let neither = issues(d.path(), "");
        assert_eq!(neither.len(), 1, "{neither:?}");
        assert_eq!(neither[0].0, "refresh_secrets");
        assert!(
            neither[0].2.contains("refresh_secret_file"),
            "{}",
            neither[0].2
        );

        let empty = issues(d.path(), "refresh_secrets: []\n");
        assert_eq!((empty[0].0.as_str(), empty[0].1), ("refresh_secrets", 4));
    }

    #[test]
    fn each_bad_refresh_secret_is_named_with_its_line() {
        let d = dir();
        let found = issues(
            d.path(),
            "refresh_secrets:\n  - b\n  - short\n  - missing\n  - a\n  - a-copy\n",
        );
        let keys: Vec<(&str, usize)> = found.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
        assert_eq!(
            keys,
            [
                ("refresh_secrets[1]", 6),
                ("refresh_secrets[2]", 7),
                ("refresh_secrets[4]", 9),
            ],
            "{found:?}"
        );
        assert!(found[0].2.contains("fewer than 32 bytes"), "{}", found[0].2);
        assert!(
            found[2].2.contains("same secret as refresh_secrets[3]"),
            "{}",
            found[2].2
        );
        let one = issues(d.path(), "refresh_secret_file: short\n");
        assert_eq!((one[0].0.as_str(), one[0].1), ("refresh_secret_file", 4));
    }
}
