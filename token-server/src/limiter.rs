//! Backoff after failed password checks, per account name and per client
//! network.
//!
//! A few mistakes are free. An account name gets `allowance` failed checks
//! (a client network four times that, since one address may be a NAT shared
//! by many clients); past that it must wait, and the wait doubles with each
//! further failure up to `max_backoff`. Waiting callers get 429 with
//! `Retry-After` before any password hash is computed.
//!
//! An attempt is *reserved* before its hash is computed and settled after,
//! so however many guesses arrive at once, the hash checks that can fail in
//! a window never exceed the allowance. Every name gets a record, real or
//! invented, so the throttling itself does not tell them apart. IPv6 clients
//! are grouped by /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records kept at most. Past that, the oldest idle records go first;
/// records that are blocking or have checks in flight are never dropped.
const MAX_ENTRIES: usize = 100_000;

/// A client network may stand for many clients behind a NAT.
const ADDRESS_FACTOR: u32 = 4;

/// Longest account name given its own record; longer ones share one, since
/// no real account has such a name.
const MAX_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Network(IpAddr),
    Account(String),
}

impl Key {
    fn network(addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(Ipv6Addr::from(prefix))
                }
            },
            v4 => v4,
        };
        Key::Network(addr)
    }

    fn account(name: &str) -> Self {
        if name.len() > MAX_NAME {
            Key::Account(String::new())
        } else {
            Key::Account(name.to_owned())
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    in_flight: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry {
            failures: 0,
            in_flight: 0,
            blocked_until: None,
            last: now,
        }
    }

    fn blocking(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    fn evictable(&self, now: Instant) -> bool {
        self.in_flight == 0 && self.blocking(now).is_none()
    }
}

/// Why an attempt may not go ahead; the caller answers 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed attempts; retry in {} s", .0.as_secs().max(1))]
pub struct Throttled(pub Duration);

/// Tracks failures and imposes backoff.
#[derive(Debug)]
pub struct FailureLimiter {
    allowance: u32,
    max_backoff: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
}

/// A reserved attempt: counted against the allowance until it is settled.
/// Dropping it unsettled releases it without counting a failure.
#[derive(Debug)]
#[must_use = "settle the attempt with success() or failure()"]
pub struct Attempt {
    kept: Option<Kept>,
}

/// Where a reservation is counted.
#[derive(Debug)]
enum Kept {
    Here {
        limiter: Arc<FailureLimiter>,
        keys: Vec<Key>,
    },
    Elsewhere(Box<dyn Settle>),
}

/// How a reserved attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The password was right.
    Success,
    /// The password was wrong: counts against the allowance.
    Failure {
        /// The name is a configured account's: the fleet tells every
        /// replica about its failures, since its password may be cached.
        known_account: bool,
    },
    /// The check did not run: the reservation is given back.
    Released,
}

/// Settles an attempt counted outside this process (the fleet's limiter).
pub trait Settle: Send + Sync + std::fmt::Debug {
    /// Records how the attempt ended; the future ends once it is recorded
    /// (or could not be).
    fn settle(self: Box<Self>, outcome: Outcome) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// One record an attempt counts against, as the shared limiter names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `n:<network>` or `a:<account name>`.
    pub name: String,
    /// Failures allowed before backoff.
    pub allowance: u32,
    /// True for an account's record: a success clears it.
    pub account: bool,
}

