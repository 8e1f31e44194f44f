//! Static accounts: inline in the config or from htpasswd files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use aws_lc_rs::hmac;

use super::password_cache::PasswordCache;
use super::{Kind, Principal};
use crate::secret::{RandomError, constant_time_eq, random};

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
    /// The stand-in hash that unknown names are checked against could not
    /// be made.
    #[error("cannot prepare the stand-in hash for unknown account names")]
    StandIn(#[source] StandInError),
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

/// Why a stand-in hash could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    /// bcrypt refused.
    #[error(transparent)]
    Bcrypt(#[from] bcrypt::BcryptError),
    /// argon2 refused the parameters of a configured hash.
    #[error("argon2: {0}")]
    Argon2(argon2::password_hash::Error),
    /// No random bytes.
    #[error(transparent)]
    Random(#[from] RandomError),
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

    /// What decides how long a check takes: the scheme and its parameters.
    fn cost_class(&self) -> String {
        match self {
            PasswordHash::Bcrypt(h) => format!("bcrypt:{}", bcrypt_cost(h).unwrap_or(0)),
            PasswordHash::Argon2(h) => match argon2::PasswordHash::new(h) {
                Ok(p) => format!(
                    "{}:{}:{}",
                    p.algorithm,
                    p.version.unwrap_or_default(),
                    p.params
                ),
                Err(_) => "argon2".to_owned(),
            },
        }
    }

    /// A hash of a random password with the same scheme and parameters, so
    /// checking against it costs what checking against this one does.
    fn stand_in(&self) -> Result<PasswordHash, StandInError> {
        let password = random::<16>()?;
        match self {
            PasswordHash::Bcrypt(h) => bcrypt_stand_in(bcrypt_cost(h).unwrap_or(BCRYPT_COST)),
            PasswordHash::Argon2(h) => {
                use argon2::PasswordHasher;
                let e = StandInError::Argon2;
                let parsed = argon2::PasswordHash::new(h).map_err(e)?;
                let algorithm = argon2::Algorithm::try_from(parsed.algorithm).map_err(e)?;
                let version = match parsed.version {
                    Some(v) => {
                        argon2::Version::try_from(v).map_err(|v| StandInError::Argon2(v.into()))?
                    }
                    None => argon2::Version::default(),
                };
                let params = argon2::Params::try_from(&parsed).map_err(e)?;
                let salt =
                    argon2::password_hash::SaltString::encode_b64(&random::<16>()?).map_err(e)?;
                let hash = argon2::Argon2::new(algorithm, version, params)
                    .hash_password(&password, &salt)
                    .map_err(e)?;
                Ok(PasswordHash::Argon2(hash.to_string()))
            }
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

/// A bcrypt hash of a random password at `cost`.
fn bcrypt_stand_in(cost: u32) -> Result<PasswordHash, StandInError> {
    Ok(PasswordHash::Bcrypt(bcrypt::hash(random::<16>()?, cost)?))
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
/// embedded default's admin account), and of the stand-in hash when no
/// account is configured.
pub const BCRYPT_COST: u32 = 10;

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

/// An account and its password-hash fingerprint, computed once at load:
/// every cached password check and refresh needs it.
struct Known {
    account: Account,
    fingerprint: [u8; 16],
    /// `fingerprint` in hex, the refresh tokens' `pwv`.
    pwv: String,
}

/// Every account, with the password cache in front of the hash checks.
pub struct Accounts {
    by_name: HashMap<String, Known>,
    fingerprint_key: hmac::Key,
    /// Keys of refresh secrets that no longer sign but still verify: a
    /// refresh token carries the fingerprint its signing secret keyed.
    verify_only_fingerprint_keys: Vec<hmac::Key>,
    cache: PasswordCache,
    /// One stand-in hash per cost class, and for each account (sorted by
    /// name) the index of its class: an unknown name is checked against the
    /// class of the account its keyed hash picks, so unknown names cost what
    /// real ones do, in the same proportions.
    stand_ins: Vec<PasswordHash>,
    class_of: Vec<usize>,
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
    pub fn new(
        accounts: Vec<Account>,
        fingerprint_secret: &[u8],
        cache: PasswordCache,
    ) -> Result<Self, AccountError> {
        let mut sorted: Vec<&Account> = accounts.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut classes: Vec<String> = Vec::new();
        let mut stand_ins = Vec::new();
        let mut class_of = Vec::with_capacity(sorted.len());
        for a in &sorted {
            let class = a.hash.cost_class();
            let index = match classes.iter().position(|c| *c == class) {
                Some(i) => i,
                None => {
                    stand_ins.push(a.hash.stand_in().map_err(AccountError::StandIn)?);
                    classes.push(class);
                    classes.len() - 1
                }
            };
            class_of.push(index);
        }
        if stand_ins.is_empty() {
            stand_ins.push(bcrypt_stand_in(BCRYPT_COST).map_err(AccountError::StandIn)?);
        }
        let fingerprint_key = hmac::Key::new(hmac::HMAC_SHA256, fingerprint_secret);
        let by_name = accounts
            .into_iter()
            .map(|account| {
                let fingerprint = fingerprint(&fingerprint_key, &account);
                let known = Known {
                    pwv: hex(&fingerprint),
                    fingerprint,
                    account,
                };
                (known.account.name.clone(), known)
            })
            .collect();
        Ok(Accounts {
            by_name,
            fingerprint_key,
            verify_only_fingerprint_keys: Vec::new(),
            cache,
            stand_ins,
            class_of,
        })
    }

    /// The stand-in hash an unknown `name` is checked against.
    fn stand_in_for(&self, name: &str) -> &PasswordHash {
        let tag = hmac::sign(&self.fingerprint_key, name.as_bytes());
        let mut n = [0u8; 8];
        n.copy_from_slice(&tag.as_ref()[..8]);
        let pick = u64::from_be_bytes(n);
        let class = match self.class_of.len() {
            0 => 0,
            len => self.class_of[(pick % len as u64) as usize],
        };
        &self.stand_ins[class.min(self.stand_ins.len() - 1)]
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when `name` is a configured account.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// True when there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The current password-hash fingerprint of `name`, if it exists; a
    /// refresh token whose `pwv` differs was issued before a password change.
    pub fn current_pwv(&self, name: &str) -> Option<String> {
        self.by_name.get(name).map(|k| k.pwv.clone())
    }

    /// Also accepts fingerprints keyed by `secret` in
    /// [`Accounts::pwv_is_current`]: the refresh secrets that verify but no
    /// longer sign, so a secret rotation does not look like a password change.
    pub fn also_fingerprinting(mut self, secret: &[u8]) -> Self {
        self.verify_only_fingerprint_keys
            .push(hmac::Key::new(hmac::HMAC_SHA256, secret));
        self
    }

    /// True when `name` exists and `pwv` fingerprints its current password
    /// hash under any configured refresh secret; compared in constant time.
    pub fn pwv_is_current(&self, name: &str, pwv: &str) -> bool {
        let Some(account) = self.by_name.get(name) else {
            return false;
        };
        // The signing secret's fingerprint was computed at load; older
        // secrets' are computed here, on the rarer tokens they signed.
        let current = constant_time_eq(account.pwv.as_bytes(), pwv.as_bytes());
        self.verify_only_fingerprint_keys
            .iter()
            .map(|key| {
                let tag = hmac::sign(key, account.account.hash.as_str().as_bytes());
                constant_time_eq(hex(&tag.as_ref()[..16]).as_bytes(), pwv.as_bytes())
            })
            .fold(current, |any, same| any | same)
    }

    /// The account's current principal (labels may have changed since a
    /// refresh token was issued; policy sees the current ones).
    pub fn principal(&self, name: &str) -> Option<Principal> {
        self.by_name.get(name).map(|k| k.account.principal())
    }

    /// The slot of (user, password) in the password cache: the key under
    /// which identical checks running at once are joined into one.
    pub fn check_key(&self, user: &str, password: &[u8]) -> [u8; 32] {
        self.cache.slot(user, password)
    }

    /// Checks a password using only the cache; `None` means the slow check is needed.
    pub fn verify_cached(&self, user: &str, password: &[u8], now: Instant) -> Option<Verified> {
        let known = self.by_name.get(user)?;
        self.cache
            .contains(user, password, &known.fingerprint, now)
            .then(|| Verified::Yes {
                principal: known.account.principal(),
                pwv: known.pwv.clone(),
            })
    }

    /// Checks a password against its hash (slow by design: run it off the
    /// async runtime) and remembers a success.
    pub fn verify_slow(&self, user: &str, password: &[u8], now: Instant) -> Verified {
        let Some(known) = self.by_name.get(user) else {
            let _ = self.stand_in_for(user).verify(password);
            return Verified::No;
        };
        if !known.account.hash.verify(password) {
            return Verified::No;
        }
        self.cache.insert(user, password, known.fingerprint, now);
        Verified::Yes {
            principal: known.account.principal(),
            pwv: known.pwv.clone(),
        }
    }
}

/// The keyed fingerprint of an account's password hash.
fn fingerprint(key: &hmac::Key, account: &Account) -> [u8; 16] {
    let tag = hmac::sign(key, account.hash.as_str().as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag.as_ref()[..16]);
    out
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
        .unwrap()
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

    /// A fingerprint made under a refresh secret that no longer signs still
    /// counts while that secret verifies; a password change voids it.
    #[test]
    fn pwv_from_an_older_refresh_secret_is_current_until_the_password_changes() {
        let h = bcrypt::hash("pw", 4).unwrap();
        let list = || vec![Account::new("alice", &h, BTreeMap::new()).unwrap()];
        let cache = || PasswordCache::new(Duration::from_secs(60), b"new");
        let old = Accounts::new(list(), b"old", cache()).unwrap();
        let pwv = old.current_pwv("alice").unwrap();
        let rotated = Accounts::new(list(), b"new", cache())
            .unwrap()
            .also_fingerprinting(b"old");
        assert!(rotated.pwv_is_current("alice", &pwv));
        assert!(rotated.pwv_is_current("alice", &rotated.current_pwv("alice").unwrap()));
        assert!(!rotated.pwv_is_current("bob", &pwv));
        let retired = Accounts::new(list(), b"new", cache()).unwrap();
        assert!(!retired.pwv_is_current("alice", &pwv));
        let h2 = bcrypt::hash("pw2", 4).unwrap();
        let changed = Accounts::new(
            vec![Account::new("alice", &h2, BTreeMap::new()).unwrap()],
            b"new",
            cache(),
        )
        .unwrap()
        .also_fingerprinting(b"old");
        assert!(!changed.pwv_is_current("alice", &pwv));
    }

    #[test]
    fn bad_names_and_hashes_are_rejected() {
        let h = bcrypt::hash("pw", 4).unwrap();
        assert!(Account::new("a b", &h, BTreeMap::new()).is_err());
        assert!(Account::new("a", "plain", BTreeMap::new()).is_err());
    }

    /// Unknown names are checked against a stand-in with the configured
    /// scheme and parameters; before, always a cost-10 bcrypt.
    #[test]
    fn unknown_names_cost_what_configured_accounts_cost() {
        use argon2::PasswordHasher;
        let b5 = bcrypt::hash("pw", 5).unwrap();
        let acc = accounts(vec![Account::new("alice", &b5, BTreeMap::new()).unwrap()]);
        for name in ["nobody", "x", "admin2"] {
            assert_eq!(acc.stand_in_for(name).cost_class(), "bcrypt:5", "{name}");
        }
        let params = argon2::Params::new(8192, 3, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(
                b"pw",
                &argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap(),
            )
            .unwrap()
            .to_string();
        let acc = accounts(vec![Account::new("bob", &a, BTreeMap::new()).unwrap()]);
        let class = acc.stand_in_for("nobody").cost_class();
        assert!(
            class.starts_with("argon2id:19:") && class.contains("m=8192"),
            "{class}"
        );
        assert_eq!(
            acc.verify_slow("nobody", b"pw", Instant::now()),
            Verified::No
        );

        // Mixed costs: unknown names spread over the classes present.
        let b4 = bcrypt::hash("pw", 4).unwrap();
        let acc = accounts(vec![
            Account::new("a", &b4, BTreeMap::new()).unwrap(),
            Account::new("b", &b5, BTreeMap::new()).unwrap(),
        ]);
        let classes: std::collections::BTreeSet<String> = (0..64)
            .map(|i| acc.stand_in_for(&format!("n{i}")).cost_class())
            .collect();
        assert_eq!(
            classes.into_iter().collect::<Vec<_>>(),
            ["bcrypt:4", "bcrypt:5"]
        );
    }
}
