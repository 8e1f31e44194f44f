//! Backoff after failed authentication, per client address and per account.
//!
//! A few mistakes are free. Past `threshold` consecutive failures for an
//! account (four times that for a client address, which may be a NAT shared
//! by many clients), the key must wait, and the wait doubles with each
//! further failure up to `max_backoff`. Waiting callers get 429 with `Retry-After` before any
//! password hash is computed, so a guessing attack costs the server little.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most; past that, idle ones are dropped.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Account(String),
}

/// A client address may stand for many clients behind a NAT.
const ADDRESS_FACTOR: u32 = 4;

enum KeyKind {
    Addr,
    Account,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// Tracks failures and imposes backoff.
#[derive(Debug)]
pub struct FailureLimiter {
    threshold: u32,
    max_backoff: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl FailureLimiter {
    /// Backoff starts after `threshold` failures and is capped at `max_backoff`.
    pub fn new(threshold: u32, max_backoff: Duration) -> Self {
        FailureLimiter {
            threshold: threshold.max(1),
            max_backoff,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn keys(addr: Option<IpAddr>, account: Option<&str>) -> Vec<Key> {
        let mut keys = Vec::with_capacity(2);
        keys.extend(addr.map(Key::Addr));
        keys.extend(
            account
                .filter(|a| !a.is_empty() && a.len() <= 128)
                .map(|a| Key::Account(a.to_owned())),
        );
        keys
    }

    /// `Err(wait)` when the address or the account must wait before trying again.
    pub fn check(
        &self,
        addr: Option<IpAddr>,
        account: Option<&str>,
        now: Instant,
    ) -> Result<(), Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let wait = Self::keys(addr, account)
            .iter()
            .filter_map(|k| entries.get(k)?.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Records a failure for the address and the account.
    pub fn failure(&self, addr: Option<IpAddr>, account: Option<&str>, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let idle = self.max_backoff * 2;
            entries.retain(|_, e| now.duration_since(e.last) < idle);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        for key in Self::keys(addr, account) {
            let key_kind = match key {
                Key::Addr(_) => KeyKind::Addr,
                Key::Account(_) => KeyKind::Account,
            };
            let e = entries.entry(key).or_insert(Entry {
                failures: 0,
                blocked_until: None,
                last: now,
            });
            // A long quiet spell forgives old failures.
            if now.duration_since(e.last) > self.max_backoff * 2 {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            let threshold = match key_kind {
                KeyKind::Addr => self.threshold.saturating_mul(ADDRESS_FACTOR),
                KeyKind::Account => self.threshold,
            };
            if e.failures >= threshold {
                let exponent = (e.failures - threshold).min(20);
                let wait = Duration::from_secs(1u64 << exponent).min(self.max_backoff);
                e.blocked_until = Some(now + wait);
            }
        }
    }

    /// A success clears the account's record; the address keeps its own, so
    /// one valid account cannot launder guesses at others.
    pub fn success(&self, account: Option<&str>) {
        if let Some(a) = account {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.remove(&Key::Account(a.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn backoff_starts_after_threshold_and_doubles() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..2 {
            l.failure(ip("10.0.0.1"), Some("alice"), t0);
        }
        assert!(
            l.check(ip("10.0.0.1"), Some("alice"), t0).is_ok(),
            "two mistakes are free"
        );
        l.failure(ip("10.0.0.1"), Some("alice"), t0);
        assert_eq!(
            l.check(ip("10.9.9.9"), Some("alice"), t0),
            Err(Duration::from_secs(1))
        );
        assert!(
            l.check(ip("10.0.0.1"), None, t0).is_ok(),
            "an address gets four times the allowance"
        );
        assert!(l.check(ip("10.9.9.9"), Some("bob"), t0).is_ok());
        l.failure(ip("10.0.0.1"), Some("alice"), t0);
        assert_eq!(
            l.check(None, Some("alice"), t0),
            Err(Duration::from_secs(2)),
            "the wait doubles"
        );
        assert!(
            l.check(None, Some("alice"), t0 + Duration::from_secs(3))
                .is_ok(),
            "the wait ends"
        );
        for _ in 0..8 {
            l.failure(ip("10.0.0.1"), None, t0);
        }
        assert!(
            l.check(ip("10.0.0.1"), Some("carol"), t0).is_err(),
            "then the address waits too"
        );
    }

    #[test]
    fn capped_and_cleared_by_success() {
        let l = FailureLimiter::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..30 {
            l.failure(None, Some("alice"), t0);
        }
        assert_eq!(
            l.check(None, Some("alice"), t0),
            Err(Duration::from_secs(5))
        );
        l.success(Some("alice"));
        assert!(l.check(None, Some("alice"), t0).is_ok());
    }
}
