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
