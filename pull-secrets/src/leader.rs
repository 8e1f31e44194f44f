//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder
//! writes.
//!
//! Expiry is judged by each replica's own monotonic clock, as client-go
//! does: a lease is free once its record (holder and renew time) has not
//! changed for this replica's own `lease_duration` since it first saw it,
//! so clock skew between nodes does not matter. The record's
//! `leaseDurationSeconds` is never trusted: anyone who may write the Lease
//! (the controller's own stolen token) could otherwise park every replica
//! for 68 years with one write, and the record holds whole seconds, so a
//! follower judging by it would take over too early after a leader with a
//! fractional `lease_duration`. The record carries the duration rounded up,
//! for people and other tools. The holder leads only until
//! `lease_duration` after the start of its last successful renewal; that
//! is always before any other replica (with the same `lease_duration`)
//! could see the lease lapse, so a replica that fails to renew stops
//! writing before anyone else starts.
//!
//! A follower sees a renewal at its next poll, up to `renew_interval`
//! later, and then polls again exactly when that record would lapse, so
//! it takes over between `lease_duration` and `lease_duration +
//! renew_interval` (plus the API's latency) after the leader's last
//! renewal.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::LeaderElection;
use crate::metrics::Metrics;
use crate::pull_secret::MANAGER;

/// The shortest wait between two polls of the Lease.
const MIN_POLL: Duration = Duration::from_millis(10);

/// Whether this replica may write now.
#[derive(Debug)]
pub(crate) struct Leadership {
    /// `Some(deadline)` while leading.
    until: watch::Sender<Option<Instant>>,
}

impl Leadership {
    /// Not leading (yet).
    pub(crate) fn new() -> Self {
        Self {
            until: watch::channel(None).0,
        }
    }

    /// Leading for good: for a single replica without election.
    pub(crate) fn always() -> Self {
        let now = Instant::now();
        let far = [100 * 365 * 24 * 3600, 24 * 3600]
            .into_iter()
            .find_map(|s| now.checked_add(Duration::from_secs(s)))
            .unwrap_or(now);
        Self {
            until: watch::channel(Some(far)).0,
        }
    }

    /// True while the lease is held and not past its deadline.
    pub(crate) fn is_leading(&self) -> bool {
        self.until
            .borrow()
            .is_some_and(|deadline| Instant::now() < deadline)
    }

