//! Process metrics, exposed at `/metrics` in the OpenMetrics text format
//! through `prometheus-client`, which owns escaping and the histogram
//! conventions.
//!
//! Every series a request touches is created at start-up and held as a
//! handle, so the hot path is one atomic increment: no map lookup, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

/// The endpoints with their own `endpoint` label; anything else is `other`,
/// so random paths cannot grow the series without bound.
pub const ENDPOINTS: [&str; 7] = [
    "/token",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
    "/healthz",
    "/readyz",
    "/metrics",
    "other",
];

/// Request outcomes, by status class.
const OUTCOMES: [&str; 6] = [
    "ok",
    "unauthorized",
    "too_large",
    "rate_limited",
    "client_error",
    "server_error",
];

/// Upper bounds (seconds) of the issuance latency histogram.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurposeLabels {
    purpose: &'static str,
}

/// What the shared state is used for; each has a fallback counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedUse {
    /// The failed-password limiter's reservations (fall back to this
    /// process's counts).
    Limiter,
    /// Credentials checked against revocations older than the staleness
    /// bound (they follow `revocation_unavailable`).
    Revocation,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: Escaped,
}

/// A label value escaped as the exposition format requires (`\\`, `\"`,
/// `\n`): the client library writes label values as they are, and issuer
/// names come from the config.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Escaped(String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Process-wide metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `[endpoint][outcome]`, created up front.
    requests: Vec<[Counter; OUTCOMES.len()]>,
    auth_failures: Family<ReasonLabels, Counter>,
    issue: Histogram,
    password_cache: [Counter; 2],
    password_hashes: Counter,
    reloads: [Counter; 2],
    shared: crate::shared::SharedMetrics,
    shared_fallbacks: [Counter; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests_family = Family::<RequestLabels, Counter>::default();
        let requests = ENDPOINTS
            .iter()
            .map(|&endpoint| {
                OUTCOMES.map(|outcome| {
                    requests_family
                        .get_or_create(&RequestLabels { endpoint, outcome })
                        .clone()
                })
            })
            .collect();
        registry.register(
            "regauth_requests",
            "HTTP requests by endpoint and outcome",
            requests_family,
        );
        let auth_failures = Family::default();
        registry.register(
            "regauth_auth_failures",
            "Failed authentications by reason",
            auth_failures.clone(),
        );
        let issue = Histogram::default();
        registry.register_with_unit(
            "regauth_token_issue",
            "Time to decide and sign one access token",
            Unit::Seconds,
            issue.clone(),
        );
        let cache_family = Family::<ResultLabels, Counter>::default();
        let password_cache = ["hit", "miss"]
            .map(|result| cache_family.get_or_create(&ResultLabels { result }).clone());
        registry.register(
            "regauth_password_cache",
            "Password checks by cache result",
            cache_family,
        );
        let password_hashes = Counter::default();
        registry.register(
            "regauth_password_hashes",
            "Password hashes computed (bcrypt or argon2 checks that ran)",
            password_hashes.clone(),
        );
        let reload_family = Family::<OutcomeLabels, Counter>::default();
        let reloads = ["ok", "rejected"].map(|outcome| {
            reload_family
                .get_or_create(&OutcomeLabels { outcome })
                .clone()
        });
        registry.register(
            "regauth_config_reloads",
            "Config reloads by outcome",
            reload_family,
        );
        let shared = crate::shared::SharedMetrics::default();
        registry.register(
            "regauth_shared_state_up",
            "1 while this replica follows the shared state (Redis), 0 while it cannot",
            shared.up.clone(),
        );
        let fallback_family = Family::<PurposeLabels, Counter>::default();
        let shared_fallbacks = ["limiter", "revocation"].map(|purpose| {
            fallback_family
                .get_or_create(&PurposeLabels { purpose })
                .clone()
        });
        registry.register(
            "regauth_shared_state_fallbacks",
            "Operations that went without the shared state, by purpose",
            fallback_family,
        );
        registry.register(
            "regauth_shared_state_resets",
            "Times the shared state came back without its revocations (epoch marker gone or changed)",
            shared.resets.clone(),
        );
        registry.register(
            "regauth_revocations_written_back",
            "Revocations this replica wrote back to a Redis that lacked them",
            shared.written_back.clone(),
        );
        registry.register(
            "regauth_revocations_held",
            "Revocations this replica holds in memory",
            shared.held.clone(),
        );
        registry.register(
            "regauth_shared_state_clock_offset_seconds",
            "How far Redis's clock runs ahead of this replica's (negative: behind), as last measured; refresh tokens are stamped and checked in Redis's time",
            shared.clock_offset.clone(),
        );
        registry.register(
            "regauth_revocations_stale_seconds",
            "Seconds since this replica last knew its revocations current (0 while it follows Redis)",
            shared.stale_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            auth_failures,
            issue,
            password_cache,
            password_hashes,
            reloads,
            shared,
            shared_fallbacks,
        }
    }

    /// A handle on the count of password hashes computed.
    pub fn password_hashes(&self) -> Counter {
        self.password_hashes.clone()
    }

    /// Counts a finished request by endpoint (an index into [`ENDPOINTS`])
    /// and HTTP status.
    pub fn request(&self, endpoint: usize, status: u16) {
        let outcome = match status {
            200..=299 => 0,
            401 => 1,
            413 => 2,
            429 => 3,
            400..=499 => 4,
            _ => 5,
        };
        if let Some(row) = self.requests.get(endpoint) {
            row[outcome].inc();
        }
    }

    /// Counts a failed authentication by reason.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records how long issuing one token took.
    pub fn issued(&self, took: Duration) {
        self.issue.observe(took);
    }

    /// Counts a password check answered by (or missing) the cache.
    pub fn password_cache(&self, hit: bool) {
        self.password_cache[usize::from(!hit)].inc();
    }

    /// Password checks the cache could not answer so far.
    pub fn password_cache_misses(&self) -> u64 {
        self.password_cache[1].get()
    }

    /// Handles on the shared state's series.
    pub fn shared_state(&self) -> crate::shared::SharedMetrics {
        self.shared.clone()
    }

    /// A handle on the count of one purpose's fallbacks.
    pub fn shared_state_fallbacks(&self, what: SharedUse) -> Counter {
        self.shared_fallbacks[what as usize].clone()
    }

    /// Counts an operation that went without the shared state.
    pub fn shared_state_fallback(&self, what: SharedUse) {
        self.shared_fallbacks[what as usize].inc();
    }

    /// Counts a config reload attempt.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// The OpenMetrics text exposition; `jwks_fetches` lists (issuer, count),
    /// read at scrape time because issuers come and go with reloads.
    pub fn render(&self, jwks_fetches: &[(String, u64)]) -> Result<String, std::fmt::Error> {
        let mut scrape = Registry::default();
        let fetches = Family::<IssuerLabels, ConstCounterValue>::new_with_constructor(
            ConstCounterValue::default,
        );
        for (issuer, n) in jwks_fetches {
            fetches
                .get_or_create(&IssuerLabels {
                    issuer: Escaped(issuer.clone()),
                })
                .set(*n);
        }
        scrape.register(
            "regauth_jwks_fetches",
            "Issuer key set loads by issuer",
            fetches,
        );
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &scrape)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// A counter whose value is read from elsewhere at scrape time.
#[derive(Debug, Default)]
struct ConstCounterValue(AtomicU64);

