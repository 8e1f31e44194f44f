//! The embedded default setup: a data directory that `serve` fills on first
//! start (signing key, certificate, refresh secret, admin account) so the
//! server runs with no config at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::identity::account::BCRYPT_COST;
use crate::keys::{self, Algorithm};
use crate::secret::{RandomError, random};

/// The embedded config; its paths are relative to the data directory.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");

/// Name of the single default account.
pub const ADMIN: &str = "admin";

/// Why the data directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    /// No `--data-dir`, `REGAUTH_DATA_DIR`, `XDG_DATA_HOME` or `HOME`.
    #[error("cannot choose a data directory: set --data-dir or REGAUTH_DATA_DIR")]
    NoDataDir,
    /// A file could not be created.
    #[error("cannot create {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Key generation failed.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Hashing the admin password failed.
    #[error("hashing the admin password failed")]
    Hash(#[source] bcrypt::BcryptError),
    /// No random bytes for the refresh secret or the admin password.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// The data directory: the explicit one, else `$XDG_DATA_HOME/regauth`,
/// else `$HOME/.local/share/regauth`.
pub fn data_dir(explicit: Option<PathBuf>) -> Result<PathBuf, DefaultsError> {
    if let Some(d) = explicit {
        return Ok(d);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("regauth"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".local/share/regauth"))
        .ok_or(DefaultsError::NoDataDir)
}

/// What [`prepare`] did that the operator must hear about.
#[derive(Debug, Default)]
pub struct Prepared {
    /// A newly generated admin password, to print exactly once.
    pub generated_admin_password: Option<String>,
    /// True if a new signing key was created.
    pub created_key: bool,
}

/// Creates whatever is missing in `dir`. With `admin_password`, the admin
/// account's password is (re)set to it; without, one is generated the first
/// time and only its hash is kept.
pub fn prepare(
    dir: &Path,
    admin_password: Option<&str>,
    now: SystemTime,
) -> Result<Prepared, DefaultsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DefaultsError::Io { path, source }
    };
    create_private_dir(dir).map_err(io(dir))?;
    let mut prepared = Prepared::default();

    let (key, cert) = (dir.join("signing.key"), dir.join("signing.crt"));
    if !key.exists() {
        let g = keys::generate(Algorithm::Es256, "regauth token signing", now)?;
        write_private(&cert, g.cert_pem.as_bytes()).map_err(io(&cert))?;
        write_private(&key, g.key_pem.as_bytes()).map_err(io(&key))?;
        prepared.created_key = true;
    }

    let secret = dir.join("refresh.secret");
    if !secret.exists() {
        write_private(&secret, &random::<32>()?).map_err(io(&secret))?;
    }

    let htpasswd = dir.join("htpasswd");
    let password = match admin_password {
        Some(p) => Some(p.to_owned()),
        None if !htpasswd.exists() => {
            let p = random_password()?;
            prepared.generated_admin_password = Some(p.clone());
            Some(p)
        }
        None => None,
    };
    if let Some(p) = password {
        let hash = bcrypt::hash(p, BCRYPT_COST).map_err(DefaultsError::Hash)?;
        write_private(&htpasswd, format!("{ADMIN}:{hash}\n").as_bytes()).map_err(io(&htpasswd))?;
    }
    Ok(prepared)
}

/// 24 characters from a 62-letter alphabet: about 143 bits.
fn random_password() -> Result<String, RandomError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        let b = random::<32>()?;
        // Rejection sampling keeps the distribution uniform.
        out.extend(
            b.iter()
                .filter(|&&x| x < 248)
                .map(|&x| ALPHABET[(x % 62) as usize] as char)
                .take(24 - out.len()),
        );
    }
    Ok(out)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` with mode 0600, via a temporary file renamed into
/// place, so a crash never leaves a half-written key.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_creates_private_files_and_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = prepare(&data, None, crate::clock::now()).unwrap();
        let password = first
            .generated_admin_password
            .expect("a password on first start");
        assert_eq!(password.len(), 24);
        assert!(first.created_key);
        for f in ["signing.key", "signing.crt", "refresh.secret", "htpasswd"] {
            let mode = std::fs::metadata(data.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let key_before = std::fs::read(data.join("signing.key")).unwrap();
        let second = prepare(&data, None, crate::clock::now()).unwrap();
        assert!(second.generated_admin_password.is_none());
        assert!(!second.created_key);
        assert_eq!(std::fs::read(data.join("signing.key")).unwrap(), key_before);

        let settings =
            crate::config::load_str(DEFAULT_CONFIG, &data, Path::new("embedded")).unwrap();
        assert_eq!(settings.accounts.len(), 1);
        assert!(matches!(
            settings
                .accounts
                .verify_slow(ADMIN, password.as_bytes(), std::time::Instant::now()),
            crate::identity::account::Verified::Yes { .. }
        ));
    }

    #[test]
    fn password_from_environment_replaces_the_generated_one() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), None, crate::clock::now()).unwrap();
        let p = prepare(dir.path(), Some("from-env"), crate::clock::now()).unwrap();
        assert!(p.generated_admin_password.is_none());
        let settings =
            crate::config::load_str(DEFAULT_CONFIG, dir.path(), Path::new("embedded")).unwrap();
        assert!(matches!(
            settings
                .accounts
                .verify_slow(ADMIN, b"from-env", std::time::Instant::now()),
            crate::identity::account::Verified::Yes { .. }
        ));
    }
}
