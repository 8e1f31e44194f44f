//! Static accounts: inline in the config or from htpasswd files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use aws_lc_rs::hmac;

use super::password_cache::PasswordCache;
use super::{Kind, Principal};

/// Why an account definition was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The hash is neither bcrypt (`$2a$`, `$2b$`, `$2y$`) nor an argon2 PHC string.
    #[error(
        "unsupported password hash for {0:?}: use bcrypt (htpasswd -B) or argon2 (hash-password --argon2)"
    )]
    UnsupportedHash(String),
    /// Account names are limited to `[A-Za-z0-9._@-]`, 1 to 128 characters.
    #[error("invalid account name {0:?}: use letters, digits, '.', '_', '-' or '@'")]
    BadName(String),
    /// An htpasswd file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An htpasswd line is not `user:hash`.
    #[error("{path}:{line}: expected user:hash")]
    HtpasswdLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// An htpasswd entry is invalid; the inner error says why.
    #[error("{path}:{line}")]
    HtpasswdEntry {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The cause.
        #[source]
        source: Box<AccountError>,
    },
}

#[derive(Debug, Clone)]
enum PasswordHash {
    Bcrypt(String),
    Argon2(String),
}

impl PasswordHash {
    fn parse(user: &str, hash: &str) -> Result<Self, AccountError> {
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
            && bcrypt_cost(hash).is_some()
        {
            Ok(PasswordHash::Bcrypt(hash.to_owned()))
        } else if hash.starts_with("$argon2") && argon2::PasswordHash::new(hash).is_ok() {
            Ok(PasswordHash::Argon2(hash.to_owned()))
        } else {
            Err(AccountError::UnsupportedHash(user.to_owned()))
        }
    }

    fn as_str(&self) -> &str {
        match self {
            PasswordHash::Bcrypt(h) | PasswordHash::Argon2(h) => h,
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::Argon2(h) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(h).is_ok_and(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(password, &parsed)
                        .is_ok()
                })
            }
        }
    }
}

fn bcrypt_cost(hash: &str) -> Option<u32> {
    let cost: u32 = hash.get(4..6)?.parse().ok()?;
    (4..=31).contains(&cost).then_some(cost)
}

/// One account.
#[derive(Debug, Clone)]
pub struct Account {
    name: String,
    hash: PasswordHash,
    labels: BTreeMap<String, String>,
}

impl Account {
    /// Builds an account from a name, a bcrypt or argon2 hash and labels.
    pub fn new(
        name: &str,
        hash: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Self, AccountError> {
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        if !valid_name {
            return Err(AccountError::BadName(name.to_owned()));
        }
        Ok(Account {
            name: name.to_owned(),
            hash: PasswordHash::parse(name, hash)?,
            labels,
        })
    }

    /// The login name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The principal this account authenticates as.
    pub fn principal(&self) -> Principal {
        Principal {
            kind: Kind::Account,
            name: self.name.clone(),
            attributes: self.labels.clone(),
        }
    }
}

/// Parses an htpasswd file into (line number, account) pairs; only bcrypt
/// entries (`htpasswd -B`) are accepted because the other formats are too
/// weak to keep.
pub fn read_htpasswd(path: &Path) -> Result<Vec<(usize, Account)>, AccountError> {
    let text = std::fs::read_to_string(path).map_err(|source| AccountError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line.split_once(':').ok_or(AccountError::HtpasswdLine {
            path: path.to_owned(),
            line: i + 1,
        })?;
        let account =
            Account::new(user, hash, BTreeMap::new()).map_err(|e| AccountError::HtpasswdEntry {
                path: path.to_owned(),
                line: i + 1,
                source: Box::new(e),
            })?;
        out.push((i + 1, account));
    }
    Ok(out)
}

/// bcrypt cost for hashes this server writes (`hash-password`, the
/// embedded default's admin account).
pub const BCRYPT_COST: u32 = 10;

/// A bcrypt hash of a random password, checked when the user is unknown so
/// that a miss takes about as long as a wrong password.
static DUMMY_BCRYPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut pw = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut pw);
    bcrypt::hash(pw, BCRYPT_COST).unwrap_or_default()
});

/// Outcome of a password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The password is right; `pwv` fingerprints the password hash.
    Yes {
        /// The authenticated principal.
        principal: Principal,
        /// Fingerprint of the account's password hash (hex).
        pwv: String,
    },
    /// Unknown user or wrong password; the two are not told apart.
    No,
}

