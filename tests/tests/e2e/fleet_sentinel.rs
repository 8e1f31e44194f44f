//! Three replicas behind haproxy whose shared state is a Sentinel-managed
//! Redis (one primary, one replica, three `redis-sentinel`s): a forced
//! failover under load fails no request, a revocation made before it still
//! holds after it, and one made after it reaches every replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use regauth_e2e::fleet::Fleet;
use regauth_e2e::jwt::unverified_claims;
use regauth_e2e::ops::{Load, metric, metrics, tally};
use regauth_e2e::redis::{Resp, SentinelGroup, info_field};
use regauth_e2e::token_client::{TokenClient, try_send};
use regauth_e2e::token_server::SERVICE;

use crate::fleet::refused_within;

fn refresh_token(client: &TokenClient) -> String {
    let reply = client.password_grant("alice", "alice-pw", SERVICE, "", true);
    assert_eq!(reply.status, 200, "password grant: {}", reply.body);
    reply.json_str("refresh_token")
}

fn jti(token: &str) -> String {
    unverified_claims(token)["jti"]
        .as_str()
        .expect("jti")
        .to_owned()
}

/// Workers through the balancer: half send alice's password (the cache
/// knows it), half her refresh token.
fn load(fleet: &Fleet, refresh: &str) -> Load {
    let url = fleet.client().base_url().to_owned();
    let refresh = refresh.to_owned();
    Load::start(
        6,
        usize::MAX,
        Arc::new(move |i| {
            let client = TokenClient::new(&url);
            let secret = if i % 2 == 0 {
                "alice-pw"
            } else {
                refresh.as_str()
            };
            try_send(
                client
                    .http()
                    .get(client.token_url())
                    .query(&[("service", SERVICE), ("scope", "repository:alice/app:pull")])
                    .basic_auth("alice", Some(secret))
                    .timeout(Duration::from_secs(10)),
            )
            .map(|r| r.status)
            .map_err(|e| e.to_string())
        }),
    )
}

#[test]
fn a_sentinel_failover_under_load_fails_no_request_and_loses_no_revocation() {
    let d = tempfile::tempdir().expect("temp dir");
    let group = SentinelGroup::start(d.path());
    let fleet = Fleet::start_on(d.path(), 3, Some(&group.url()), "", |b| {
        b.account("alice", "alice-pw", &[])
    });
    let lb = fleet.client();
    let before = refresh_token(&lb);
    fleet
        .command(&["revoke", &format!("--jti={}", jti(&before))])
        .assert_success("revoke before the failover");
    for r in fleet.replicas() {
        refused_within("before the failover", || {
            r.refresh_grant(&before, SERVICE, "")
        });
    }
    let old_primary = group.primary_port();

    let keep = refresh_token(&lb);
    let work = load(&fleet, &keep);
    work.wait_ok(300, Duration::from_secs(60));
    let new_primary = group.failover();
    assert_ne!(new_primary, old_primary);
    assert_eq!(
        info_field(old_primary, "role").as_deref(),
        Some("slave"),
        "control: the old primary was demoted"
    );
    let at_failover = work.ok();
    work.wait_ok(at_failover + 300, Duration::from_secs(60));

    // Every replica follows the new primary.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, r) in fleet.replicas().iter().enumerate() {
        while metric(&metrics(r), "regauth_shared_state_up") != Some(1.0) {
            assert!(
                Instant::now() < deadline,
                "replica {i} does not follow again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            r.refresh_grant(&before, SERVICE, "")
                .body
                .contains("revoked"),
            "replica {i}: the revocation made before the failover"
        );
        // A cache miss reserves on the new primary (the old one would
        // answer READONLY).
        assert_eq!(
            r.get_token(&[("service", SERVICE)], Some(("alice", "wrong")))
                .status,
            401
        );
    }
    // Control: each replica really moved to another server.
    for (i, logs) in std::iter::once(fleet.first.logs())
        .chain(fleet.others.iter().map(|r| r.logs()))
        .enumerate()
    {
        assert!(
            logs.contains("another Redis server answers"),
            "replica {i} never reconnected to the new primary:\n{logs}"
        );
    }
    let new = group
        .nodes
        .iter()
        .find(|n| n.port() == new_primary)
        .expect("new primary");
    let field = format!("jti:{}", jti(&before));
    assert_eq!(
        new.call(&["HEXISTS", "regauth:{revoked}:entries", &field]),
        Resp::Int(1),
        "the new primary holds the revocation"
    );

    // A revocation after the failover reaches every replica.
    let after = refresh_token(&lb);
    fleet
        .command(&["revoke", &format!("--jti={}", jti(&after))])
        .assert_success("revoke after the failover");
    let mut slowest = Duration::ZERO;
    for r in fleet.replicas() {
        slowest = slowest.max(refused_within("after the failover", || {
            r.refresh_grant(&after, SERVICE, "")
        }));
    }
    eprintln!("after the failover, the revocation reached the last replica in {slowest:?}");

    let attempts: Vec<_> = work.finish().into_iter().flatten().collect();
    let failed: Vec<_> = attempts.iter().filter(|a| a.result != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the failover: {:?}",
        failed.len(),
        attempts.len(),
        tally(&attempts)
    );
    assert!(attempts.len() >= 600, "{} requests", attempts.len());
}

