//! SIGHUP reloads the config file: a valid config takes effect for new
//! requests, a broken one is refused while the previous config keeps
//! serving, `/metrics` counts both, and requests running across reloads
//! all succeed.

use std::sync::Arc;
use std::time::Duration;

use regauth_e2e::jwt::unverified_header;
use regauth_e2e::ops::{
    Load, REFUSED, Reload, edit_config, metric, metrics, reload, replace_in_config, tally,
    token_request,
};
use regauth_e2e::token_server::{SERVICE, TokenServer, hash_password};

use crate::support::{standalone_server, verify};

const OK_SERIES: &str = "regauth_config_reloads_total{outcome=\"ok\"}";
const REJECTED_SERIES: &str = "regauth_config_reloads_total{outcome=\"rejected\"}";

/// The actions alice gets on `shared/app` with her password.
fn alice_shared_actions(server: &TokenServer, password: &str) -> Vec<String> {
    let reply = server.client().get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:shared/app:pull,push"),
        ],
        Some(("alice", password)),
    );
    assert_eq!(reply.status, 200, "alice: {}", reply.body);
    verify(server, &reply.json_str("token")).actions_on("repository", "shared/app")
}

/// The status of carol's password login (`GET /token` with Basic).
fn carol_login(server: &TokenServer, password: &str) -> u16 {
    server
        .client()
        .get_token(
            &[("service", SERVICE), ("scope", "repository:carol/x:push")],
            Some(("carol", password)),
        )
        .status
}

fn reload_counts(server: &TokenServer) -> (Option<f64>, Option<f64>) {
    let text = metrics(server.client());
    (metric(&text, OK_SERIES), metric(&text, REJECTED_SERIES))
}

#[test]
fn a_valid_reload_takes_effect_and_a_broken_one_is_refused() {
    let s = standalone_server(|b| b);
    let server = &s.server;
    let alice = s.alice_password.as_str();
    let carol = regauth_e2e::secrets::random_password();
    let kid = |token: &str| unverified_header(token)["kid"].clone();

    assert!(alice_shared_actions(server, alice).is_empty());
    assert_eq!(
        carol_login(server, &carol),
        401,
        "carol is not configured yet"
    );
    assert_eq!(
        reload_counts(server),
        (Some(0.0), Some(0.0)),
        "no reloads yet; both series exist from the start"
    );

    // A valid change: a new account, and a rule granting alice shared/.
    let carol_entry = format!(
        "  - name: carol\n    password_hash: {}\n",
        serde_json::to_string(&hash_password(&carol)).unwrap()
    );
    let shared_rule = "  - comment: added by reload\n    kind: account\n    name: alice\n    \
                       resource: \"shared/**\"\n    actions: [pull]\n";
    replace_in_config(
        server,
        "policy:\n",
        &format!("{carol_entry}policy:\n{shared_rule}"),
    );
    let valid = std::fs::read_to_string(server.config_path()).unwrap();
    assert_eq!(reload(server), Reload::Applied, "{}", server.logs());
    assert_eq!(alice_shared_actions(server, alice), ["pull"]);
    assert_eq!(
        carol_login(server, &carol),
        200,
        "carol logs in after the reload"
    );
    let signed_before = server
        .client()
        .password_grant("alice", alice, SERVICE, "", false)
        .json_str("token");

    // A YAML syntax error is refused; the reloaded config keeps serving.
    replace_in_config(
        server,
        "services: [registry.test]",
        "services: [registry.test",
    );
    match reload(server) {
        Reload::Refused(line) => assert!(line.contains("config.yml"), "{line}"),
        Reload::Applied => panic!("a config with a syntax error was applied"),
    }
    assert_eq!(alice_shared_actions(server, alice), ["pull"]);
    assert_eq!(carol_login(server, &carol), 200);

    // So is an unknown key (a misspelled option).
    std::fs::write(server.config_path(), &valid).unwrap();
    edit_config(server, |text| format!("{text}acess_token_ttl: 1m\n"));
    match reload(server) {
        Reload::Refused(line) => assert!(line.contains("acess_token_ttl"), "{line}"),
        Reload::Applied => panic!("a config with an unknown key was applied"),
    }

    // So is a config naming a signing key file that does not exist.
    std::fs::write(server.config_path(), &valid).unwrap();
    replace_in_config(server, "keys/signing.key", "keys/missing.key");
    match reload(server) {
        Reload::Refused(line) => assert!(
            line.contains("signing_keys[0]") && line.contains("missing.key"),
            "the refusal names the key: {line}"
        ),
        Reload::Applied => panic!("a config with a missing key file was applied"),
    }
    assert_eq!(alice_shared_actions(server, alice), ["pull"]);
    assert_eq!(carol_login(server, &carol), 200);
    let signed_after = server
        .client()
        .password_grant("alice", alice, SERVICE, "", false)
        .json_str("token");
    assert_eq!(
        kid(&signed_after),
        kid(&signed_before),
        "the same key signs"
    );
    verify(server, &signed_after);
    assert_eq!(
        server.stderr().matches(REFUSED).count(),
        3,
        "{}",
        server.stderr()
    );

    // Fixing the file and reloading again works.
    std::fs::write(server.config_path(), &valid).unwrap();
    assert_eq!(reload(server), Reload::Applied);
    assert_eq!(reload_counts(server), (Some(2.0), Some(3.0)));
}

#[test]
fn requests_across_reloads_all_succeed() {
    const RELOADS: usize = 5;
    let s = standalone_server(|b| b);
    let alice = s.alice_password.clone();
    let refresh = s
        .server
        .client()
        .password_grant("alice", &alice, SERVICE, "", true)
        .json_str("refresh_token");
    let client = s.server.client().clone();
    // Two workers present the refresh token, one the password (whose
    // verification cache starts empty with every new config).
    let load = Load::start(
        3,
        5_000,
        Arc::new(move |worker| {
            let secret = if worker == 2 { &alice } else { &refresh };
            token_request(&client, "alice", secret, "repository:alice/app:pull")
        }),
    );
    load.wait_ok(20, Duration::from_secs(60));
    for i in 0..RELOADS {
        // A real change every time: the access token lifetime.
        let ttl = |n: usize| format!("access_token_ttl: {}m\n", 5 + n);
        replace_in_config(&s.server, &ttl(i), &ttl(i + 1));
        assert_eq!(reload(&s.server), Reload::Applied, "{}", s.server.logs());
        load.wait_ok(load.ok() + 10, Duration::from_secs(60));
    }
    let attempts = load.finish();
    for (worker, list) in attempts.iter().enumerate() {
        assert!(
            list.iter().all(|a| a.result == Ok(200)),
            "worker {worker}: every request across {RELOADS} reloads must get 200: {:?}\n{}",
            tally(list),
            s.server.logs()
        );
        assert!(!list.is_empty(), "worker {worker} made requests");
    }
    let reply = s.server.client().get_token(
        &[("service", SERVICE), ("scope", "repository:alice/app:pull")],
        Some(("alice", &s.alice_password)),
    );
    assert_eq!(
        reply.json()["expires_in"],
        (5 + RELOADS as u64) * 60,
        "the last reload is in force"
    );
    let text = metrics(s.server.client());
    assert_eq!(metric(&text, OK_SERIES), Some(RELOADS as f64));
    assert_eq!(metric(&text, REJECTED_SERIES), Some(0.0));
}