/// Every account, with the password cache in front of the hash checks.
pub struct Accounts {
    by_name: HashMap<String, Account>,
    fingerprint_key: hmac::Key,
    cache: PasswordCache,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("count", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// Builds the account table from accounts with distinct names (the
    /// config loader reports duplicates where they are written).
    /// `fingerprint_secret` keys the password-hash fingerprints, so they stay
    /// stable across replicas and restarts.
    pub fn new(accounts: Vec<Account>, fingerprint_secret: &[u8], cache: PasswordCache) -> Self {
        let by_name = accounts.into_iter().map(|a| (a.name.clone(), a)).collect();
        let fingerprint_key = hmac::Key::new(hmac::HMAC_SHA256, fingerprint_secret);
        Accounts {
            by_name,
            fingerprint_key,
            cache,
        }
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn fingerprint(&self, account: &Account) -> [u8; 16] {
        let tag = hmac::sign(&self.fingerprint_key, account.hash.as_str().as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }

    /// The current password-hash fingerprint of `name`, if it exists; a
    /// refresh token whose `pwv` differs was issued before a password change.
    pub fn current_pwv(&self, name: &str) -> Option<String> {
        self.by_name.get(name).map(|a| hex(&self.fingerprint(a)))
    }

    /// The account's current principal (labels may have changed since a
    /// refresh token was issued; policy sees the current ones).
    pub fn principal(&self, name: &str) -> Option<Principal> {
        self.by_name.get(name).map(Account::principal)
    }

    /// Checks a password using only the cache; `None` means the slow check is needed.
    pub fn verify_cached(&self, user: &str, password: &[u8], now: Instant) -> Option<Verified> {
        let account = self.by_name.get(user)?;
        let fp = self.fingerprint(account);
        self.cache
            .contains(user, password, &fp, now)
            .then(|| Verified::Yes {
                principal: account.principal(),
                pwv: hex(&fp),
            })
    }

    /// Checks a password against its hash (slow by design: run it off the
    /// async runtime) and remembers a success.
    pub fn verify_slow(&self, user: &str, password: &[u8], now: Instant) -> Verified {
        let Some(account) = self.by_name.get(user) else {
            let _ = bcrypt::verify(password, DUMMY_BCRYPT.as_str());
            return Verified::No;
        };
        if !account.hash.verify(password) {
            return Verified::No;
        }
        let fp = self.fingerprint(account);
        self.cache.insert(user, password, fp, now);
        Verified::Yes {
            principal: account.principal(),
            pwv: hex(&fp),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn accounts(list: Vec<Account>) -> Accounts {
        Accounts::new(
            list,
            b"k",
            PasswordCache::new(Duration::from_secs(60), b"k"),
        )
    }

    #[test]
    fn bcrypt_and_argon2_verify() {
        use argon2::PasswordHasher;
        let b = bcrypt::hash("pw1", 4).unwrap();
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let a = argon2::Argon2::default()
            .hash_password(b"pw2", &salt)
            .unwrap()
            .to_string();
        let acc = accounts(vec![
            Account::new("alice", &b, BTreeMap::new()).unwrap(),
            Account::new("bob", &a, BTreeMap::new()).unwrap(),
        ]);
        let now = Instant::now();
        assert!(matches!(
            acc.verify_slow("alice", b"pw1", now),
            Verified::Yes { .. }
        ));
        assert_eq!(acc.verify_slow("alice", b"pw2", now), Verified::No);
        assert!(matches!(
            acc.verify_slow("bob", b"pw2", now),
            Verified::Yes { .. }
        ));
        assert_eq!(acc.verify_slow("carol", b"pw1", now), Verified::No);
    }

    #[test]
    fn cache_hits_after_slow_success_only() {
        let b = bcrypt::hash("pw", 4).unwrap();
        let acc = accounts(vec![Account::new("alice", &b, BTreeMap::new()).unwrap()]);
        let now = Instant::now();
        assert_eq!(acc.verify_cached("alice", b"pw", now), None);
        assert_eq!(acc.verify_slow("alice", b"bad", now), Verified::No);
        assert_eq!(acc.verify_cached("alice", b"bad", now), None);
        acc.verify_slow("alice", b"pw", now);
        assert!(matches!(
            acc.verify_cached("alice", b"pw", now),
            Some(Verified::Yes { .. })
        ));
    }

    #[test]
    fn htpasswd_accepts_bcrypt_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        let h = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        std::fs::write(&p, format!("# comment\n\ncarol:{h}\n")).unwrap();
        let list = read_htpasswd(&p).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].0, 3, "line number");
        let acc = accounts(list.into_iter().map(|(_, a)| a).collect());
        assert!(matches!(
            acc.verify_slow("carol", b"pw", Instant::now()),
            Verified::Yes { .. }
        ));

        std::fs::write(&p, "dave:$apr1$abc$def\n").unwrap();
        let err = read_htpasswd(&p).unwrap_err();
        assert!(err.to_string().ends_with(":1"), "{err}");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("unsupported"), "{cause}");
        std::fs::write(&p, "x:y\nnocolon\n").unwrap();
        assert!(read_htpasswd(&p).is_err());
    }

    #[test]
    fn bad_names_and_hashes_are_rejected() {
        let h = bcrypt::hash("pw", 4).unwrap();
        assert!(Account::new("a b", &h, BTreeMap::new()).is_err());
        assert!(Account::new("a", "plain", BTreeMap::new()).is_err());
    }
}