/// `rediss+sentinel://` with `shared_state_ca_file`: sentinels and data
/// nodes that speak TLS only (a certificate for 127.0.0.1 from a CA the
/// config names). Two replicas load, a revocation reaches both, a failover
/// is followed, and a revocation after it reaches both too. Without the CA
/// file the replicas cannot reach Redis: the certificate is really checked.
#[test]
fn a_tls_sentinel_fleet_follows_a_failover() {
    use regauth_e2e::redis::TlsFiles;
    let d = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::issue(&d.path().join("tls"));
    let group = SentinelGroup::start_tls(d.path(), tls.clone());
    assert!(group.url().starts_with("rediss+sentinel://"));
    let ca = format!("shared_state_ca_file: {}\n", tls.ca.display());
    let fleet = Fleet::start_on(d.path(), 2, Some(&group.url()), &ca, |b| {
        b.account("alice", "alice-pw", &[])
    });
    for r in fleet.replicas() {
        crate::fleet::wait_for_metric(r, "regauth_shared_state_up", 1.0);
    }
    let lb = fleet.client();
    for when in ["before", "after"] {
        let token = refresh_token(&lb);
        fleet
            .command(&["revoke", &format!("--jti={}", jti(&token))])
            .assert_success(&format!("revoke {when} the failover"));
        for r in fleet.replicas() {
            refused_within(when, || r.refresh_grant(&token, SERVICE, ""));
        }
        if when == "before" {
            group.failover();
            for (i, logs) in std::iter::once(fleet.first.logs())
                .chain(fleet.others.iter().map(|r| r.logs()))
                .enumerate()
            {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut logs = logs;
                while !logs.contains("another Redis server answers") {
                    assert!(
                        Instant::now() < deadline,
                        "replica {i} did not follow:\n{logs}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                    logs = if i == 0 {
                        fleet.first.logs()
                    } else {
                        fleet.others[i - 1].logs()
                    };
                }
            }
        }
    }

    // Control: without the CA, the sentinels' certificate is not trusted.
    let d2 = tempfile::tempdir().expect("temp dir");
    let untrusting = regauth_e2e::token_server::TokenServerBuilder::new()
        .account("alice", "alice-pw", &[])
        .extra_config(&format!("shared_state: {}\n", group.url()))
        .start(d2.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !untrusting.logs().contains("shared state unreachable") {
        assert!(Instant::now() < deadline, "{}", untrusting.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = metrics(untrusting.client());
    assert_eq!(
        metric(&text, "regauth_shared_state_up"),
        Some(0.0),
        "{text}"
    );
}
