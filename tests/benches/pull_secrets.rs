//! The pull-secret controller at scale: 500 namespaces in the Kubernetes
//! API stub, the real token server, one controller replica.
//!
//! Reports, in one run:
//! - the baseline: the same work done by a plain sequential client
//!   (TokenRequest, exchange, Secret apply, ServiceAccount patch per
//!   namespace, over HTTP to the same stub and token server);
//! - the controller's time to first full sync, and its ratio to the baseline;
//! - steady state: requests per minute to the API (by verb) and to the
//!   token server, over a window in which no credential is due.
//!
//! `cargo bench -p regauth-e2e --bench pull_secrets`
//! (`PULL_SECRETS_NAMESPACES`, default 500; `PULL_SECRETS_STEADY_SECONDS`,
//! default 60).

// A benchmark harness, like a test: a failed step should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use regauth_e2e::kube_api::rbac::{MASTERS, UserInfo};
use regauth_e2e::kube_api::{KubeApi, RequestRecord};
use regauth_e2e::ops::metrics;
use regauth_e2e::pull_secrets::{AUDIENCE, Cluster, PREFIX};
use regauth_e2e::token_client::{http_client, send};
use regauth_e2e::token_server::SERVICE;
use serde_json::json;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Requests to `/token`, counted by the token server's own metrics (so
/// the scrape itself is not counted).
fn token_server_requests(cluster: &Cluster) -> f64 {
    metrics(cluster.world.tokens())
        .lines()
        .filter(|l| l.starts_with("regauth_requests_total{endpoint=\"/token\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The baseline: one client doing each namespace's work in turn.
fn sequential_baseline(api: &KubeApi, cluster: &Cluster, namespaces: &[String]) -> Duration {
    // The baseline is not the controller: it may do anything, as an admin.
    let token = api.add_client(
        "baseline",
        UserInfo {
            name: "baseline".to_owned(),
            groups: vec![MASTERS.to_owned()],
        },
    );
    let http = http_client();
    let host = cluster.registry_host();
    let start = Instant::now();
    for ns in namespaces {
        let reply = send(
            http.post(format!(
                "{}/api/v1/namespaces/{ns}/serviceaccounts/default/token",
                api.url()
            ))
            .bearer_auth(&token)
            .json(
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": [AUDIENCE], "expirationSeconds": 600}}),
            ),
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
        let sa_token = reply.json()["status"]["token"].as_str().unwrap().to_owned();
        let exchanged = cluster.world.tokens().post_token(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("subject_token", &sa_token),
            ("audience", SERVICE),
        ]);
        assert_eq!(exchanged.status, 200, "{}", exchanged.body);
        let password = exchanged.json_str("refresh_token");
        let config = json!({"auths": {&host: {"username": "regauth", "password": password}}});
        let name = format!("baseline-{PREFIX}");
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config.to_string()}});
        let applied = send(
            http.patch(format!(
                "{}/api/v1/namespaces/{ns}/secrets/{name}?fieldManager=baseline&force=true",
                api.url()
            ))
            .bearer_auth(&token)
            .header("content-type", "application/apply-patch+yaml")
            .body(secret.to_string()),
        );
        assert!(applied.status < 300, "{}", applied.body);
        let patched = send(
            http.patch(format!(
                "{}/api/v1/namespaces/{ns}/serviceaccounts/default",
                api.url()
            ))
            .bearer_auth(&token)
            .header("content-type", "application/merge-patch+json")
            .body(json!({"metadata": {"annotations": {"baseline": "done"}}}).to_string()),
        );
        assert_eq!(patched.status, 200, "{}", patched.body);
    }
    start.elapsed()
}

fn by_verb(records: &[RequestRecord]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        let key = if r.subresource.is_empty() {
            format!("{} {}", r.verb, r.resource)
        } else {
            format!("{} {}/{}", r.verb, r.resource, r.subresource)
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we ignore.
    let count = env_number("PULL_SECRETS_NAMESPACES", 500) as usize;
    let steady = Duration::from_secs(env_number("PULL_SECRETS_STEADY_SECONDS", 60));
    let cluster = Cluster::start("1h");
    let api = &cluster.api;
    let namespaces: Vec<String> = (0..count).map(|i| format!("team-{i:04}")).collect();
    for ns in &namespaces {
        api.create_namespace(ns, &[("regauth.io/pull-secrets", "enabled")]);
    }

    let baseline = sequential_baseline(api, &cluster, &namespaces);

    // The deployment's lease timing, not the tests' fast one.
    let config = cluster
        .config(
            "namespaces:\n  selector: \"regauth.io/pull-secrets=enabled\"\n",
            "",
        )
        .replace("max_backoff: 2s", "max_backoff: 5m")
        .replace(
            "lease_duration: 4s\n  renew_interval: 1s",
            "lease_duration: 15s\n  renew_interval: 5s",
        );
    let api_before = api.requests().len();
    let start = Instant::now();
    let controller = cluster.start_controller("bench", &config);
    let ours = format!("{PREFIX}-default");
    loop {
        let done = api
            .list::<ServiceAccount>()
            .iter()
            .filter(|sa| {
                sa.image_pull_secrets
                    .iter()
                    .flatten()
                    .any(|r| r.name == ours)
            })
            .count();
        if done == count {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "first sync stalled at {done}/{count}\n{}",
            controller.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_sync = start.elapsed();
    let sync_requests = api.requests().len() - api_before;

    // Steady state: let the caches settle, then count a window.
    std::thread::sleep(Duration::from_secs(3));
    let api_mark = api.requests().len();
    let token_mark = token_server_requests(&cluster);
    std::thread::sleep(steady);
    let window = api.requests()[api_mark..].to_vec();
    let token_window = token_server_requests(&cluster) - token_mark;
    let per_minute = |n: f64| n * 60.0 / steady.as_secs_f64();

    println!(
        "pull-secrets bench: {count} namespaces, steady window {}s",
        steady.as_secs()
    );
    println!(
        "baseline_sequential_first_sync  {:>8.2} s",
        baseline.as_secs_f64()
    );
    println!(
        "controller_first_sync           {:>8.2} s   ({:.2} x baseline, {sync_requests} API requests)",
        first_sync.as_secs_f64(),
        first_sync.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "steady_api_requests_per_minute  {:>8.1}",
        per_minute(window.len() as f64)
    );
    for (verb, n) in by_verb(&window) {
        println!("  {verb:<40} {:>8.1}/min", per_minute(n as f64));
    }
    println!(
        "steady_token_server_requests_per_minute {:>8.1}",
        per_minute(token_window)
    );
    let metrics_text = controller.metrics();
    for line in metrics_text
        .lines()
        .filter(|l| l.starts_with("regauth_pull_secrets_") && !l.starts_with('#'))
    {
        println!("  {line}");
    }
}
