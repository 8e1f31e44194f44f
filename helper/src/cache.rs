//! The credential cache shared by every invocation on the machine (or pod).
//!
//! One file per (registry entry, identity), mode 0600, written to a temporary
//! file and renamed into place, so a reader never sees half a file. A lock
//! file per key makes concurrent invocations wait for the one that is
//! exchanging, instead of each exchanging. A corrupt file is discarded.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Registry;
use crate::identity::fingerprint;

/// Format version of cache files; other versions are discarded.
const VERSION: u32 = 1;

/// A credential this close to expiry is not served: a pull takes time.
pub const EXPIRY_MARGIN: u64 = 30;

/// Largest cache file read; anything bigger is corrupt.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory operation failed.
    #[error("credential cache {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another invocation held the lock for too long.
    #[error("credential cache {0}: timed out waiting for another invocation's exchange")]
    LockTimeout(PathBuf),
}

/// A cached credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version.
    pub version: u32,
    /// The refresh token.
    pub refresh_token: String,
    /// Issued (seconds since the epoch).
    pub issued_at: u64,
    /// Expires (seconds since the epoch).
    pub expires_at: u64,
}

impl Entry {
    /// A new entry.
    pub fn new(refresh_token: String, issued_at: u64, expires_at: u64) -> Self {
        Entry {
            version: VERSION,
            refresh_token,
            issued_at,
            expires_at,
        }
    }

    /// Fresh enough to serve without asking the server: within the first
    /// half of its lifetime.
    pub fn fresh(&self, now: u64) -> bool {
        now < self.issued_at + (self.expires_at.saturating_sub(self.issued_at)) / 2
            && self.usable(now)
    }

    /// Still usable: not expired, with a margin for the pull itself.
    pub fn usable(&self, now: u64) -> bool {
        now + EXPIRY_MARGIN < self.expires_at
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// An exclusive lock on one cache key, released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// The cache file name stem for a registry entry: shared by all identities,
/// so `erase` can drop them all.
pub fn registry_stem(registry: &Registry) -> String {
    let patterns: Vec<String> = registry.patterns.iter().map(|p| p.to_string()).collect();
    fingerprint(&[
        &patterns.join(" "),
        &registry.token_server,
        &registry.service,
    ])[..16]
        .to_owned()
}

/// The cache key for a registry entry and an identity fingerprint.
pub fn key(registry: &Registry, identity_fingerprint: &str) -> String {
    format!(
        "{}-{}",
        registry_stem(registry),
        &identity_fingerprint[..32.min(identity_fingerprint.len())]
    )
}

impl Cache {
    /// Opens (creating with mode 0700) the cache directory.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CacheError::Io {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Cache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{key}.{ext}"))
    }

    /// Takes the lock for `key`, waiting up to `timeout` for another holder.
    pub fn lock(&self, key: &str, timeout: Duration) -> Result<Lock, CacheError> {
        let path = self.path(key, "lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| CacheError::Io {
                path: path.clone(),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(CacheError::LockTimeout(path));
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(CacheError::Io { path, source });
                }
            }
        }
    }

    /// The entry for `key`. A missing file is `None`; a corrupt one is
    /// removed and also `None`, so the caller fetches a new credential.
    pub fn read(&self, key: &str) -> Result<Option<Entry>, CacheError> {
        let path = self.path(key, "json");
        let mut text = String::new();
        match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
            Ok(f) => {
                if f.take(MAX_FILE_BYTES).read_to_string(&mut text).is_err() {
                    text.clear();
                }
            }
        }
        match serde_json::from_str::<Entry>(&text) {
            Ok(e)
                if e.version == VERSION
                    && !e.refresh_token.is_empty()
                    && e.expires_at > e.issued_at =>
            {
                Ok(Some(e))
            }
            _ => {
                tracing::warn!(file = %path.display(), "discarding a corrupt credential cache file");
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Stores `entry` atomically with mode 0600.
    pub fn write(&self, key: &str, entry: &Entry) -> Result<(), CacheError> {
        let path = self.path(key, "json");
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec(entry).map_err(|e| io(std::io::Error::other(e)))?;
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    /// Removes every cached credential of a registry entry.
    pub fn erase(&self, stem: &str) -> Result<usize, CacheError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(CacheError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{stem}-")) && name.ends_with(".json") {
                std::fs::remove_file(e.path()).map_err(|source| CacheError::Io {
                    path: e.path(),
                    source,
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_read_mode_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c")).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("c"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(cache.read("k").unwrap(), None);
        let e = Entry::new("tok".into(), 1000, 4600);
        cache.write("k", &e).unwrap();
        assert_eq!(cache.read("k").unwrap(), Some(e));
        let file = dir.path().join("c/k.json");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for garbage in [
            "",
            "{",
            "null",
            r#"{"version":9,"refresh_token":"t","issued_at":1,"expires_at":2}"#,
        ] {
            std::fs::write(&file, garbage).unwrap();
            assert_eq!(cache.read("k").unwrap(), None, "{garbage:?}");
            assert!(!file.exists(), "corrupt file is removed");
        }
        std::fs::write(&file, vec![0xff; 100]).unwrap();
        assert_eq!(cache.read("k").unwrap(), None);
    }

    #[test]
    fn freshness_and_usability() {
        let e = Entry::new("t".into(), 1000, 4600);
        assert!(e.fresh(1000) && e.fresh(2799));
        assert!(!e.fresh(2800), "refresh after half the lifetime");
        assert!(e.usable(4500));
        assert!(!e.usable(4571), "never serve what expires mid-pull");
        assert!(!e.usable(5000));
    }

    #[test]
    fn lock_excludes_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let held = cache.lock("k", Duration::from_secs(1)).unwrap();
        assert!(matches!(
            cache.lock("k", Duration::from_millis(100)),
            Err(CacheError::LockTimeout(_))
        ));
        assert!(cache.lock("other", Duration::from_millis(100)).is_ok());
        drop(held);
        assert!(cache.lock("k", Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn erase_removes_one_registry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let e = Entry::new("t".into(), 1, 2);
        cache.write("aaaa-1", &e).unwrap();
        cache.write("aaaa-2", &e).unwrap();
        cache.write("bbbb-1", &e).unwrap();
        assert_eq!(cache.erase("aaaa").unwrap(), 2);
        assert!(cache.read("bbbb-1").unwrap().is_some());
    }
}