impl FailureLimiter {
    /// Backoff starts after `allowance` failures and is capped at `max_backoff`.
    pub fn new(allowance: u32, max_backoff: Duration) -> Self {
        FailureLimiter {
            allowance: allowance.max(1),
            max_backoff,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn allowance(&self, key: &Key) -> u32 {
        match key {
            Key::Network(_) => self.allowance.saturating_mul(ADDRESS_FACTOR),
            Key::Account(_) => self.allowance,
        }
    }

    fn keys(addr: Option<IpAddr>, account: &str) -> Vec<Key> {
        addr.map(Key::network)
            .into_iter()
            .chain(std::iter::once(Key::account(account)))
            .collect()
    }

    /// `Err` while the network or the account must wait; checked first, so
    /// a blocked caller costs no hash and no cache lookup.
    pub fn check(
        &self,
        addr: Option<IpAddr>,
        account: &str,
        now: Instant,
    ) -> Result<(), Throttled> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let wait = Self::keys(addr, account)
            .iter()
            .filter_map(|k| entries.get(k)?.blocking(now))
            .max();
        match wait {
            Some(w) => Err(Throttled(w)),
            None => Ok(()),
        }
    }

    /// Reserves one password check for the network and the account. Refused
    /// while either is blocked, and while the failures so far plus the checks
    /// in flight already reach its allowance.
    pub fn reserve(
        self: &Arc<Self>,
        addr: Option<IpAddr>,
        account: &str,
        now: Instant,
    ) -> Result<Attempt, Throttled> {
        let keys = Self::keys(addr, account);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in &keys {
            if let Some(e) = entries.get(key) {
                if let Some(wait) = e.blocking(now) {
                    return Err(Throttled(wait));
                }
                if self.forgiven(e, now) {
                    continue;
                }
                // Until the allowance is used up, that many checks may run
                // at once; after it, one at a time between blocks.
                let room = self.allowance(key).saturating_sub(e.failures).max(1);
                if e.in_flight >= room {
                    // The checks in flight may yet succeed: come back soon.
                    return Err(Throttled(Duration::from_secs(1)));
                }
            }
        }
        self.make_room(&mut entries, keys.len(), now);
        for key in &keys {
            let e = entries
                .entry(key.clone())
                .or_insert_with(|| Entry::new(now));
            if self.forgiven(e, now) {
                e.failures = 0;
            }
            e.in_flight += 1;
            e.last = now;
        }
        Ok(Attempt {
            kept: Some(Kept::Here {
                limiter: Arc::clone(self),
                keys,
            }),
        })
    }

    /// A long quiet spell forgives old failures.
    /// The records an attempt for `account` from `addr` counts against.
    pub fn records(&self, addr: Option<IpAddr>, account: &str) -> Vec<Record> {
        Self::keys(addr, account)
            .into_iter()
            .map(|key| Record {
                allowance: self.allowance(&key),
                account: matches!(key, Key::Account(_)),
                name: match key {
                    Key::Network(ip) => format!("n:{ip}"),
                    Key::Account(name) => format!("a:{name}"),
                },
            })
            .collect()
    }

    /// The longest backoff.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    fn forgiven(&self, e: &Entry, now: Instant) -> bool {
        e.in_flight == 0 && now.duration_since(e.last) > self.max_backoff * 2
    }

    /// Frees space for `needed` new records by dropping the oldest idle ones.
    fn make_room(&self, entries: &mut HashMap<Key, Entry>, needed: usize, now: Instant) {
        if entries.len() + needed <= MAX_ENTRIES {
            return;
        }
        let mut idle: Vec<(Instant, Key)> = entries
            .iter()
            .filter(|(_, e)| e.evictable(now))
            .map(|(k, e)| (e.last, k.clone()))
            .collect();
        idle.sort_unstable_by_key(|(last, _)| *last);
        // Drop a tenth at a time so the sort is paid rarely.
        let drop = (MAX_ENTRIES / 10).max(needed).min(idle.len());
        for (_, key) in idle.into_iter().take(drop) {
            entries.remove(&key);
        }
    }

    fn settle(&self, keys: &[Key], failed: bool, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let allowance = self.allowance(key);
            let Some(e) = entries.get_mut(key) else {
                continue;
            };
            e.in_flight = e.in_flight.saturating_sub(1);
            e.last = now;
            match (failed, key) {
                (true, _) => {
                    e.failures = e.failures.saturating_add(1);
                    if e.failures >= allowance {
                        let exponent = (e.failures - allowance).min(20);
                        let wait = Duration::from_secs(1u64 << exponent).min(self.max_backoff);
                        e.blocked_until = Some(now + wait);
                    }
                }
                // A success clears the account's record; the network keeps
                // its own, so one valid account cannot launder guesses at
                // others.
                (false, Key::Account(_)) => {
                    e.failures = 0;
                    e.blocked_until = None;
                }
                (false, Key::Network(_)) => {}
            }
        }
    }

    /// Records reserved for tests: (failures, in flight) of an account.
    #[cfg(test)]
    fn account(&self, name: &str) -> Option<(u32, u32)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&Key::account(name))
            .map(|e| (e.failures, e.in_flight))
    }
}

