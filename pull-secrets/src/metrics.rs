//! Prometheus metrics, in the text format at `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// (namespace, ServiceAccount).
type Key = (String, String);

/// The controller's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    managed: Gauge,
    refreshes: Counter,
    refresh_clamped: Counter,
    failures: Family<Vec<(String, String)>, Counter>,
    soonest_expiry: Gauge<f64, AtomicU64>,
    leader: Gauge,
    conflicts: Gauge,
    /// When the credential each managed Secret serves expires.
    expiries: Mutex<BTreeMap<Key, u64>>,
    /// ServiceAccounts whose Secret name is taken by someone else's Secret.
    conflicted: Mutex<BTreeSet<Key>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("regauth_pull_secrets");
        let managed = Gauge::default();
        let refreshes = Counter::default();
        let refresh_clamped = Counter::default();
        let failures = Family::<Vec<(String, String)>, Counter>::default();
        let soonest_expiry = Gauge::<f64, AtomicU64>::default();
        let leader = Gauge::default();
        let conflicts = Gauge::default();
        registry.register(
            "managed",
            "Pull Secrets this replica keeps fresh",
            managed.clone(),
        );
        registry.register(
            "refreshes",
            "Credentials exchanged and written",
            refreshes.clone(),
        );
        registry.register(
            "refresh_clamped",
            "Refresh points moved later than refresh_threshold asked (it is at least half the \
             credentials' life), or held to the least refresh age (they live only seconds)",
            refresh_clamped.clone(),
        );
        registry.register("failures", "Failed reconciles, by reason", failures.clone());
        registry.register(
            "soonest_expiry_seconds",
            "Seconds until the soonest credential expiry among managed Secrets (negative: expired)",
            soonest_expiry.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the lease",
            leader.clone(),
        );
        registry.register(
            "conflicts",
            "ServiceAccounts whose pull Secret name is taken by a Secret the controller did not write",
            conflicts.clone(),
        );
        Self {
            registry,
            managed,
            refreshes,
            refresh_clamped,
            failures,
            soonest_expiry,
            leader,
            conflicts,
            expiries: Mutex::new(BTreeMap::new()),
            conflicted: Mutex::new(BTreeSet::new()),
        }
    }
}

impl Metrics {
    /// A Secret is managed, and the credential a pull would use from it
    /// expires at `expires_at`.
    pub(crate) fn track(&self, namespace: &str, service_account: &str, expires_at: u64) {
        let mut expiries = self.lock();
        expiries.insert(
            (namespace.to_owned(), service_account.to_owned()),
            expires_at,
        );
        self.managed
            .set(i64::try_from(expiries.len()).unwrap_or(i64::MAX));
    }

    /// A Secret is no longer managed (nor in conflict).
    pub(crate) fn forget(&self, namespace: &str, service_account: &str) {
        let key = (namespace.to_owned(), service_account.to_owned());
        let mut expiries = self.lock();
        expiries.remove(&key);
        self.managed
            .set(i64::try_from(expiries.len()).unwrap_or(i64::MAX));
        drop(expiries);
        self.set_conflict(namespace, service_account, false);
    }

    /// Forgets every ServiceAccount `keep` says no longer exists.
    pub(crate) fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut expiries = self.lock();
        expiries.retain(|(namespace, name), _| keep(namespace, name));
        self.managed
            .set(i64::try_from(expiries.len()).unwrap_or(i64::MAX));
        drop(expiries);
        let mut conflicted = self
            .conflicted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conflicted.retain(|(namespace, name)| keep(namespace, name));
        self.conflicts
            .set(i64::try_from(conflicted.len()).unwrap_or(i64::MAX));
    }

    /// Whether the ServiceAccount's Secret name is taken by someone else.
    pub(crate) fn set_conflict(&self, namespace: &str, service_account: &str, taken: bool) {
        let key = (namespace.to_owned(), service_account.to_owned());
        let mut conflicted = self
            .conflicted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if taken {
            conflicted.insert(key);
        } else {
            conflicted.remove(&key);
        }
        self.conflicts
            .set(i64::try_from(conflicted.len()).unwrap_or(i64::MAX));
    }

    /// A credential was exchanged and written.
    pub(crate) fn refreshed(&self) {
        self.refreshes.inc();
    }

    /// A refresh point was moved later than the config asked.
    pub(crate) fn refresh_clamped(&self) {
        self.refresh_clamped.inc();
    }

    /// A reconcile failed for `reason`.
    pub(crate) fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Whether this replica leads.
    pub(crate) fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition at time `now` (seconds since the epoch).
    pub(crate) fn render(&self, now: u64) -> String {
        let soonest = self.lock().values().min().copied();
        // Lossless for any realistic number of seconds.
        #[allow(clippy::cast_precision_loss)]
        let seconds = soonest.map_or(0.0, |at| at as f64 - now as f64);
        self.soonest_expiry.set(seconds);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, u64>> {
        // A poisoned map still holds valid numbers.
        self.expiries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::default();
        m.track("a", "default", 1_000);
        m.track("b", "default", 1_100);
        m.refreshed();
        m.refresh_clamped();
        m.failed("token_server_unavailable");
        m.set_leader(true);
        m.set_conflict("c", "default", true);
        let text = m.render(900);
        for line in [
            "regauth_pull_secrets_managed 2",
            "regauth_pull_secrets_refreshes_total 1",
            "regauth_pull_secrets_refresh_clamped_total 1",
            "regauth_pull_secrets_failures_total{reason=\"token_server_unavailable\"} 1",
            "regauth_pull_secrets_soonest_expiry_seconds 100.0",
            "regauth_pull_secrets_leader 1",
            "regauth_pull_secrets_conflicts 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        m.forget("a", "default");
        m.retain(|namespace, _| namespace != "c");
        assert!(m.render(900).contains("regauth_pull_secrets_conflicts 0"));
        assert!(
            m.render(900)
                .contains("regauth_pull_secrets_soonest_expiry_seconds 200.0")
        );
    }
}
