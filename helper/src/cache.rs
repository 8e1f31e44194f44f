//! The credential cache shared by every invocation on the machine (or pod).
//!
//! One directory, mode 0700, holding per key:
//! - `KEY.json`: the credential, mode 0600, replaced whole by renaming a
//!   temporary file over it, so a reader never sees half a file;
//! - `KEY.lock`: locked by the invocation that reads, exchanges and writes
//!   the key, so concurrent invocations make one exchange, not many;
//! - `tmp/KEY.PID`: a write in progress, which exists only while its
//!   writer holds the key's lock.
//!
//! That last fact is what makes cleaning up exact: a temporary file whose
//! key is not locked was left by a writer that died (`kill -9`) before its
//! rename, and it holds a live refresh token, so it is removed. Every run
//! sweeps them; they live in a directory of their own so that this costs
//! one listing of an (almost always) empty directory, however many keys
//! there are. `erase` sweeps too, and also removes the `.KEY.PID.tmp` files
//! earlier versions wrote beside the entries. A corrupt file is discarded. Entries
//! that have expired are collected, with their lock files, after each
//! exchange. A lock file is removed only while locked, and a locker checks
//! that the file it locked is still the one at the path, so two invocations
//! never both believe they hold one key.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regauth_client::{Issued, Secret};
use serde::{Deserialize, Serialize};

use crate::config::Registry;
use crate::identity::fingerprint;

/// Format version of cache files; other versions are discarded.
const VERSION: u32 = 1;

/// A credential this close to expiry is not served: a pull takes time.
pub(crate) const EXPIRY_MARGIN: u64 = 30;

/// Largest cache file read; anything bigger is corrupt.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The subdirectory of writes in progress.
const TEMP_DIR: &str = "tmp";

/// How often a waiting invocation retries the lock.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory operation failed.
    #[error("credential cache {path}")]
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
pub(crate) struct Entry {
    /// Format version.
    pub(crate) version: u32,
    /// The refresh token.
    pub(crate) refresh_token: Secret,
    /// Issued (seconds since the epoch).
    pub(crate) issued_at: u64,
    /// Expires (seconds since the epoch).
    pub(crate) expires_at: u64,
    /// For a credential obtained with a token from outside (the kubelet's):
    /// the hash of that exact token. The credential is served to it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bound_to: Option<String>,
}

impl Entry {
    /// The entry for a credential just issued, bound to `bound_to` if set.
    pub(crate) fn new(issued: Issued, bound_to: Option<String>) -> Self {
        Entry {
            version: VERSION,
            refresh_token: issued.refresh_token,
            issued_at: issued.issued_at,
            expires_at: issued.expires_at,
            bound_to,
        }
    }

    /// Fresh enough to serve without asking the server: within the first
    /// half of its lifetime.
    pub(crate) fn fresh(&self, now: u64) -> bool {
        now < self.issued_at + (self.expires_at.saturating_sub(self.issued_at)) / 2
            && self.usable(now)
    }

    /// Still usable: not expired, with a margin for the pull itself.
    pub(crate) fn usable(&self, now: u64) -> bool {
        now + EXPIRY_MARGIN < self.expires_at
    }

