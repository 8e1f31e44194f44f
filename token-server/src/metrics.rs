//! Counters and a latency histogram, rendered in the Prometheus text format
//! at `/metrics`. A handful of series does not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the issuance latency histogram.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Process-wide metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    issue_buckets: [AtomicU64; BUCKETS.len()],
    issue_count: AtomicU64,
    issue_sum_micros: AtomicU64,
    password_cache_hits: AtomicU64,
    password_cache_misses: AtomicU64,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_insert(0) += 1;
}

impl Metrics {
    /// Counts a finished request by endpoint and outcome.
    pub fn request(&self, endpoint: &'static str, outcome: &'static str) {
        bump(&self.requests, (endpoint, outcome));
    }

    /// Counts a failed authentication by reason.
    pub fn auth_failure(&self, reason: &'static str) {
        bump(&self.auth_failures, reason);
    }

    /// Records how long issuing one token took.
    pub fn issued(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.issue_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.issue_count.fetch_add(1, Ordering::Relaxed);
        self.issue_sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts a password check answered by (or missing) the cache.
    pub fn password_cache(&self, hit: bool) {
        let c = if hit {
            &self.password_cache_hits
        } else {
            &self.password_cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a config reload attempt by outcome (`ok` or `rejected`).
    pub fn reload(&self, outcome: &'static str) {
        bump(&self.reloads, outcome);
    }

    /// The Prometheus text exposition; `jwks_fetches` lists (issuer, count).
    pub fn render(&self, jwks_fetches: &[(String, u64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP regauth_requests_total HTTP requests by endpoint and outcome."
        );
        let _ = writeln!(out, "# TYPE regauth_requests_total counter");
        for ((endpoint, outcome), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "regauth_requests_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP regauth_auth_failures_total Failed authentications by reason."
        );
        let _ = writeln!(out, "# TYPE regauth_auth_failures_total counter");
        for (reason, n) in self
            .auth_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "regauth_auth_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP regauth_token_issue_seconds Time to decide and sign one access token."
        );
        let _ = writeln!(out, "# TYPE regauth_token_issue_seconds histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.issue_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "regauth_token_issue_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let count = self.issue_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "regauth_token_issue_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.issue_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "regauth_token_issue_seconds_sum {sum}");
        let _ = writeln!(out, "regauth_token_issue_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP regauth_password_cache_total Password checks by cache result."
        );
        let _ = writeln!(out, "# TYPE regauth_password_cache_total counter");
        let hits = self.password_cache_hits.load(Ordering::Relaxed);
        let misses = self.password_cache_misses.load(Ordering::Relaxed);
        let _ = writeln!(out, "regauth_password_cache_total{{result=\"hit\"}} {hits}");
        let _ = writeln!(
            out,
            "regauth_password_cache_total{{result=\"miss\"}} {misses}"
        );
        let _ = writeln!(
            out,
            "# HELP regauth_jwks_fetches_total Issuer key set loads by issuer."
        );
        let _ = writeln!(out, "# TYPE regauth_jwks_fetches_total counter");
        for (issuer, n) in jwks_fetches {
            let _ = writeln!(
                out,
                "regauth_jwks_fetches_total{{issuer=\"{}\"}} {n}",
                issuer.replace(['"', '\\', '\n'], "_")
            );
        }
        let _ = writeln!(
            out,
            "# HELP regauth_config_reloads_total Config reloads by outcome."
        );
        let _ = writeln!(out, "# TYPE regauth_config_reloads_total counter");
        for (outcome, n) in self
            .reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "regauth_config_reloads_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("/token", "ok");
        m.request("/token", "ok");
        m.auth_failure("bad_credentials");
        m.issued(Duration::from_micros(700));
        m.password_cache(true);
        let text = m.render(&[("cluster-a".into(), 3)]);
        assert!(text.contains("regauth_requests_total{endpoint=\"/token\",outcome=\"ok\"} 2"));
        assert!(text.contains("regauth_auth_failures_total{reason=\"bad_credentials\"} 1"));
        assert!(text.contains("regauth_token_issue_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("regauth_token_issue_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("regauth_token_issue_seconds_count 1"));
        assert!(text.contains("regauth_password_cache_total{result=\"hit\"} 1"));
        assert!(text.contains("regauth_jwks_fetches_total{issuer=\"cluster-a\"} 3"));
    }
}
