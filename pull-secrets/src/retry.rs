//! Retrying a ServiceAccount whose reconcile failed: a jittered backoff
//! that doubles up to `max_backoff`, never shorter than the token server's
//! `Retry-After` (up to `max_backoff`), and held whatever triggers the next
//! reconcile. A resync, or a watch event from anyone's edit of the
//! ServiceAccount, reconciles it at once, but until the wait is over no
//! TokenRequest and no exchange is made for it: the reconcile does what
//! needs neither (a repair with the credential it holds), then waits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::runtime::reflector::ObjectRef;

/// The first retry after a failure; doubled each time up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The failures of one ServiceAccount in a row.
#[derive(Debug, Clone, Copy)]
struct Failing {
    attempts: u32,
    /// No TokenRequest or exchange before this.
    until: Instant,
}

/// The ServiceAccounts being retried.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    failing: Mutex<HashMap<ObjectRef<ServiceAccount>, Failing>>,
}

impl Retries {
    /// Records a failure of `sa` now; returns the wait before the next try:
    /// the backoff, but never shorter than `asked` (the token server's
    /// `Retry-After`), up to `max`.
    pub(crate) fn failed(
        &self,
        sa: ObjectRef<ServiceAccount>,
        max: Duration,
        asked: Option<Duration>,
    ) -> Duration {
        let mut failing = self.lock();
        let attempts = failing.get(&sa).map_or(0, |f| f.attempts).saturating_add(1);
        let wait = next_try(attempts, max, random_fraction(), asked);
        let now = Instant::now();
        failing.insert(
            sa,
            Failing {
                attempts,
                until: now.checked_add(wait).unwrap_or(now),
            },
        );
        wait
    }

    /// How long `sa` must still wait before a TokenRequest or an exchange,
    /// if it must.
    pub(crate) fn wait_left(&self, sa: &ObjectRef<ServiceAccount>) -> Option<Duration> {
        self.lock()
            .get(sa)
            .map(|f| f.until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// `sa` was reconciled: its backoff starts over.
    pub(crate) fn succeeded(&self, sa: &ObjectRef<ServiceAccount>) {
        self.lock().remove(sa);
    }

    /// Keeps only the ServiceAccounts `keep` says exist.
    pub(crate) fn retain(&self, keep: impl Fn(&ObjectRef<ServiceAccount>) -> bool) {
        self.lock().retain(|sa, _| keep(sa));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ServiceAccount>, Failing>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The wait before try `attempts + 1`: the jittered backoff, but never
/// shorter than what the token server asked for (`Retry-After`), up to `max`.
pub(crate) fn next_try(
    attempts: u32,
    max: Duration,
    fraction: f64,
    asked: Option<Duration>,
) -> Duration {
    let wait = backoff(attempts, max, fraction);
    wait.max(asked.unwrap_or_default().min(max))
}

/// `FIRST_BACKOFF * 2^(attempts-1)`, capped at `max`, scaled into
/// `[1/2, 1]` of itself by `fraction` (in `[0, 1)`) so retries spread out.
pub(crate) fn backoff(attempts: u32, max: Duration, fraction: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let base = FIRST_BACKOFF.saturating_mul(1 << exponent).min(max);
    base.mul_f64(0.5 + fraction.clamp(0.0, 1.0) / 2.0)
}

fn random_fraction() -> f64 {
    let mut byte = [0u8; 2];
    if aws_lc_rs::rand::fill(&mut byte).is_err() {
        return 0.5;
    }
    f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, max, 1.0), FIRST_BACKOFF);
        assert_eq!(backoff(1, max, 0.0), FIRST_BACKOFF / 2);
        assert_eq!(backoff(3, max, 1.0), FIRST_BACKOFF * 4);
        assert_eq!(backoff(40, max, 1.0), max);
        let r = random_fraction();
        assert!((0.0..=1.0).contains(&r));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_backoff() {
        let max = Duration::from_secs(60);
        let asked = Some(Duration::from_secs(7));
        assert_eq!(next_try(1, max, 1.0, asked), Duration::from_secs(7));
        assert_eq!(next_try(1, max, 1.0, None), FIRST_BACKOFF);
        // A longer backoff wins over a short Retry-After.
        assert_eq!(next_try(20, max, 1.0, asked), max);
        // A huge Retry-After is held to max_backoff.
        assert_eq!(
            next_try(1, max, 0.0, Some(Duration::from_secs(86_400))),
            max
        );
    }

    /// Whatever reconciles the ServiceAccount meanwhile, the wait holds
    /// until it is over, and a success starts the backoff over.
    #[test]
    fn a_failure_holds_the_service_account_until_its_wait_is_over() {
        let retries = Retries::default();
        let sa = ObjectRef::new("default").within("team-a");
        let other = ObjectRef::new("default").within("team-b");
        assert_eq!(retries.wait_left(&sa), None);
        let wait = retries.failed(
            sa.clone(),
            Duration::from_secs(60),
            Some(Duration::from_secs(8)),
        );
        assert_eq!(wait, Duration::from_secs(8));
        let left = retries.wait_left(&sa).expect("held");
        assert!(left > Duration::from_secs(7) && left <= wait, "{left:?}");
        assert_eq!(retries.wait_left(&other), None, "only that one");
        // The attempts count on: the second failure waits at least as long.
        let second = retries.failed(sa.clone(), Duration::from_secs(60), None);
        assert!(second >= FIRST_BACKOFF, "{second:?}");
        retries.succeeded(&sa);
        assert_eq!(retries.wait_left(&sa), None);
        retries.failed(sa.clone(), Duration::from_secs(60), None);
        retries.retain(|_| false);
        assert_eq!(retries.wait_left(&sa), None);
    }
}