impl Attempt {
    /// An attempt reserved by another limiter, settled through `kept`.
    pub fn elsewhere(kept: Box<dyn Settle>) -> Self {
        Attempt {
            kept: Some(Kept::Elsewhere(kept)),
        }
    }

    /// The password was right.
    pub fn success(mut self, now: Instant) {
        self.finish(Outcome::Success, now);
    }

    /// The password was wrong for `known_account` (a configured account)
    /// or an unknown name.
    pub fn failure(mut self, known_account: bool, now: Instant) {
        self.finish(Outcome::Failure { known_account }, now);
    }

    /// Records how the attempt ended, and returns once the limiter that
    /// counts it has it: in a fleet, once Redis has it, so that the answer
    /// to the caller never runs ahead of the count (a success the cache
    /// answers next, on any replica, then clears this failure).
    pub async fn settle(mut self, outcome: Outcome, now: Instant) {
        match self.kept.take() {
            Some(Kept::Elsewhere(kept)) => kept.settle(outcome).await,
            kept => {
                self.kept = kept;
                self.finish(outcome, now);
            }
        }
    }

    fn finish(&mut self, outcome: Outcome, now: Instant) {
        match self.kept.take() {
            None => {}
            // Not awaited (a drop): it completes in the background.
            Some(Kept::Elsewhere(kept)) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(kept.settle(outcome));
                }
            }
            Some(Kept::Here { limiter, keys }) => match outcome {
                Outcome::Success => limiter.settle(&keys, false, now),
                Outcome::Failure { .. } => limiter.settle(&keys, true, now),
                Outcome::Released => limiter.release(&keys),
            },
        }
    }
}

impl FailureLimiter {
    /// A success that needed no check (the password cache knew it) clears
    /// the account's record as a checked one does.
    pub fn clear_account(&self, account: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get_mut(&Key::account(account)) {
            e.failures = 0;
            e.blocked_until = None;
        }
    }

