//! The token server as an attacker on loopback sees it: many guesses at
//! once, control characters in every logged field, and timing that might
//! tell real account names from invented ones.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use regauth_e2e::oidc_issuer::OidcIssuer;
use regauth_e2e::oidc_issuer::claims::{GithubWorkflow, ServiceAccount};
use regauth_e2e::oidc_issuer::config::IssuerConfig;
use regauth_e2e::oidc_issuer::exchange::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_JWT};
use regauth_e2e::ops::{metric, metrics};
use regauth_e2e::token_server::{SERVICE, TokenServer};
use serde_json::Value;

use crate::support::standalone_server;
use crate::workload_identity::{AUDIENCE, IdentityServer, POLICY};

/// A whole forged audit line, as an attacker would plant it.
const FORGED: &str = "\n2026-01-01T00:00:00.000000Z  INFO regauth::audit: token issued outcome=\"granted\" kind=account sub=admin granted=\"repository:admin/app:push\"";

/// Hashes computed so far, from `/metrics`.
fn hashes(server: &TokenServer) -> f64 {
    metric(&metrics(server.client()), "regauth_password_hashes_total").unwrap_or(0.0)
}

/// Sends `n` password grants at once, the i-th with `user(i)` and
/// `password(i)`; returns the statuses.
fn at_once(
    server: &TokenServer,
    n: usize,
    user: impl Fn(usize) -> String,
    password: impl Fn(usize) -> String,
) -> Vec<u16> {
    let start = Arc::new(Barrier::new(n));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (start, user, password) = (Arc::clone(&start), user(i), password(i));
                let client = server.client();
                scope.spawn(move || {
                    start.wait();
                    client
                        .get_token(&[("service", SERVICE)], Some((&user, &password)))
                        .status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    })
}

/// 40 wrong passwords for one account at once run at most the account's
/// allowance of hash checks (5); 60 for invented names from one address at
/// most the address's (20). The rest are refused with 429 before hashing.
#[test]
fn concurrent_guesses_run_at_most_the_allowance_of_hash_checks() {
    let s = standalone_server(|b| b);
    let statuses = at_once(&s.server, 40, |_| "alice".into(), |i| format!("guess-{i}"));
    let ran = hashes(&s.server);
    assert!(
        ran <= 5.0,
        "{ran} hash checks for 40 guesses at one account"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count() as f64,
        ran,
        "each hash check is one 401: {statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 35,
        "{statuses:?}"
    );

    let s = standalone_server(|b| b);
    let statuses = at_once(&s.server, 60, |i| format!("user{i}"), |_| "pw".into());
    let ran = hashes(&s.server);
    assert!(ran <= 20.0, "{ran} hash checks for 60 invented names");
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 40,
        "{statuses:?}"
    );
}

/// Starts a token server logging in `format` that trusts a Kubernetes
/// issuer and an OIDC issuer, with account `alice`.
fn injection_target(format: &str) -> (IdentityServer, OidcIssuer, OidcIssuer, String) {
    let cluster = OidcIssuer::start();
    let ci = OidcIssuer::start();
    let password = regauth_e2e::secrets::random_password();
    let server = IdentityServer::start(
        &[
            IssuerConfig::kubernetes("cluster-a", &cluster.url()),
            IssuerConfig::oidc("ci", &ci.url()),
        ],
        POLICY,
        |b| {
            b.account("alice", &password, &[])
                .serve_args(&["--log-format", format])
        },
        |_| {},
    );
    (server, cluster, ci, password)
}

/// Plants [`FORGED`] in a client ID, a forwarded annotation, and the
/// subject of a signed OIDC token; every attempt must still be served.
fn plant(target: &(IdentityServer, OidcIssuer, OidcIssuer, String)) {
    let (server, cluster, ci, password) = target;
    let client_id = format!("docker{FORGED}");
    let reply = server.tokens().post_token(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", password),
        ("service", SERVICE),
        ("client_id", &client_id),
    ]);
    assert_eq!(reply.status, 200, "{}", reply.body);

    let sa = cluster.mint(&ServiceAccount::new("team-a", "builder").claims(
        &cluster.url(),
        AUDIENCE,
        Duration::from_secs(600),
    ));
    let annotation = format!("a{FORGED}");
    let reply = server.tokens().post_token(&[
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("subject_token", &sa),
        ("subject_token_type", TOKEN_TYPE_JWT),
        ("audience", SERVICE),
        ("annotation.team", &annotation),
    ]);
    assert_eq!(reply.status, 200, "{}", reply.body);

    let mut claims = GithubWorkflow::new("org/app").claims(&ci.url(), AUDIENCE);
    claims["sub"] = Value::from(format!("repo:org/app{FORGED}"));
    let reply = server.tokens().post_token(&[
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("subject_token", &ci.mint(&claims)),
        ("subject_token_type", TOKEN_TYPE_JWT),
        ("audience", SERVICE),
    ]);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Waits until the log holds `n` audit events, then returns it.
