//! The fleet-wide limiter keeps its state bounded and its promises: only
//! attempts that run a hash leave a record, every record expires, a
//! reservation whose outcome never arrives stops counting within seconds,
//! a success clears the account's record even when it came from the cache,
//! and concurrent checks of the same credential cost one attempt.

use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use regauth_e2e::fleet::Fleet;
use regauth_e2e::ops::{metric, metrics};
use regauth_e2e::redis::{DelayProxy, Redis, Resp};
use regauth_e2e::token_client::{TokenClient, http_client_builder};
use regauth_e2e::token_server::{SERVICE, TokenServerBuilder};

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A client of `base` whose connections come from `source` (loopback has
/// all of 127.0.0.0/8, so each test client can have its own address).
pub fn client_from(base: &str, source: IpAddr) -> TokenClient {
    let http = http_client_builder()
        .local_address(source)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("build client");
    TokenClient::with_http(base, http)
}

/// The limiter's keys in Redis.
pub fn limiter_keys(redis: &Redis) -> Vec<String> {
    redis
        .call(&["KEYS", "regauth:{limit}:*"])
        .items()
        .iter()
        .filter_map(Resp::text)
        .collect()
}

/// A GET /token with Basic credentials; the status.
fn status(client: &TokenClient, user: &str, password: &str) -> u16 {
    client
        .get_token(&[("service", SERVICE)], Some((user, password)))
        .status
}

/// Before, every attempt reserved a record in Redis that lived 11 minutes,
/// even when it never ran a hash (503 from the hash queue): about 4,500
/// keys in 25 s for 129 hashes. Now only attempts that ran a hash leave a
/// record, reservations expire within seconds, and every key has a TTL.
#[test]
fn attempts_that_never_run_a_hash_leave_no_lasting_limiter_record() {
    let d = dir();
    let fleet = Fleet::start(
        d.path(),
        1,
        true,
        "limits:\n  max_concurrent_password_checks: 1\n  password_check_queue_timeout: 100ms\n",
        |b| {
            b.account("alice", "alice-pw", &[])
                .hash_args(&["--cost", "12"])
        },
    );
    let redis = fleet.redis.as_ref().expect("redis");
    let base = fleet.first.url();
    const ADDRESSES: u8 = 60;
    const NAMES: usize = 4;
    let start = Arc::new(Barrier::new(usize::from(ADDRESSES)));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..ADDRESSES)
            .map(|a| {
                let (start, base) = (Arc::clone(&start), base.clone());
                scope.spawn(move || {
                    let client = client_from(&base, IpAddr::from([127, 0, 1, a + 2]));
                    start.wait();
                    (0..NAMES)
                        .map(|i| status(&client, &format!("nobody-{a}-{i}"), "wrong"))
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("spray thread"))
            .collect()
    });
    let busy = statuses.iter().filter(|s| **s == 503).count();
    let hashes = metric(
        &metrics(fleet.first.client()),
        "regauth_password_hashes_total",
    )
    .expect("hash counter");
    assert!(
        busy > statuses.len() / 2,
        "the hash queue must turn most attempts away for this test to mean anything: {busy} of {}",
        statuses.len()
    );
    // Reservations of attempts that never ran a hash are gone within 5 s.
    std::thread::sleep(Duration::from_secs(6));
    let keys = limiter_keys(redis);
    let records: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("regauth:{limit}:a:") || k.starts_with("regauth:{limit}:n:"))
        .collect();
    assert!(
        records.len() as f64 <= 2.0 * hashes,
        "{} limiter records for {hashes} hashes run ({busy} attempts got 503), such as {:?}",
        records.len(),
        &records[..records.len().min(8)]
    );
    let mut bytes = 0;
    for key in &keys {
        let ttl = redis.call(&["PTTL", key]).int().expect("PTTL");
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
        bytes += redis.call(&["MEMORY", "USAGE", key]).int().unwrap_or(0);
    }
    eprintln!(
        "{} attempts from {ADDRESSES} addresses, {busy} turned away (503), {hashes} hashes: {} limiter keys, {bytes} bytes (MEMORY USAGE)",
        statuses.len(),
        keys.len()
    );
    // A legitimate sign-in from another address still works.
    let alice = client_from(&base, IpAddr::from([127, 0, 2, 1]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&alice, "alice", "alice-pw") != 200 {
        assert!(Instant::now() < deadline, "alice cannot sign in");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Before, a reservation whose outcome never arrived held room for 30 s:
/// a user with the right password got 429 for 28 s. Now it expires by
/// itself within 5 s, whether the replica that made it was killed in the
/// middle of the check or Redis answered the reservation too late.
#[test]
fn a_reservation_whose_outcome_never_arrives_stops_counting_within_seconds() {
    // A replica killed while its five reserved checks run.
    let d = dir();
    let mut fleet = Fleet::start(d.path(), 2, true, "password_cache_ttl: 0s\n", |b| {
        b.account("alice", "alice-pw", &[])
            .hash_args(&["--cost", "13"])
    });
    let doomed = fleet.others[0].client().clone();
    let guesses: Vec<_> = (0..5)
        .map(|i| {
            let c = doomed.clone();
            std::thread::spawn(move || {
                let _ = c
                    .http()
                    .get(c.token_url())
                    .query(&[("service", SERVICE)])
                    .basic_auth("alice", Some(format!("guess-{i}")))
                    .send();
            })
        })
        .collect();
    let redis = fleet.redis.as_ref().expect("redis");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.call(&["EXISTS", "regauth:{limit}:a:alice"]) != Resp::Int(1) {
        assert!(
            Instant::now() < deadline,
            "the guesses never reserved in Redis"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    fleet.others[0].kill();
    let killed = Instant::now();
    for g in guesses {
        let _ = g.join();
    }
    let survivor = fleet.first.client();
    assert_eq!(
        status(survivor, "alice", "alice-pw"),
        429,
        "control: the dead replica's reservations fill alice's allowance"
    );
    wait_for_200(survivor, killed, Duration::from_secs(8), "after the kill");

    // Redis answering the reservations after the timeout.
    let d = dir();
    let redis = Redis::start(d.path());
    let proxy = DelayProxy::start(redis.port());
    let server = TokenServerBuilder::new()
        .account("alice", "alice-pw", &[])
        .extra_config(&format!(
            "shared_state: {}\npassword_cache_ttl: 0s\nrevocation_unavailable: allow\n",
            proxy.url()
        ))
        .start(d.path());
    let client = server.client();
    assert_eq!(status(client, "alice", "alice-pw"), 200, "control");
    proxy.set_delay(Duration::from_millis(600));
    let late = Instant::now();
    std::thread::scope(|scope| {
        for i in 0..5 {
            scope.spawn(move || status(client, "alice", &format!("guess-{i}")));
        }
    });
    proxy.set_delay(Duration::ZERO);
    let held = redis.call(&["HGETALL", "regauth:{limit}:a:alice"]).items();
    assert!(
        !held.is_empty(),
        "control: Redis holds alice's reservations made too late to answer"
    );
    wait_for_200(client, late, Duration::from_secs(8), "after late replies");
}

fn wait_for_200(client: &TokenClient, since: Instant, within: Duration, what: &str) {
    loop {
        let s = status(client, "alice", "alice-pw");
        if s == 200 {
            return;
        }
        assert!(
            since.elapsed() < within,
            "{what}: alice still gets {s} {:?} later",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// ok, bad ×4, ok, bad, ok: the last must be 200 whether the successes
/// came from the password cache or not, with shared state and without.
/// Before, with `password_cache_ttl` 60 s, cached successes cleared nothing
/// and the sequence ended in 429.
#[test]
fn a_cached_success_clears_the_accounts_failures() {
    for shared in [false, true] {
        let d = dir();
        let fleet = Fleet::start(d.path(), 1, shared, "password_cache_ttl: 60s\n", |b| {
            b.account("alice", "alice-pw", &[])
        });
        let c = fleet.first.client();
        let mut seen = Vec::new();
        for (password, expect) in [
            ("alice-pw", 200),
            ("bad", 401),
            ("bad", 401),
            ("bad", 401),
            ("bad", 401),
            ("alice-pw", 200),
            ("bad", 401),
            ("alice-pw", 200),
        ] {
            let s = status(c, "alice", password);
            seen.push(s);
            assert_eq!(s, expect, "shared: {shared}; statuses so far {seen:?}");
        }
        let text = metrics(c);
        assert!(
            metric(&text, "regauth_password_cache_total{result=\"hit\"}").unwrap_or(0.0) >= 2.0,
            "control: the successes after the first came from the cache:\n{text}"
        );
    }
}

/// Before, 16 concurrent first sign-ins with the right password got 11 ×
/// 429 with shared state (each reserved its own attempt before joining the
/// running check) and 0 without. Now they share one check in both modes.
#[test]
fn a_burst_of_correct_sign_ins_costs_one_check_with_shared_state_too() {
    for shared in [false, true] {
        let d = dir();
        let fleet = Fleet::start(d.path(), 1, shared, "", |b| {
            b.account("alice", "alice-pw", &[])
                .hash_args(&["--cost", "12"])
        });
        let c = fleet.first.client();
        let start = Arc::new(Barrier::new(16));
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..16)
                .map(|_| {
                    let start = Arc::clone(&start);
                    scope.spawn(move || {
                        start.wait();
                        status(c, "alice", "alice-pw")
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(
            statuses.iter().all(|s| *s == 200),
            "shared: {shared}: {statuses:?}"
        );
        let hashes = metric(&metrics(c), "regauth_password_hashes_total").expect("hashes");
        assert_eq!(hashes, 1.0, "shared: {shared}: one check served all 16");
    }
}

/// The `--maxmemory-policy` the shipped Redis manifest runs with.
fn shipped_policy() -> String {
    let path = regauth_e2e::bins::workspace_root().join("deploy/kubernetes/fleet/50-redis.yaml");
    let text = std::fs::read_to_string(&path).expect("read the Redis manifest");
    let args: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("- ").trim_matches('"'))
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--maxmemory-policy")
        .expect("the manifest sets --maxmemory-policy");
    args[at + 1].to_owned()
}

/// A spray of wrong passwords for invented names from 60 addresses against
/// a Redis with the shipped eviction policy whose small `maxmemory` is
/// already nearly full of limiter records: Redis stays under its bound
/// (evicting limiter records, the control that it was under pressure),
/// refuses no write for lack of memory, alice keeps signing in, and not
/// one revocation is evicted.
#[test]
fn a_spray_against_maxmemory_with_the_shipped_policy_evicts_no_revocation() {
    let policy = shipped_policy();
    assert_eq!(policy, "volatile-ttl", "the README explains this policy");
    let d = dir();
    let redis = Redis::start_with(
        d.path(),
        "redis",
        regauth_e2e::redis::RedisOptions {
            persistent: false,
            maxmemory: Some("4mb".into()),
            maxmemory_policy: Some(policy),
            ..regauth_e2e::redis::RedisOptions::default()
        },
    );
    let fleet = Fleet::start_on(d.path(), 1, Some(&redis.url()), "", |b| {
        b.account("alice", "alice-pw", &[])
    });
    let base = fleet.first.url();
    let alice = client_from(&base, IpAddr::from([127, 0, 3, 1]));
    let mut revoked = Vec::new();
    for _ in 0..20 {
        let reply = alice.password_grant("alice", "alice-pw", SERVICE, "", true);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let token = reply.json_str("refresh_token");
        let jti = regauth_e2e::jwt::unverified_claims(&token)["jti"]
            .as_str()
            .expect("jti")
            .to_owned();
        fleet
            .command(&["revoke", &format!("--jti={jti}")])
            .assert_success("revoke");
        revoked.push(token);
    }
    assert_eq!(
        redis.call(&["HLEN", "regauth:{revoked}:entries"]),
        Resp::Int(20)
    );
    // Nearly full: limiter-like records with TTLs.
    let fill = "local n = 0
while tonumber(string.match(redis.call('INFO', 'memory'), 'used_memory:(%d+)')) < tonumber(ARGV[1]) and n < 100000 do
  n = n + 1
  redis.call('SET', 'regauth:{limit}:pad:' .. n, string.rep('x', 512), 'PX', 600000)
end
return n";
    let filled = redis.call(&["EVAL", fill, "0", &(4_194_304 - 8_192).to_string()]);
    assert!(filled.int().unwrap_or(0) > 100, "padding: {filled:?}");

    let used = || -> u64 {
        redis
            .info("used_memory")
            .expect("used_memory")
            .parse()
            .expect("number")
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let (statuses, peak) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(used());
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let sprayers: Vec<_> = (0..60u8)
            .map(|a| {
                let base = base.clone();
                scope.spawn(move || {
                    let client = client_from(&base, IpAddr::from([127, 0, 4, a + 2]));
                    for i in 0..4 {
                        status(
                            &client,
                            &format!("nobody-{a}-{i}-{}", "x".repeat(64)),
                            "wrong",
                        );
                    }
                })
            })
            .collect();
        let logins: Vec<u16> = (0..20)
            .map(|i| {
                // A cache miss each time: a new password check reserves.
                let password = if i % 2 == 0 { "alice-pw" } else { "wrong" };
                status(&alice, "alice", password)
            })
            .collect();
        for s in sprayers {
            s.join().expect("sprayer");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (logins, sampler.join().expect("sampler"))
    });
    for (i, s) in statuses.iter().enumerate() {
        let want = if i % 2 == 0 { 200 } else { 401 };
        assert_eq!(*s, want, "alice's attempt {i}: {statuses:?}");
    }
    let max: u64 = redis
        .info("maxmemory")
        .expect("maxmemory")
        .parse()
        .expect("number");
    let evicted: u64 = redis
        .info("evicted_keys")
        .expect("evicted_keys")
        .parse()
        .expect("number");
    let oom = redis
        .call(&["INFO", "errorstats"])
        .text()
        .unwrap_or_default();
    eprintln!(
        "spray against maxmemory {max}: used at most {peak} while sampled, {} now, {evicted} keys evicted, {} limiter keys left",
        used(),
        limiter_keys(&redis).len()
    );
    assert!(evicted > 0, "control: Redis had to evict to make room");
    // Redis evicts before each write, so between commands it may sit a
    // client buffer's worth above the bound, never more.
    assert!(
        peak.max(used()) <= max + 64 * 1024,
        "used_memory reached {peak}, over maxmemory {max}"
    );
    assert!(
        !oom.contains("OOM"),
        "Redis refused writes for lack of memory: {oom}"
    );
    assert_eq!(
        redis.call(&["HLEN", "regauth:{revoked}:entries"]),
        Resp::Int(20),
        "no revocation was evicted"
    );
    for token in &revoked {
        let reply = alice.refresh_grant(token, SERVICE, "");
        assert!(reply.body.contains("revoked"), "{}", reply.body);
    }
}

/// Cache hits summed over `clients`.
fn cache_hits(clients: &[&TokenClient]) -> f64 {
    clients
        .iter()
        .map(|c| metric(&metrics(c), "regauth_password_cache_total{result=\"hit\"}").unwrap_or(0.0))
        .sum()
}

/// Ten (bad, ok) pairs, each ok from the password cache right after the
/// failure, on one replica and spread over three (each step on the next
/// replica): no failure may be left in Redis, and bad ×4, ok ends in 200.
/// Before, the failure was settled in Redis in the background and
/// announced a moment later, and the cached success cleared only what its
/// replica had already heard of: failures piled up, and the last ok got
/// 429.
#[test]
fn a_cached_success_right_after_a_failure_clears_it_on_one_replica_and_across_three() {
    let mut report = Vec::new();
    for replicas in [1usize, 3] {
        let d = dir();
        let fleet = Fleet::start(d.path(), replicas, true, "password_cache_ttl: 60s\n", |b| {
            b.account("alice", "alice-pw", &[])
        });
        let redis = fleet.redis.as_ref().expect("redis");
        let rs = fleet.replicas();
        let get = |i: usize, pw: &str| status(rs[i % rs.len()], "alice", pw);
        for i in 0..rs.len() {
            assert_eq!(get(i, "alice-pw"), 200, "warm each replica's cache");
        }
        let mut seen = Vec::new();
        for i in 0..10 {
            seen.push(get(2 * i, "bad"));
            seen.push(get(2 * i + 1, "alice-pw"));
        }
        std::thread::sleep(Duration::from_millis(300));
        let left = redis
            .call(&["HGET", "regauth:{limit}:a:alice", "f"])
            .text()
            .unwrap_or_else(|| "none".into());
        for i in 0..4 {
            seen.push(get(i, "bad"));
        }
        let last = get(4, "alice-pw");
        assert!(
            cache_hits(&rs) >= 10.0,
            "control: the successes came from the caches"
        );
        assert!(
            seen.iter().step_by(2).take(10).all(|s| *s == 401),
            "control: the failures were checked: {seen:?}"
        );
        report.push((replicas, left, last, seen));
    }
    assert!(
        report
            .iter()
            .all(|(_, left, last, _)| left == "none" && *last == 200),
        "(replicas, failures left in Redis after 10 (bad, ok) pairs, the last ok, statuses): {report:?}"
    );
}

/// ok, bad ×4, ok, bad, ok, bad ×4, ok with each step on the next of three
/// replicas (an L4 balancer) and every success from that replica's cache:
/// each success clears the failures made before it, on whichever replica.
/// Five rounds, since before it failed about one time in ten.
#[test]
fn a_cached_success_clears_failures_made_on_other_replicas() {
    let d = dir();
    let fleet = Fleet::start(d.path(), 3, true, "password_cache_ttl: 60s\n", |b| {
        b.account("alice", "alice-pw", &[])
    });
    let replicas = fleet.replicas();
    for r in &replicas {
        assert_eq!(status(r, "alice", "alice-pw"), 200, "warm each cache");
    }
    let steps = [
        ("alice-pw", 200),
        ("bad", 401),
        ("bad", 401),
        ("bad", 401),
        ("bad", 401),
        ("alice-pw", 200),
        ("bad", 401),
        ("alice-pw", 200),
        ("bad", 401),
        ("bad", 401),
        ("bad", 401),
        ("bad", 401),
        ("alice-pw", 200),
    ];
    for round in 0..5u8 {
        // Each round from an address of its own: the network's record,
        // which no success clears, allows 20 failures.
        let source = format!("127.0.9.{}", round + 1).parse().expect("address");
        let clients: Vec<TokenClient> = replicas
            .iter()
            .map(|r| client_from(r.base_url(), source))
            .collect();
        let mut seen = Vec::new();
        for (i, (password, expect)) in steps.into_iter().enumerate() {
            let s = status(&clients[(i + usize::from(round)) % 3], "alice", password);
            seen.push(s);
            assert_eq!(s, expect, "round {round}: statuses so far {seen:?}");
        }
    }
    assert!(
        cache_hits(&replicas) >= 20.0,
        "control: the successes came from the caches"
    );
}