impl ConstCounterValue {
    fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

impl TypedMetric for ConstCounterValue {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ConstCounterValue {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.0.load(Ordering::Relaxed)).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A histogram of durations kept in atomics. The client library's own
/// histogram takes a lock per observation; this one does not.
#[derive(Debug, Clone, Default)]
struct Histogram(std::sync::Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per-bucket counts (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        let c = &self.0;
        c.buckets[i].fetch_add(1, Ordering::Relaxed);
        c.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        c.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(&c.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = c.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text() {
        let m = Metrics::new();
        m.request(0, 200);
        m.request(0, 204);
        m.request(99, 200);
        m.auth_failure("bad_credentials");
        m.issued(Duration::from_micros(700));
        m.password_cache(true);
        m.reload(true);
        m.shared_state().up.set(1);
        m.shared_state_fallback(SharedUse::Revocation);
        let text = m.render(&[("cluster \"a\"\n".into(), 3)]).unwrap();
        for want in [
            "regauth_requests_total{endpoint=\"/token\",outcome=\"ok\"} 2",
            "regauth_requests_total{endpoint=\"/healthz\",outcome=\"ok\"} 0",
            "regauth_auth_failures_total{reason=\"bad_credentials\"} 1",
            "regauth_token_issue_seconds_bucket{le=\"0.0005\"} 0",
            "regauth_token_issue_seconds_bucket{le=\"0.001\"} 1",
            "regauth_token_issue_seconds_bucket{le=\"+Inf\"} 1",
            "regauth_token_issue_seconds_count 1",
            "regauth_password_cache_total{result=\"hit\"} 1",
            "regauth_password_cache_total{result=\"miss\"} 0",
            "regauth_config_reloads_total{outcome=\"ok\"} 1",
            "regauth_shared_state_up 1",
            "regauth_shared_state_fallbacks_total{purpose=\"limiter\"} 0",
            "regauth_shared_state_fallbacks_total{purpose=\"revocation\"} 1",
            "regauth_jwks_fetches_total{issuer=\"cluster \\\"a\\\"\\n\"} 3",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
