//! Remembers recent successful password checks.
//!
//! One image pull asks for several tokens, and each bcrypt or argon2 check
//! costs tens of milliseconds by design. A successful check is remembered for
//! a short TTL, keyed by a keyed hash of (user, password), so the password
//! itself is never stored. An entry also records the account's password-hash
//! fingerprint: when the account changes, the entry no longer applies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

use crate::secret::constant_time_eq;

/// Entries kept at most; past that, expired entries are dropped and, if the
/// cache is still full, it starts over. Bounds memory under a password spray.
const MAX_ENTRIES: usize = 16_384;

struct Entry {
    fingerprint: [u8; 16],
    expires: Instant,
}

/// A bounded cache of verified (user, password) pairs.
pub struct PasswordCache {
    key: hmac::Key,
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for PasswordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl PasswordCache {
    /// A cache whose slots are keyed by a key derived from `secret` (the
    /// server's refresh secret), so they mean nothing without it. A `ttl` of
    /// zero disables it.
    pub fn new(ttl: Duration, secret: &[u8]) -> Self {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            b"regauth password cache v1",
        );
        PasswordCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The keyed hash of (user, password) that names their entry.
    pub fn slot(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// True if this exact pair was verified recently for an account whose
    /// password hash still has `fingerprint`.
    pub fn contains(
        &self,
        user: &str,
        password: &[u8],
        fingerprint: &[u8; 16],
        now: Instant,
    ) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let slot = self.slot(user, password);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&slot)
            .is_some_and(|e| e.expires > now && constant_time_eq(&e.fingerprint, fingerprint))
    }

    /// Records a successful verification.
    pub fn insert(&self, user: &str, password: &[u8], fingerprint: [u8; 16], now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let slot = self.slot(user, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            slot,
            Entry {
                fingerprint,
                expires: now + self.ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_ttl_and_fingerprint_change() {
        let c = PasswordCache::new(Duration::from_secs(60), b"k");
        let now = Instant::now();
        assert!(!c.contains("alice", b"pw", &[1; 16], now));
        c.insert("alice", b"pw", [1; 16], now);
        assert!(c.contains("alice", b"pw", &[1; 16], now));
        assert!(!c.contains("alice", b"other", &[1; 16], now));
        assert!(!c.contains("bob", b"pw", &[1; 16], now));
        assert!(
            !c.contains("alice", b"pw", &[2; 16], now),
            "changed account must miss"
        );
        assert!(!c.contains("alice", b"pw", &[1; 16], now + Duration::from_secs(61)));
    }

    #[test]
    fn user_and_password_boundary_is_unambiguous() {
        let c = PasswordCache::new(Duration::from_secs(60), b"k");
        let now = Instant::now();
        c.insert("ab", b"c", [1; 16], now);
        assert!(!c.contains("a", b"bc", &[1; 16], now));
    }

    #[test]
    fn zero_ttl_disables() {
        let c = PasswordCache::new(Duration::ZERO, b"k");
        let now = Instant::now();
        c.insert("a", b"p", [1; 16], now);
        assert!(!c.contains("a", b"p", &[1; 16], now));
    }
}
