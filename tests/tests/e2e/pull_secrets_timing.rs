//! When the pull-secret controller asks the token server again, whatever
//! the config, the token server's answers or a namespace owner say: a
//! `refresh_threshold` as long as the credential lives, credentials that
//! live a few seconds, and a token server that answers 429 with
//! `Retry-After` (in seconds or as an HTTP-date) while resyncs and a
//! namespace owner's edits trigger reconciles. Each test counts what
//! really reached the token server or the API.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use regauth_e2e::http_stub::HttpStub;
use regauth_e2e::pull_secrets::{
    Cluster, Controller, OPT_IN, eventually, metric, now_seconds, selector_config,
};

/// What one controller did in a steady window after its first write.
struct Window {
    /// Credentials exchanged and written (`regauth_pull_secrets_refreshes_total`).
    refreshes: f64,
    /// Secret writes the API received from it.
    secret_writes: usize,
    /// `regauth_pull_secrets_refresh_clamped_total` at the end.
    clamped: Option<f64>,
    logs: String,
}

/// Runs one controller over one namespace against credentials that live
/// `ttl`, with `extra` config, and counts what it does in the 10 s after
/// its first Secret.
fn steady_window(ttl: &str, extra: &str) -> Window {
    let cluster = Cluster::start(ttl);
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    let config = cluster.config(&selector_config(), extra);
    cluster
        .check_config(&config)
        .assert_success("check-config accepts the config");
    let controller = cluster.start_controller("replica-a", &config);
    cluster.wait_pull_secret("team-a", "default");
    let refreshes = |c: &Controller| {
        metric(&c.metrics(), "regauth_pull_secrets_refreshes_total").unwrap_or(f64::NAN)
    };
    let before = refreshes(&controller);
    let seen = cluster.api.requests().len();
    std::thread::sleep(Duration::from_secs(10));
    let after = refreshes(&controller);
    let secret_writes = cluster.api.requests()[seen..]
        .iter()
        .filter(|r| r.client == "replica-a" && r.is_write() && r.resource == "secrets")
        .count();
    let window = Window {
        refreshes: after - before,
        secret_writes,
        clamped: metric(
            &controller.metrics(),
            "regauth_pull_secrets_refresh_clamped_total",
        ),
        logs: controller.logs(),
    };
    println!(
        "credential_ttl {ttl}, {extra:?}: {} refreshes, {} Secret writes in 10 s; clamped {:?}",
        window.refreshes, window.secret_writes, window.clamped
    );
    window
}

/// The shipped `refresh_threshold` (20m) against credentials that live
/// 15 min: every reconcile used to be due at once, and each write's watch
/// event started the next (thousands of exchanges in 10 s). The refresh
/// point is held to half the credential's life, and the clamp is counted
/// and logged. Control: the same threshold with 1 h credentials.
#[test]
fn a_refresh_threshold_as_long_as_the_credential_lives_never_spins_the_controller() {
    let control = steady_window("1h", "refresh_threshold: 20m\n");
    assert_eq!(control.refreshes, 0.0, "control: nothing due in 10 s");

    let hostile = steady_window("15m", "refresh_threshold: 20m\n");
    assert!(
        hostile.refreshes <= 1.0 && hostile.secret_writes <= 1,
        "refresh_threshold 20m with 15m credentials: {} exchanges and {} Secret writes in 10 s \
         for one ServiceAccount",
        hostile.refreshes,
        hostile.secret_writes
    );
    assert_eq!(control.clamped, Some(0.0), "control: nothing clamped");
    assert!(
        hostile.clamped.is_some_and(|n| n >= 1.0),
        "the clamp is counted: {:?}",
        hostile.clamped
    );
    assert!(
        hostile.logs.contains("refresh_threshold"),
        "the clamp is logged, naming the key:\n{}",
        hostile.logs
    );
}

/// A token server whose credentials live 2 s (a typo in its
/// `credential_ttl`, say) used to bring half-life refreshes once a second;
/// no credential is refreshed less than 10 s after it was obtained, so a
/// 10 s window holds two at most (one at each edge).
#[test]
fn credentials_that_live_seconds_are_refreshed_no_sooner_than_ten_seconds_apart() {
    let short = steady_window("2s", "");
    assert!(
        short.refreshes <= 2.0 && short.secret_writes <= 2,
        "2 s credentials: {} exchanges and {} Secret writes in 10 s for one ServiceAccount",
        short.refreshes,
        short.secret_writes
    );
    assert!(
        short.clamped.is_some_and(|n| n >= 1.0),
        "control: the short lifetime was seen and counted: {:?}",
        short.clamped
    );
}

/// How the busy token server states its `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryAfter {
    /// `Retry-After: 6`.
    Seconds,
    /// `Retry-After: <IMF-fixdate 6 s ahead>` (RFC 9110).
    HttpDate,
}

/// The `Retry-After` every 429 of the busy token server asks for.
const ASKED: u64 = 6;
/// How long each run watches the attempts: room for three at most.
const WINDOW: Duration = Duration::from_secs(13);