    /// Waits until this replica leads.
    pub(crate) async fn acquired(&self) {
        let mut rx = self.until.subscribe();
        loop {
            if self.is_leading() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until this replica no longer leads: the lease went to another
    /// replica, or its deadline passed without a renewal.
    pub(crate) async fn lost(&self) {
        let mut rx = self.until.subscribe();
        loop {
            let deadline = *rx.borrow_and_update();
            let Some(deadline) = deadline.filter(|d| Instant::now() < *d) else {
                return;
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { std::future::pending::<()>().await },
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    fn lead_until(&self, deadline: Instant) {
        self.until.send_replace(Some(deadline));
    }

    fn follow(&self) {
        self.until.send_replace(None);
    }
}

/// The last lease record this replica saw, and when it first saw it.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<String>,
    since: Instant,
}

/// Runs the election for `identity` until the task is dropped.
pub(crate) async fn run(
    api: Api<Lease>,
    identity: String,
    settings: LeaderElection,
    leadership: Arc<Leadership>,
    metrics: Arc<Metrics>,
) {
    let mut observed: Option<Observed> = None;
    loop {
        let attempt = Instant::now();
        let mut wait = settings.renew_interval;
        match try_lead(&api, &identity, &settings, &mut observed).await {
            Ok(Outcome::Leading) => {
                if !leadership.is_leading() {
                    tracing::info!(identity, lease = settings.lease_name, "leading");
                }
                match attempt.checked_add(settings.lease_duration) {
                    Some(deadline) => leadership.lead_until(deadline),
                    None => leadership.follow(),
                }
            }
            Ok(Outcome::Following { lapses_in }) => {
                if leadership.is_leading() {
                    tracing::warn!(identity, lease = settings.lease_name, "lost the lease");
                }
                leadership.follow();
                // Look again when the holder's record would lapse, not a
                // whole interval later.
                if let Some(left) = lapses_in {
                    wait = wait.min(left.max(MIN_POLL));
                }
            }
            Err(error) => {
                // Keep leading until the deadline: a renewal may fail once.
                tracing::warn!(lease = settings.lease_name, error = %error_chain(&error), "lease update failed");
            }
        }
        metrics.set_leader(leadership.is_leading());
        tokio::time::sleep(wait).await;
    }
}

/// What one look at the Lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// This replica holds it (it just created or renewed it).
    Leading,
    /// Another replica does; its record lapses in this long, if known.
    Following { lapses_in: Option<Duration> },
}

fn params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// Gives the lease up (on shutdown), so another replica takes over at once.
pub(crate) async fn release(api: &Api<Lease>, identity: &str, settings: &LeaderElection) {
    let Ok(mut lease) = api.get(&settings.lease_name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    if let Err(error) = api.replace(&settings.lease_name, &params(), &lease).await {
        tracing::warn!(error = %error_chain(&error), "could not release the lease");
    }
}

async fn try_lead(
    api: &Api<Lease>,
    identity: &str,
    settings: &LeaderElection,
    observed: &mut Option<Observed>,
) -> Result<Outcome, kube::Error> {
    // Microseconds, as the API keeps them: two renewals within one second
    // must still differ, or a follower would take them for none.
    let now = MicroTime(crate::clock::timestamp());
    let duration_seconds = recorded_seconds(settings.lease_duration);
    let Some(mut lease) = api.get_opt(&settings.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.lease_name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return created_or_lost(api.create(&params(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let record = Observed {
        holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
        renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
        since: Instant::now(),
    };
    let seen_since = match observed {
        Some(o) if o.holder == record.holder && o.renew_time == record.renew_time => o.since,
        _ => {
            *observed = Some(record.clone());
            record.since
        }
    };
    let held_by_us = record.holder.as_deref() == Some(identity);
    // Our own duration decides, never the record's (see the module doc).
    let seen_for = seen_since.elapsed();
    let lapsed = record.holder.is_none() || seen_for >= settings.lease_duration;
    if !held_by_us && !lapsed {
        return Ok(Outcome::Following {
            lapses_in: Some(settings.lease_duration.saturating_sub(seen_for)),
        });
    }
    if !held_by_us {
        spec.acquire_time = Some(now.clone());
        // Saturating: the count is whatever the last writer stored.
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(now);
    // The resourceVersion read above makes this a compare-and-swap: if
    // another replica wrote first, this is a 409 and we follow.
    created_or_lost(api.replace(&settings.lease_name, &params(), &lease).await)
}

/// `leaseDurationSeconds` for `lease_duration`: whole seconds, rounded
/// up, so that anyone judging by the record waits at least as long as the
/// holder may write.
fn recorded_seconds(lease_duration: Duration) -> i32 {
    let whole = lease_duration
        .as_secs()
        .saturating_add(u64::from(lease_duration.subsec_nanos() > 0));
    i32::try_from(whole).unwrap_or(i32::MAX)
}

fn created_or_lost(result: Result<Lease, kube::Error>) -> Result<Outcome, kube::Error> {
    match result {
        Ok(_) => Ok(Outcome::Leading),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Ok(Outcome::Following { lapses_in: None })
        }
        Err(e) => Err(e),
    }
}

/// An error with its sources, for logs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leading_ends_at_the_deadline_without_a_renewal() {
        let leadership = Leadership::new();
        assert!(!leadership.is_leading());
        let deadline = Instant::now() + Duration::from_millis(200);
        leadership.lead_until(deadline);
        assert!(leadership.is_leading());
        leadership.lost().await;
        assert!(Instant::now() >= deadline);
        assert!(!leadership.is_leading());
    }

    #[test]
    fn the_record_rounds_the_duration_up_to_whole_seconds() {
        assert_eq!(recorded_seconds(Duration::from_millis(2999)), 3);
        assert_eq!(recorded_seconds(Duration::from_secs(3)), 3);
        assert_eq!(recorded_seconds(Duration::from_millis(1)), 1);
        assert_eq!(recorded_seconds(Duration::MAX), i32::MAX);
    }

    #[tokio::test]
    async fn following_is_noticed_at_once() {
        let leadership = Arc::new(Leadership::new());
        leadership.lead_until(Instant::now() + Duration::from_secs(60));
        let waiter = {
            let l = Arc::clone(&leadership);
            tokio::spawn(async move { l.lost().await })
        };
        tokio::task::yield_now().await;
        leadership.follow();
        waiter.await.unwrap();
        assert!(Leadership::always().is_leading());
    }
}