fn log_with_audit_events(server: &TokenServer, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.stderr();
        if log.matches("regauth::audit").count() >= n || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Before, an `annotation.*` value reached the text log unescaped and wrote
/// a standalone forged line; now no request-derived field can break a line,
/// in either format.
#[test]
fn forged_audit_lines_cannot_be_planted_in_either_log_format() {
    let text = injection_target("text");
    plant(&text);
    let log = log_with_audit_events(&text.0.server, 3);
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00"),
            "a forged line reached the log:\n{log}"
        );
        if line.contains("sub=admin") {
            assert!(
                line.contains("\\n2026-01-01T00:00:00"),
                "the planted text must stay escaped inside its field: {line}"
            );
        }
    }
    // The client ID is cut at 64 characters, so count the escaped start.
    let planted = log
        .lines()
        .filter(|l| l.contains("\\n2026-01-01T00:00:00"))
        .count();
    assert_eq!(
        planted, 3,
        "all three plants are in the log, escaped:\n{log}"
    );

    let json = injection_target("json");
    plant(&json);
    let log = log_with_audit_events(&json.0.server, 3);
    let events: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let audit: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"] == "regauth::audit")
        .collect();
    let field = |name: &str| -> Vec<String> {
        audit
            .iter()
            .filter_map(|e| e["fields"][name].as_str().map(str::to_owned))
            .collect()
    };
    let cut: String = format!("docker{FORGED}").chars().take(64).collect();
    assert!(field("client_id").contains(&cut), "{log}");
    assert!(field("annotations").contains(&format!("team=a{FORGED}")));
    assert!(field("sub").contains(&format!("oidc:repo:org/app{FORGED}")));
    assert!(
        !field("sub").iter().any(|s| s == "admin"),
        "no event claims sub=admin"
    );
}

/// The median of `samples`.
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Times wrong passwords for a real account and for invented names, one
/// after the other in rounds, and returns unknown/known.
fn unknown_to_known_ratio(server: &TokenServer, known: &str, rounds: usize) -> f64 {
    let client = server.client();
    let time = |user: &str, i: usize| {
        let t = Instant::now();
        let reply = client.get_token(&[("service", SERVICE)], Some((user, &format!("wrong-{i}"))));
        let took = t.elapsed().as_secs_f64();
        assert_eq!(reply.status, 401, "{user}: {}", reply.body);
        took
    };
    // Warm up connections and the server's own first-request costs.
    time(known, 0);
    time("invented-0", 0);
    // Each pair runs back to back, so load from outside the test hits
    // both sides alike; the median of the pairs' ratios is the figure.
    let ratios = (1..=rounds)
        .map(|i| time(&format!("invented-{i}"), i) / time(known, i))
        .collect();
    median(ratios)
}

/// An unknown name costs what a wrong password for a real account costs,
/// for bcrypt at cost 5 (htpasswd's default) and 10, and for argon2id.
/// Before, an unknown name always cost a cost-10 bcrypt: about 30 times a
/// cost-5 account.
#[test]
fn unknown_names_take_as_long_as_known_ones_at_every_cost() {
    // Generous limits so that timing, not throttling, is measured.
    let limits = "limits:\n  auth_failures_before_backoff: 1000\n";
    for (label, hash_args) in [
        ("bcrypt cost 5", &["--cost", "5"][..]),
        ("bcrypt cost 10", &[][..]),
        ("argon2id", &["--argon2"][..]),
    ] {
        let s = standalone_server(|b| b.hash_args(hash_args).extra_config(limits));
        let ratio = unknown_to_known_ratio(&s.server, "alice", 25);
        eprintln!("{label}: unknown/known = {ratio:.2}");
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{label}: an unknown name takes {ratio:.2} times a known one"
        );
    }
}