    fn release(&self, keys: &[Key]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if let Some(e) = entries.get_mut(key) {
                e.in_flight = e.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(Outcome::Released, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn limiter(allowance: u32, max: u64) -> Arc<FailureLimiter> {
        Arc::new(FailureLimiter::new(allowance, Duration::from_secs(max)))
    }

    fn fail(l: &Arc<FailureLimiter>, addr: Option<IpAddr>, account: &str, now: Instant) {
        l.reserve(addr, account, now).unwrap().failure(false, now);
    }

    #[test]
    fn backoff_starts_after_the_allowance_and_doubles() {
        let l = limiter(3, 60);
        let t0 = Instant::now();
        fail(&l, ip("10.0.0.1"), "alice", t0);
        fail(&l, ip("10.0.0.1"), "alice", t0);
        assert!(
            l.check(ip("10.0.0.1"), "alice", t0).is_ok(),
            "two mistakes are free"
        );
        fail(&l, ip("10.0.0.1"), "alice", t0);
        assert_eq!(
            l.check(ip("10.9.9.9"), "alice", t0),
            Err(Throttled(Duration::from_secs(1)))
        );
        assert!(l.check(ip("10.9.9.9"), "bob", t0).is_ok());
        let t1 = t0 + Duration::from_secs(1);
        fail(&l, ip("10.0.0.1"), "alice", t1);
        assert_eq!(
            l.check(None, "alice", t1),
            Err(Throttled(Duration::from_secs(2))),
            "the wait doubles"
        );
        assert!(l.check(None, "alice", t1 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_allowance() {
        let l = limiter(5, 60);
        let t0 = Instant::now();
        let held: Vec<Attempt> = (0..40)
            .filter_map(|_| l.reserve(ip("10.0.0.1"), "alice", t0).ok())
            .collect();
        assert_eq!(held.len(), 5, "only the allowance may be checked at once");
        for a in held {
            a.failure(false, t0);
        }
        assert!(
            l.reserve(ip("10.0.0.1"), "alice", t0).is_err(),
            "now blocked"
        );

        // Per address: 4 x 5 = 20 over many invented names.
        let l = limiter(5, 60);
        let held: Vec<Attempt> = (0..60)
            .filter_map(|i| l.reserve(ip("10.0.0.2"), &format!("user{i}"), t0).ok())
            .collect();
        assert_eq!(held.len(), 20);
    }

    #[test]
    fn unsettled_attempts_release_their_reservation() {
        let l = limiter(1, 60);
        let t0 = Instant::now();
        drop(l.reserve(None, "alice", t0).unwrap());
        assert_eq!(l.account("alice"), Some((0, 0)));
        assert!(l.reserve(None, "alice", t0).is_ok());
    }

    #[test]
    fn invented_names_are_throttled_like_real_ones() {
        let l = limiter(2, 60);
        let t0 = Instant::now();
        for _ in 0..2 {
            fail(&l, None, "no-such-user", t0);
        }
        assert!(l.check(None, "no-such-user", t0).is_err());
    }

    #[test]
    fn capped_and_cleared_by_success() {
        let l = limiter(1, 5);
        let mut t = Instant::now();
        for _ in 0..30 {
            fail(&l, None, "alice", t);
            // Step past each (capped) block, well within the quiet spell
            // that would forgive the failures.
            t += Duration::from_secs(6);
        }
        let last = t - Duration::from_secs(6);
        assert_eq!(
            l.check(None, "alice", last),
            Err(Throttled(Duration::from_secs(5))),
            "capped at max_backoff"
        );
        l.reserve(None, "alice", t).unwrap().success(t);
        assert_eq!(l.account("alice"), Some((0, 0)));
    }

    /// A success the password cache answered clears the account's failures
    /// and block, as a checked success does; the network keeps its count.
    #[test]
    fn a_cached_success_clears_the_account_but_not_the_network() {
        let l = limiter(5, 60);
        let t0 = Instant::now();
        for _ in 0..4 {
            fail(&l, ip("10.0.0.1"), "alice", t0);
        }
        l.clear_account("alice");
        assert_eq!(l.account("alice"), Some((0, 0)));
        fail(&l, ip("10.0.0.1"), "alice", t0);
        assert!(l.check(None, "alice", t0).is_ok(), "one failure since");
        let entries = l.entries.lock().unwrap();
        let network = entries.get(&Key::network("10.0.0.1".parse().unwrap()));
        assert_eq!(network.map(|e| e.failures), Some(5));
        drop(entries);
        l.clear_account("nobody");
        assert_eq!(l.account("nobody"), None, "no record is made");
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64() {
        let l = limiter(1, 60);
        let t0 = Instant::now();
        fail(&l, ip("2001:db8:1:2::1"), "a", t0);
        fail(&l, ip("2001:db8:1:2::2"), "b", t0);
        fail(&l, ip("2001:db8:1:2:ffff::3"), "c", t0);
        fail(&l, ip("2001:db8:1:2::4"), "d", t0);
        assert!(
            l.check(ip("2001:db8:1:2:aaaa::9"), "e", t0).is_err(),
            "four failures from one /64 block it"
        );
        assert!(
            l.check(ip("2001:db8:1:3::1"), "e", t0).is_ok(),
            "another /64 is not"
        );
        assert_eq!(
            Key::network("::ffff:10.0.0.1".parse().unwrap()),
            Key::network("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn a_full_table_drops_the_oldest_idle_records_and_keeps_blocks() {
        let l = limiter(1, 60);
        let t0 = Instant::now();
        fail(&l, None, "blocked", t0);
        for i in 0..MAX_ENTRIES {
            let t = t0 + Duration::from_micros(i as u64 + 1);
            l.reserve(None, &format!("u{i}"), t).unwrap().success(t);
        }
        // Within the blocked name's one-second wait.
        let t1 = t0 + Duration::from_millis(500);
        l.reserve(None, "newcomer", t1).unwrap().success(t1);
        assert!(
            l.check(None, "blocked", t1).is_err(),
            "an active block survives eviction"
        );
        let entries = l.entries.lock().unwrap();
        assert!(entries.len() <= MAX_ENTRIES);
        assert!(!entries.contains_key(&Key::account("u0")), "oldest first");
        assert!(entries.contains_key(&Key::account("newcomer")));
    }
}