    fn valid(&self) -> bool {
        self.version == VERSION
            && !self.refresh_token.is_empty()
            && self.expires_at > self.issued_at
            && self
                .bound_to
                .as_ref()
                .is_none_or(|b| b.len() == 64 && b.bytes().all(|c| c.is_ascii_hexdigit()))
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

/// An exclusive lock on one cache key, released on drop (or when the
/// process dies, however it dies).
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

/// The cache file name stem for a registry entry: shared by all identities,
/// so `erase` can drop them all.
pub(crate) fn registry_stem(registry: &Registry) -> String {
    let patterns: Vec<String> = registry.patterns.iter().map(|p| p.to_string()).collect();
    let mut stem = fingerprint(&[
        &patterns.join(" "),
        &registry.token_server,
        &registry.service,
    ]);
    stem.truncate(16);
    stem
}

/// The cache key for a registry entry and an identity fingerprint.
pub(crate) fn key(registry: &Registry, identity_fingerprint: &str) -> String {
    let short: String = identity_fingerprint.chars().take(32).collect();
    format!("{}-{short}", registry_stem(registry))
}

/// What a file in the cache directory is, and its key.
#[derive(Debug, PartialEq, Eq)]
enum CacheFile<'a> {
    Entry(&'a str),
    Lock(&'a str),
    /// `.KEY.PID.tmp`, where earlier versions wrote.
    LegacyTemp(&'a str),
}

fn classify(name: &str) -> Option<CacheFile<'_>> {
    if let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
        return temp_key(inner).map(CacheFile::LegacyTemp);
    }
    if let Some(key) = name.strip_suffix(".json") {
        return Some(CacheFile::Entry(key));
    }
    name.strip_suffix(".lock").map(CacheFile::Lock)
}

/// The key of a temporary file named `KEY.PID` (keys hold no dots).
fn temp_key(name: &str) -> Option<&str> {
    name.rsplit_once('.').map(|(key, _pid)| key)
}

/// True when `file` is the file at `path` now (not one unlinked since).
fn is_current(file: &File, path: &Path) -> std::io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Cache {
    /// Opens (creating with mode 0700) the cache directory.
    pub(crate) fn open(dir: &Path) -> Result<Self, CacheError> {
        let temp = dir.join(TEMP_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&temp)
            .map_err(|source| CacheError::Io { path: temp, source })?;
        Ok(Cache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{key}.{ext}"))
    }

    fn temp_dir(&self) -> PathBuf {
        self.dir.join(TEMP_DIR)
    }

    fn temp_path(&self, key: &str) -> PathBuf {
        self.temp_dir()
            .join(format!("{key}.{}", std::process::id()))
    }

    /// Takes the lock for `key`, waiting up to `timeout` for another holder.
    pub(crate) fn lock(&self, key: &str, timeout: Duration) -> Result<Lock, CacheError> {
        let path = self.path(key, "lock");
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                        std::thread::sleep(LOCK_POLL);
                    }
                    Err(std::fs::TryLockError::WouldBlock) => {
                        return Err(CacheError::LockTimeout(path));
                    }
                    Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
                }
            }
            // The previous holder may have collected this key and unlinked
            // the lock file; then this lock guards nothing: take the new one.
            if is_current(&file, &path).map_err(io)? {
                return Ok(Lock { _file: file });
            }
        }
    }

    /// The lock for `key` if it exists and nobody holds it, without waiting.
    fn try_lock_idle(&self, key: &str) -> Option<Lock> {
        let path = self.path(key, "lock");
        let file = OpenOptions::new().write(true).open(&path).ok()?;
        file.try_lock().ok()?;
        is_current(&file, &path)
            .ok()?
            .then_some(Lock { _file: file })
    }

    /// The entry for `key`. A missing file is `None`; a corrupt one is
    /// removed and also `None`, so the caller fetches a new credential.
    pub(crate) fn read(&self, key: &str) -> Result<Option<Entry>, CacheError> {
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
            Ok(e) if e.valid() => Ok(Some(e)),
            _ => {
                tracing::warn!(file = %path.display(), "discarding a corrupt credential cache file");
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Stores `entry` under `key`, mode 0600; the caller holds the key's lock.
    ///
    /// The temporary file lives from `open` to `rename`, a few system calls
    /// with nothing slow between them. It is not synced to disk first: a
    /// cache survives a power cut by discarding a corrupt file and fetching
    /// again, and a sync would widen the window in which a killed writer
    /// leaves its temporary file (and a live credential) behind.
    pub(crate) fn write(&self, key: &str, entry: &Entry) -> Result<(), CacheError> {
        let path = self.path(key, "json");
        let tmp = self.temp_path(key);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec(entry).map_err(|e| io(std::io::Error::other(e)))?;
        // Under the lock, a temporary file of this key is a dead writer's,
        // even one that had this process's PID.
        remove_if_present(&tmp).map_err(io)?;
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&body))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    /// The names of the files in `dir` (none if it is gone).
    fn names_in(dir: &Path) -> Vec<String> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Removes the temporary file `path` of `key` if its writer is dead:
    /// `key` is `held` (the caller holds its lock), or nobody holds it.
    fn remove_if_orphaned(&self, path: &Path, key: &str, held: Option<&str>) -> bool {
        let _guard = if Some(key) == held {
            None
        } else {
            match self.try_lock_idle(key) {
                Some(lock) => Some(lock),
                // No lock file means no writer; a held lock means a live one.
                None if !self.path(key, "lock").exists() => None,
                None => return false,
            }
        };
        let removed = std::fs::remove_file(path).is_ok();
        if removed {
            tracing::debug!(file = %path.display(), "removed a temporary file a killed invocation left");
        }
        removed
    }

    /// Removes the temporary files that dead writers left: those of `held`
    /// (whose lock the caller holds), and those of every key nobody holds.
    /// Best effort: returns how many were removed.
    pub(crate) fn sweep(&self, held: Option<&str>) -> usize {
        let temp = self.temp_dir();
        Self::names_in(&temp)
            .iter()
            .filter(|name| {
                temp_key(name)
                    .is_some_and(|key| self.remove_if_orphaned(&temp.join(name), key, held))
            })
            .count()
    }

    /// Removes the `.KEY.PID.tmp` files of earlier versions, as [`Cache::sweep`] does.
    fn sweep_legacy(&self, names: &[String], held: Option<&str>) {
        for name in names {
            if let Some(CacheFile::LegacyTemp(key)) = classify(name) {
                self.remove_if_orphaned(&self.dir.join(name), key, held);
            }
        }
    }

    /// Removes entries that expired before `now`, and lock files without an
    /// entry, of every key but `held` that nobody holds. Best effort.
    pub(crate) fn collect_garbage(&self, held: &str, now: u64) {
        let names = Self::names_in(&self.dir);
        self.sweep_legacy(&names, Some(held));
        let mut keys: Vec<&str> = names
            .iter()
            .filter_map(|n| match classify(n) {
                Some(CacheFile::Entry(k) | CacheFile::Lock(k)) if k != held => Some(k),
                _ => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let Some(lock) = self.try_lock_idle(key) else {
                continue;
            };
            let expired = match self.read(key) {
                Ok(Some(entry)) => entry.expires_at <= now,
                Ok(None) => true,
                Err(_) => false,
            };
            if expired {
                let _ = remove_if_present(&self.path(key, "json"));
                // Unlinked while held: a waiter notices and takes a new one.
                let _ = remove_if_present(&self.path(key, "lock"));
            }
            drop(lock);
        }
    }

    /// Removes every cached credential of a registry entry, and the
    /// temporary files dead writers left. Returns how many credentials.
    pub(crate) fn erase(&self, stem: &str) -> Result<usize, CacheError> {
        self.sweep(None);
        let names = Self::names_in(&self.dir);
        self.sweep_legacy(&names, None);
        let prefix = format!("{stem}-");
        let mut removed = 0;
        for name in names {
            if let Some(CacheFile::Entry(key)) = classify(&name)
                && key.starts_with(&prefix)
            {
                let path = self.dir.join(&name);
                remove_if_present(&path).map_err(|source| CacheError::Io { path, source })?;
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

    fn issued(token: &str, issued_at: u64, expires_at: u64) -> Issued {
        Issued {
            refresh_token: Secret::from(token),
            issued_at,
            expires_at,
        }
    }

    fn entry(token: &str, issued_at: u64, expires_at: u64) -> Entry {
        Entry::new(issued(token, issued_at, expires_at), None)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

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
        let e = entry("tok", 1000, 4600);
        cache.write("k", &e).unwrap();
        assert_eq!(cache.read("k").unwrap(), Some(e));
        let file = dir.path().join("c/k.json");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            r#"{"version":1,"refresh_token":"tok","issued_at":1000,"expires_at":4600}"#,
            "an unbound entry keeps the original format"
        );
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for garbage in [
            "",
            "{",
            "null",
            r#"{"version":9,"refresh_token":"t","issued_at":1,"expires_at":2}"#,
            r#"{"version":1,"refresh_token":"t","issued_at":1,"expires_at":2,"bound_to":"zz"}"#,
        ] {
            std::fs::write(&file, garbage).unwrap();
            assert_eq!(cache.read("k").unwrap(), None, "{garbage:?}");
            assert!(!file.exists(), "corrupt file is removed");
        }
        std::fs::write(&file, vec![0xff; 100]).unwrap();
        assert_eq!(cache.read("k").unwrap(), None);
    }

    #[test]
    fn bound_entries_round_trip_and_never_show_their_token() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let bound = Entry::new(issued("s3cret-token", 1, 5000), Some("a".repeat(64)));
        cache.write("k", &bound).unwrap();
        assert_eq!(cache.read("k").unwrap(), Some(bound.clone()));
        assert!(!format!("{bound:?}").contains("s3cret-token"));
    }

    #[test]
    fn freshness_and_usability() {
        let e = entry("t", 1000, 4600);
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

    /// A waiter that locked a lock file another holder unlinked must not
    /// think it holds the key: it takes the file now at the path.
    #[test]
    fn a_lock_on_an_unlinked_file_is_not_the_key_lock() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let stale = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache.path("k", "lock"))
            .unwrap();
        std::fs::remove_file(cache.path("k", "lock")).unwrap();
        stale.try_lock().unwrap();
        assert!(!is_current(&stale, &cache.path("k", "lock")).unwrap());
        let lock = cache.lock("k", Duration::from_millis(200)).unwrap();
        assert!(cache.path("k", "lock").exists());
        assert!(cache.try_lock_idle("k").is_none(), "the new file is held");
        drop(lock);
    }

    #[test]
    fn file_names_are_classified() {
        assert_eq!(classify("ab-cd.json"), Some(CacheFile::Entry("ab-cd")));
        assert_eq!(classify("ab-cd.lock"), Some(CacheFile::Lock("ab-cd")));
        assert_eq!(
            classify(".ab-cd.4242.tmp"),
            Some(CacheFile::LegacyTemp("ab-cd"))
        );
        assert_eq!(temp_key("ab-cd.4242"), Some("ab-cd"));
        assert_eq!(classify(".tmp"), None);
        assert_eq!(classify("notes.txt"), None);
    }

    #[test]
    fn sweep_removes_dead_writers_files_and_spares_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let orphan = |key: &str, pid: u32| {
            let p = dir.path().join(format!("tmp/{key}.{pid}"));
            std::fs::write(&p, "{\"refresh_token\":\"live\"}").unwrap();
            p
        };
        // Key `a`: its writer died (lock file present, nobody holds it).
        drop(cache.lock("a", Duration::from_secs(1)).unwrap());
        let dead = orphan("a", 1);
        // Key `b`: no lock file at all.
        let no_lock = orphan("b", 2);
        // Key `c`: a live writer holds the lock.
        let live_lock = cache.lock("c", Duration::from_secs(1)).unwrap();
        let live = orphan("c", 3);
        // Key `d`: held by the sweeper itself.
        let own_lock = cache.lock("d", Duration::from_secs(1)).unwrap();
        let own = orphan("d", 4);

        assert_eq!(cache.sweep(Some("d")), 3);
        assert!(!dead.exists() && !no_lock.exists() && !own.exists());
        assert!(live.exists(), "a live writer's file stays");
        drop((live_lock, own_lock));
        let legacy = dir.path().join(".e.5.tmp");
        std::fs::write(&legacy, "{}").unwrap();
        assert_eq!(cache.erase("zzzz").unwrap(), 0);
        assert!(!live.exists(), "erase sweeps too, once the writer is gone");
        assert!(!legacy.exists(), "and removes what earlier versions left");
    }

    #[test]
    fn a_write_replaces_a_leftover_file_of_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        std::fs::write(cache.temp_path("k"), "left by a dead writer with our PID").unwrap();
        cache.write("k", &entry("t", 1, 5000)).unwrap();
        assert_eq!(names(dir.path()), ["k.json", "tmp"]);
        assert!(names(&dir.path().join("tmp")).is_empty());
    }

    #[test]
    fn garbage_collection_drops_expired_and_idle_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let now = 10_000;
        for (key, expires_at) in [("old", now - 1), ("live", now + 3600), ("mine", now - 1)] {
            let _lock = cache.lock(key, Duration::from_secs(1)).unwrap();
            cache.write(key, &entry("t", 1, expires_at)).unwrap();
        }
        drop(cache.lock("orphan-lock", Duration::from_secs(1)).unwrap());
        let busy = cache.lock("busy", Duration::from_secs(1)).unwrap();
        cache.write("busy", &entry("t", 1, now - 1)).unwrap();

        cache.collect_garbage("mine", now);
        assert_eq!(
            names(dir.path()),
            [
                "busy.json",
                "busy.lock",
                "live.json",
                "live.lock",
                "mine.json",
                "mine.lock",
                "tmp"
            ]
        );
        drop(busy);
    }

    #[test]
    fn erase_removes_one_registry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let e = entry("t", 1, 2);
        cache.write("aaaa-1", &e).unwrap();
        cache.write("aaaa-2", &e).unwrap();
        cache.write("bbbb-1", &e).unwrap();
        assert_eq!(cache.erase("aaaa").unwrap(), 2);
        assert!(cache.read("bbbb-1").unwrap().is_some());
    }
}
