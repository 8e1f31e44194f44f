//! What a replica does when Redis is slow, gone, or back empty, as the
//! README's table of states says: requests never wait for a slow Redis,
//! every revocation a replica holds stays in force while Redis is away or
//! comes back without it, and `revocation_max_staleness` bounds how long a
//! replica serves without knowing of new revocations.

use std::time::{Duration, Instant};

use regauth_e2e::fleet::Fleet;
use regauth_e2e::jwt::unverified_claims;
use regauth_e2e::ops::{metric, metrics};
use regauth_e2e::redis::{DelayProxy, Redis, RedisOptions, Resp};
use regauth_e2e::token_client::{HttpReply, TokenClient, send};
use regauth_e2e::token_server::{SERVICE, TokenServer, TokenServerBuilder};

use crate::fleet::{refused_within, wait_for_metric};

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

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

fn is_refused(reply: &HttpReply) -> bool {
    matches!(reply.status, 400 | 401) && reply.body.contains("revoked")
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Times `n` cached password requests one after the other.
fn cached_requests(client: &TokenClient, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let status = client
                .get_token(&[("service", SERVICE)], Some(("alice", "alice-pw")))
                .status;
            assert_eq!(status, 200);
            t.elapsed()
        })
        .collect()
}

fn revoke(server: &TokenServer, args: &[&str]) {
    let mut cmd = std::process::Command::new(regauth_e2e::bins::token_server_bin());
    cmd.arg("revoke")
        .args(args)
        .arg("--config")
        .arg(server.config_path());
    regauth_e2e::process::run(cmd, Duration::from_secs(60)).assert_success("revoke");
}