/// A token server (or the load balancer in front of it) that answers every
/// exchange with 429 and `Retry-After`, and a controller with
/// `resync_interval` `resync` and `max_backoff` 60 s; with `poke`, the
/// namespace owner annotates their ServiceAccount once a second. Returns
/// when each exchange attempt reached the token server, from the first.
fn attempts_under_retry_after(form: RetryAfter, resync: &str, poke: bool) -> Vec<Duration> {
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    let hits: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = Arc::clone(&hits);
    let router = axum::Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(Instant::now());
            let value = match form {
                RetryAfter::HttpDate => {
                    k8s_openapi::jiff::Timestamp::from_second((now_seconds() + ASKED) as i64)
                        .unwrap()
                        .strftime("%a, %d %b %Y %H:%M:%S GMT")
                        .to_string()
                }
                RetryAfter::Seconds => ASKED.to_string(),
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, value.parse().unwrap());
            headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            (
                StatusCode::TOO_MANY_REQUESTS,
                headers,
                r#"{"error":"slow_down","error_description":"busy"}"#,
            )
        }
    });
    let stub = HttpStub::start("busy-token-server", router);
    let config = cluster
        .config(&selector_config(), "")
        .replace(&cluster.world.server.url(), &stub.url())
        .replace("max_backoff: 2s", "max_backoff: 60s")
        .replace(
            "resync_interval: 10s",
            &format!("resync_interval: {resync}"),
        );
    assert!(config.contains(&stub.url()) && config.contains("max_backoff: 60s"));
    assert!(config.contains(&format!("resync_interval: {resync}\n")));
    let controller = cluster.start_controller("replica-a", &config);
    eventually("a first exchange attempt", || {
        (!hits.lock().unwrap().is_empty()).then_some(())
    });
    let first = hits.lock().unwrap()[0];
    if poke {
        let owner = cluster.namespace_user("team-a", "owner-a");
        let mut pokes = 0;
        while first.elapsed() + Duration::from_secs(1) < WINDOW {
            pokes += 1;
            cluster
                .kubectl(
                    &owner,
                    &[
                        "annotate",
                        "--overwrite",
                        "-n",
                        "team-a",
                        "serviceaccount",
                        "default",
                        &format!("poke={pokes}"),
                    ],
                )
                .assert_success("kubectl annotate serviceaccount as the namespace owner");
            std::thread::sleep(Duration::from_secs(1));
        }
        // Control: the edits went through (kubectl succeeded each time).
        assert!(pokes >= 6, "control: only {pokes} edits");
    }
    std::thread::sleep(WINDOW.saturating_sub(first.elapsed()));
    let at: Vec<Duration> = hits
        .lock()
        .unwrap()
        .iter()
        .map(|t| *t - first)
        .filter(|d| *d <= WINDOW)
        .collect();
    let failures = metric(
        &controller.metrics(),
        "regauth_pull_secrets_failures_total{reason=\"token_server_unavailable\"}",
    );
    println!(
        "Retry-After as {form:?}, resync_interval {resync}, owner edits {poke}: {} attempts in \
         {WINDOW:?} at {at:?}; failures {failures:?}",
        at.len()
    );
    // Control: the controller retried inside the window, and took each 429
    // for an unavailable token server.
    assert!(at.len() >= 2, "control: it retried: {at:?}");
    assert!(
        failures.is_some_and(|n| n >= 1.0),
        "control: the 429s were counted: {failures:?}"
    );
    at
}

/// The gaps between attempts shorter than `least`.
fn shorter_gaps(at: &[Duration], least: Duration) -> Vec<Duration> {
    at.windows(2)
        .map(|w| w[1] - w[0])
        .filter(|gap| *gap < least)
        .collect()
}

/// A resync every second used to reconcile the ServiceAccount whatever its
/// backoff, asking the busy token server again each time.
#[test]
fn retry_after_in_seconds_holds_through_every_resync() {
    let at = attempts_under_retry_after(RetryAfter::Seconds, "1s", false);
    let short = shorter_gaps(&at, Duration::from_secs(ASKED) - Duration::from_millis(100));
    assert!(
        short.is_empty(),
        "Retry-After: {ASKED}, yet attempts at {at:?} with a resync every second"
    );
}

/// `Retry-After` as an HTTP-date (RFC 9110 allows either form) used to be
/// ignored; the date is whole seconds, so it is honoured to within one.
#[test]
fn retry_after_as_an_http_date_is_honoured() {
    let at = attempts_under_retry_after(RetryAfter::HttpDate, "1h", false);
    let short = shorter_gaps(
        &at,
        Duration::from_secs(ASKED - 1) - Duration::from_millis(100),
    );
    assert!(
        short.is_empty(),
        "Retry-After: an HTTP-date {ASKED} s ahead, yet attempts at {at:?}"
    );
}

/// A namespace owner who edits their ServiceAccount once a second used to
/// drive an exchange per edit, whatever the token server asked.
#[test]
fn a_namespace_owner_editing_their_service_account_cannot_bring_an_exchange_before_retry_after() {
    let at = attempts_under_retry_after(RetryAfter::Seconds, "1h", true);
    let short = shorter_gaps(&at, Duration::from_secs(ASKED) - Duration::from_millis(100));
    assert!(
        short.is_empty() && at.len() <= 3,
        "Retry-After: {ASKED}, yet {} attempts at {at:?} while the namespace owner edited their \
         ServiceAccount once a second",
        at.len()
    );
}