/// A Redis that answers 200 ms late, then 2 s late (a proxy holds each
/// reply back): cached password requests keep their median (within 1 ms,
/// or half the median, of rounds with no delay interleaved in the same
/// test), a cache miss goes on with the replica's own counts after
/// `shared_state_timeout`, a revoked credential stays refused, and a
/// revocation made through the slow Redis still arrives. Before, every
/// credentialed request waited for two round trips.
#[test]
fn a_slow_redis_costs_requests_with_cached_passwords_nothing() {
    let d = dir();
    let redis = Redis::start(d.path());
    let proxy = DelayProxy::start(redis.port());
    let server = TokenServerBuilder::new()
        .account("alice", "alice-pw", &[])
        .extra_config(&format!("shared_state: {}\n", proxy.url()))
        .start(d.path());
    let client = server.client();
    let revoked = refresh_token(client);
    revoke(&server, &[&format!("--jti={}", jti(&revoked))]);
    refused_within("before the delay", || {
        client.refresh_grant(&revoked, SERVICE, "")
    });
    cached_requests(client, 20);

    for delay in [Duration::from_millis(200), Duration::from_secs(2)] {
        let (mut plain, mut slow) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            proxy.set_delay(Duration::ZERO);
            plain.extend(cached_requests(client, 40));
            proxy.set_delay(delay);
            slow.extend(cached_requests(client, 40));
        }
        let (p50_plain, p50_slow) = (median(plain), median(slow));
        let allowed = Duration::from_millis(1).max(p50_plain / 2);
        eprintln!(
            "Redis {delay:?} late: cached median {p50_slow:?}, without delay {p50_plain:?} (200 requests each)"
        );
        assert!(
            p50_slow <= p50_plain + allowed,
            "{delay:?} late: cached median {p50_slow:?} against {p50_plain:?} without delay"
        );
        // Still slow: revocations held stay in force, other credentials
        // work, and a password the cache cannot answer is checked after
        // at most shared_state_timeout, with this replica's counts.
        assert!(
            is_refused(&client.refresh_grant(&revoked, SERVICE, "")),
            "{delay:?} late: the revoked token"
        );
        let fresh = refresh_token(client);
        assert_eq!(client.refresh_grant(&fresh, SERVICE, "").status, 200);
        let t = Instant::now();
        assert_eq!(
            client
                .get_token(&[("service", SERVICE)], Some(("alice", "wrong")))
                .status,
            401
        );
        assert!(
            t.elapsed() < delay + Duration::from_secs(2),
            "{delay:?} late: a cache miss took {:?}",
            t.elapsed()
        );
        // A revocation made through the slow Redis reaches the replica.
        revoke(&server, &[&format!("--jti={}", jti(&fresh))]);
        let start = Instant::now();
        while !is_refused(&client.refresh_grant(&fresh, SERVICE, "")) {
            assert!(
                start.elapsed() < delay * 4 + Duration::from_secs(5),
                "{delay:?} late: the revocation did not arrive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let text = metrics(client);
    assert_eq!(
        metric(&text, "regauth_shared_state_up"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "regauth_shared_state_fallbacks_total{purpose=\"limiter\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "control: the slow reservations fell back: {text}"
    );
}

/// Redis restarted empty (no persistence), then flushed while followed:
/// each time every replica keeps refusing what it holds, detects that
/// Redis lost the revocations, writes them back, logs it once and counts
/// it; a revocation made afterwards reaches every replica. Before, a Redis
/// restarted empty silently forgot every revocation.
#[test]
fn a_redis_that_comes_back_empty_gets_the_revocations_back() {
    let d = dir();
    let mut redis = Redis::start_with(
        d.path(),
        "redis",
        RedisOptions {
            persistent: false,
            ..RedisOptions::default()
        },
    );
    let fleet = Fleet::start_on(
        d.path(),
        3,
        Some(&redis.url()),
        "revocation_unavailable: allow\n",
        |b| b.account("alice", "alice-pw", &[]),
    );
    let lb = fleet.client();
    let revoked = refresh_token(&lb);
    let field = format!("jti:{}", jti(&revoked));
    fleet
        .command(&["revoke", &format!("--jti={}", jti(&revoked))])
        .assert_success("revoke");
    for r in fleet.replicas() {
        refused_within("before the restart", || {
            r.refresh_grant(&revoked, SERVICE, "")
        });
    }

    for (round, lose) in ["restart", "flush"].into_iter().enumerate() {
        let expected = (round + 1) as f64;
        match lose {
            "restart" => redis.restart_empty(),
            _ => {
                assert_eq!(redis.call(&["FLUSHALL"]), Resp::Simple("OK".into()));
            }
        }
        // Refused all along, on every replica.
        let deadline = Instant::now() + Duration::from_secs(20);
        for r in fleet.replicas() {
            assert!(is_refused(&r.refresh_grant(&revoked, SERVICE, "")));
        }
        for r in fleet.replicas() {
            loop {
                let text = metrics(r);
                if metric(&text, "regauth_shared_state_resets_total") == Some(expected)
                    && metric(&text, "regauth_shared_state_up") == Some(1.0)
                {
                    break;
                }
                assert!(
                    is_refused(&r.refresh_grant(&revoked, SERVICE, "")),
                    "after the {lose}: a replica honoured the revoked token"
                );
                assert!(
                    Instant::now() < deadline,
                    "after the {lose}: no reset counted within 20 s:\n{text}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert_eq!(
            redis.call(&["HEXISTS", "regauth:{revoked}:entries", &field]),
            Resp::Int(1),
            "after the {lose}: the revocation was written back to Redis"
        );
        let written: f64 = fleet
            .replicas()
            .iter()
            .map(|r| metric(&metrics(r), "regauth_revocations_written_back_total").unwrap_or(0.0))
            .sum();
        assert!(written >= expected, "{written} written back");
    }
    for (i, logs) in std::iter::once(fleet.first.logs())
        .chain(fleet.others.iter().map(|r| r.logs()))
        .enumerate()
    {
        assert_eq!(
            logs.matches("came back without its revocations").count(),
            2,
            "replica {i} logs each loss once:\n{logs}"
        );
    }
    // A new revocation after all that reaches every replica.
    let later = refresh_token(&lb);
    fleet
        .command(&["revoke", &format!("--jti={}", jti(&later))])
        .assert_success("revoke after");
    for r in fleet.replicas() {
        refused_within("a revocation after the loss", || {
            r.refresh_grant(&later, SERVICE, "")
        });
    }
}

/// With `revocation_max_staleness: 3s`: Redis killed, a replica serves
/// credentials from what it holds (and refuses what it holds revoked) for
/// 3 s; past that, `deny` answers 503 with `Retry-After` and says it is not
/// ready, `allow` serves on and counts; when Redis is back, both serve.
#[test]
fn revocation_max_staleness_bounds_how_long_a_replica_serves_without_redis() {
    for mode in ["deny", "allow"] {
        let d = dir();
        let mut redis = Redis::start(d.path());
        let server = TokenServerBuilder::new()
            .account("alice", "alice-pw", &[])
            .extra_config(&format!(
                "shared_state: {}\nrevocation_unavailable: {mode}\nrevocation_max_staleness: 3s\n",
                redis.url()
            ))
            .start(d.path());
        let client = server.client();
        let ready = || send(client.http().get(format!("{}/readyz", client.base_url())));
        let token = refresh_token(client);
        let revoked = refresh_token(client);
        revoke(&server, &[&format!("--jti={}", jti(&revoked))]);
        refused_within("before", || client.refresh_grant(&revoked, SERVICE, ""));

        redis.kill();
        let killed = Instant::now();
        wait_for_metric(client, "regauth_shared_state_up", 0.0);
        // Within the bound: served, the revoked token refused.
        assert_eq!(
            client.refresh_grant(&token, SERVICE, "").status,
            200,
            "{mode}"
        );
        assert!(is_refused(&client.refresh_grant(&revoked, SERVICE, "")));
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "control: checked within the bound ({:?})",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_secs(4).saturating_sub(killed.elapsed()));
        let reply = client.refresh_grant(&token, SERVICE, "");
        let text = metrics(client);
        match mode {
            "deny" => {
                assert_eq!(reply.status, 503, "past the bound: {}", reply.body);
                assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
                assert_eq!(ready().status, 503);
            }
            _ => {
                assert_eq!(reply.status, 200, "past the bound, allow: {}", reply.body);
                assert_eq!(ready().status, 200);
                assert!(
                    metric(
                        &text,
                        "regauth_shared_state_fallbacks_total{purpose=\"revocation\"}"
                    )
                    .unwrap_or(0.0)
                        >= 1.0,
                    "{text}"
                );
            }
        }
        assert!(
            metric(&text, "regauth_revocations_stale_seconds").unwrap_or(0.0) >= 1.0,
            "{text}"
        );
        assert!(is_refused(&client.refresh_grant(&revoked, SERVICE, "")));
        // Anonymous requests carry no credential to check.
        assert_eq!(client.get_token(&[("service", SERVICE)], None).status, 200);

        redis.start_again();
        wait_for_metric(client, "regauth_shared_state_up", 1.0);
        assert_eq!(
            client.refresh_grant(&token, SERVICE, "").status,
            200,
            "{mode}"
        );
        assert_eq!(ready().status, 200);
        assert!(is_refused(&client.refresh_grant(&revoked, SERVICE, "")));
    }
}

/// Revocations the previous build kept (a string key each, with its own
/// TTL) are moved, at a replica's first connection, to where every replica
/// follows them: upgrading a fleet loses none.
#[test]
fn revocations_kept_by_the_previous_layout_are_moved_not_lost() {
    let d = dir();
    let redis = Redis::start(d.path());
    let old = "regauth:{revoked}:sub:*:*:alice";
    assert_eq!(
        redis.call(&[
            "SET",
            old,
            r#"{"target":"subject","subject":"alice","revoked_at":1765000000}"#,
            "PX",
            "3600000",
        ]),
        Resp::Simple("OK".into())
    );
    let server = TokenServerBuilder::new()
        .account("alice", "alice-pw", &[])
        .account("bob", "bob-pw", &[])
        .extra_config(&format!("shared_state: {}\n", redis.url()))
        .start(d.path());
    let client = server.client();
    refused_within("alice, revoked by the previous layout", || {
        client.password_grant("alice", "alice-pw", SERVICE, "", false)
    });
    assert_eq!(
        client
            .password_grant("bob", "bob-pw", SERVICE, "", false)
            .status,
        200,
        "control: bob is not revoked"
    );
    assert_eq!(
        redis.call(&["HEXISTS", "regauth:{revoked}:entries", "sub:*:*:alice"]),
        Resp::Int(1)
    );
    assert_eq!(redis.call(&["EXISTS", old]), Resp::Int(0));
    let ttl = redis
        .call(&["ZSCORE", "regauth:{revoked}:expiry", "sub:*:*:alice"])
        .text()
        .expect("an expiry");
    assert!(!ttl.is_empty());
}

/// FLUSHALL, then at once a revocation of something else. Before, the
/// `revoke` restarted the stream's numbering and set its own epoch marker,
/// so every replica saw a gap, reloaded a snapshot holding only the new
/// entry, took that marker as the one it followed, and forgot every
/// revocation it held, for good. Now a snapshot whose marker is not the
/// one a replica followed means a loss: it writes back what it holds first.
/// Watched for 12 s (two housekeeping rounds on every replica).
#[test]
fn a_revocation_right_after_a_flush_leaves_every_revocation_held_in_force() {
    let d = dir();
    let redis = Redis::start_with(
        d.path(),
        "redis",
        RedisOptions {
            persistent: false,
            ..RedisOptions::default()
        },
    );
    let fleet = Fleet::start_on(
        d.path(),
        3,
        Some(&redis.url()),
        "revocation_unavailable: allow\n",
        |b| b.account("alice", "alice-pw", &[]),
    );
    let lb = fleet.client();
    let old = refresh_token(&lb);
    let later = refresh_token(&lb);
    for r in fleet.replicas() {
        assert_eq!(r.refresh_grant(&old, SERVICE, "").status, 200, "control");
        assert_eq!(r.refresh_grant(&later, SERVICE, "").status, 200, "control");
    }
    fleet
        .command(&["revoke", &format!("--jti={}", jti(&old))])
        .assert_success("revoke the old token");
    for r in fleet.replicas() {
        refused_within("control: revoked before the flush", || {
            r.refresh_grant(&old, SERVICE, "")
        });
    }
    // Every follower back in its blocking read.
    std::thread::sleep(Duration::from_secs(1));

    assert_eq!(redis.call(&["FLUSHALL"]), Resp::Simple("OK".into()));
    let flushed = Instant::now();
    fleet
        .command(&["revoke", &format!("--jti={}", jti(&later))])
        .assert_success("revoke another token right after the flush");
    let deadline = flushed + Duration::from_secs(12);
    let mut honoured = Vec::new();
    while Instant::now() < deadline {
        for (i, r) in fleet.replicas().iter().enumerate() {
            let reply = r.refresh_grant(&old, SERVICE, "");
            if !is_refused(&reply) {
                honoured.push(format!(
                    "replica {i} after {:?}: {}",
                    flushed.elapsed(),
                    reply.status
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for r in fleet.replicas() {
        assert!(
            is_refused(&r.refresh_grant(&later, SERVICE, "")),
            "control: the revocation made after the flush arrived"
        );
    }
    let resets: Vec<Option<f64>> = fleet
        .replicas()
        .iter()
        .map(|r| metric(&metrics(r), "regauth_shared_state_resets_total"))
        .collect();
    let in_redis = redis.call(&[
        "HEXISTS",
        "regauth:{revoked}:entries",
        &format!("jti:{}", jti(&old)),
    ]);
    assert!(
        honoured.is_empty(),
        "a revocation every replica held was honoured after FLUSHALL and a revoke ({} times; \
         first {:?}); resets counted {resets:?}; the entry in Redis: {in_redis:?}",
        honoured.len(),
        honoured.first()
    );
    assert_eq!(in_redis, Resp::Int(1), "written back to Redis");
    assert!(
        resets.iter().all(|r| r.unwrap_or(0.0) >= 1.0),
        "control: every replica saw the loss: {resets:?}"
    );
}

/// Whether alice and carol sign in on `client`: (alice's status, carol
/// refused as revoked).
fn alice_and_carol(client: &TokenClient) -> (u16, bool) {
    let alice = client.password_grant("alice", "alice-pw", SERVICE, "", false);
    let carol = client.password_grant("carol", "carol-pw", SERVICE, "", false);
    (alice.status, is_refused(&carol))
}

/// Polls `client` for 5 s until alice signs in and carol is refused.
fn wait_alice_in_carol_out(client: &TokenClient, what: &str) {
    let start = Instant::now();
    loop {
        let seen = alice_and_carol(client);
        if seen == (200, true) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: alice {} and carol refused {} after 5 s",
            seen.0,
            seen.1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A lift stays lifted and a revocation survives, whatever Redis or one
/// replica missed: alice is revoked; a third replica is cut off from Redis;
/// alice's revocation is lifted and carol revoked; Redis then restarts from
/// a copy made before both (it lost the lift and carol's revocation, as a
/// promoted replica that lagged would); the two replicas that saw both
/// write them back; then the cut-off replica comes back, still holding
/// alice's revocation. Before, the write-back after a run-ID change could
/// not tell a lost revocation from a lifted one: the lift came undone, and
/// the cut-off replica revoked alice again for the whole fleet.
#[test]
fn a_lift_stays_lifted_and_a_revocation_survives_whatever_redis_or_a_cut_off_replica_missed() {
    let d = dir();
    let mut redis = Redis::start(d.path());
    let fleet = Fleet::start_on(d.path(), 2, Some(&redis.url()), "", |b| {
        b.account("alice", "alice-pw", &[])
            .account("carol", "carol-pw", &[])
    });
    let proxy = DelayProxy::start(redis.port());
    let d2 = dir();
    let cut_off = TokenServerBuilder::new()
        .account("alice", "alice-pw", &[])
        .account("carol", "carol-pw", &[])
        .extra_config(&format!("shared_state: {}\n", proxy.url()))
        .start(d2.path());
    let connected = fleet.replicas();
    let all: Vec<&TokenClient> = connected
        .iter()
        .copied()
        .chain(std::iter::once(cut_off.client()))
        .collect();
    for r in &all {
        assert_eq!(alice_and_carol(r), (200, false), "control: both sign in");
    }
    fleet
        .command(&["revoke", "--subject", "alice"])
        .assert_success("revoke alice");
    for r in &all {
        refused_within("control: alice revoked everywhere", || {
            r.password_grant("alice", "alice-pw", SERVICE, "", false)
        });
    }

    proxy.cut();
    wait_for_metric(cut_off.client(), "regauth_shared_state_up", 0.0);
    let before = d.path().join("redis-before");
    redis.kill();
    redis.copy_data(&before);
    redis.start_again();
    let out = fleet.command(&["revoke", "--lift", "--subject", "alice"]);
    out.assert_success("lift alice");
    assert!(out.stdout.contains("lifted"), "{}", out.describe());
    fleet
        .command(&["revoke", "--subject", "carol"])
        .assert_success("revoke carol");
    for r in &connected {
        wait_alice_in_carol_out(r, "control: the lift and carol's revocation arrived");
    }
    assert!(
        is_refused(
            &cut_off
                .client()
                .password_grant("alice", "alice-pw", SERVICE, "", false)
        ),
        "control: the cut-off replica still holds alice's revocation"
    );

    let run_id = redis.info("run_id");
    redis.restart_from(&before);
    assert_ne!(
        redis.info("run_id"),
        run_id,
        "control: another Redis server"
    );
    let written = |r: &TokenClient| {
        metric(&metrics(r), "regauth_revocations_written_back_total").unwrap_or(0.0)
    };
    let start = Instant::now();
    while connected.iter().map(|r| written(r)).sum::<f64>() < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "control: Redis lost carol's revocation and no replica wrote it back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for r in &connected {
        wait_alice_in_carol_out(r, "after Redis lost the lift and the revocation");
    }

    proxy.heal();
    wait_for_metric(cut_off.client(), "regauth_shared_state_up", 1.0);
    std::thread::sleep(Duration::from_secs(1));
    let seen: Vec<(u16, bool)> = all.iter().map(|r| alice_and_carol(r)).collect();
    let fields: Vec<String> = redis
        .call(&["HKEYS", "regauth:{revoked}:entries"])
        .items()
        .iter()
        .filter_map(Resp::text)
        .collect();
    let list = fleet.command(&["revoke", "--list"]);
    assert!(
        seen.iter().all(|s| *s == (200, true)),
        "after the cut-off replica came back, (alice's status, carol refused) per replica: \
         {seen:?}; entries in Redis {fields:?}; revoke --list:\n{}",
        list.stdout
    );
    assert!(
        fields.iter().any(|f| f.ends_with(":carol"))
            && !fields.iter().any(|f| f.ends_with(":alice")),
        "Redis holds carol's revocation and not alice's: {fields:?}"
    );
}
