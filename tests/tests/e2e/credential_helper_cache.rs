//! The helper's credential cache, counted at the token server: concurrent
//! invocations make one exchange, a corrupt file is refetched, a stale
//! credential is refreshed (or, with the server down, served with a
//! warning), an expired one never served; files are private; invocations
//! killed mid-write leave neither a corrupt file nor, after the next run, a
//! temporary one; debug logs go to stderr and never carry a secret.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use regauth_e2e::credential_helper::audit::{audit_lines, helper_exchanges, wait_for_count};
use regauth_e2e::credential_helper::{
    CacheTimes, HelperCredentials, HelperEnv, Identity, Output, RegistryEntry, assert_real_failure,
    is_whole_cache_file, mode, parse_get, read_cache_file, set_cache_times, unix_now,
};
use regauth_e2e::secrets::random_bytes;

use crate::credential_helper_common::{
    HelperServer, account_identity, leaks, service_account_identity, signature, workflow_token,
};

/// The registry host the cache tests configure.
const HOST: &str = "registry.cache.test";
/// The variable the `oidc_env` source reads.
const ID_TOKEN_VARIABLE: &str = "REGAUTH_E2E_ID_TOKEN";
/// Concurrent `get`s on a cold cache.
const PARALLEL_GETS: usize = 50;

#[test]
fn fifty_parallel_gets_on_a_cold_cache_make_one_exchange() {
    let hs = HelperServer::start();
    let (identity, _) = service_account_identity(&hs.k8s, &hs.new_dir("id"), "team-a");
    let helper = hs.helper(RegistryEntry::new(&[HOST], &hs.url(), identity));
    assert!(helper.cache_files().is_empty(), "the cache starts cold");

    let started = Instant::now();
    let replies: Vec<HelperCredentials> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..PARALLEL_GETS)
            .map(|i| {
                let helper = &helper;
                scope.spawn(move || parse_get(&helper.get(HOST), &format!("parallel get #{i}")))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a get thread panicked"))
            .collect()
    });
    eprintln!("{PARALLEL_GETS} parallel gets took {:?}", started.elapsed());

    let first = &replies[0].secret;
    assert!(
        replies.iter().all(|r| &r.secret == first),
        "every concurrent get returns the one exchanged credential"
    );
    let exchanges = wait_for_count(|| helper_exchanges(hs.server()), 1);
    assert_eq!(
        exchanges,
        1,
        "{PARALLEL_GETS} concurrent gets on a cold cache must make exactly one exchange:\n{}",
        audit_lines(hs.server()).join("\n")
    );

    let file = helper.only_cache_file();
    assert_eq!(mode(&file), 0o600, "cache file {} mode", file.display());
    assert_eq!(mode(helper.cache_dir()), 0o700, "cache directory mode");
    let (value, times) = read_cache_file(&file);
    assert_eq!(
        value["refresh_token"],
        first.as_str(),
        "the file holds the credential served"
    );
    assert!(times.issued_at <= unix_now() && times.expires_at > unix_now());
    let leftovers = helper.temp_files();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {:?}",
        file_names(&leftovers)
    );
}

#[test]
fn a_corrupt_cache_file_is_discarded_and_refetched() {
    let hs = HelperServer::start();
    let (identity, _) = service_account_identity(&hs.k8s, &hs.new_dir("id"), "team-a");
    let helper = hs.helper(RegistryEntry::new(&[HOST], &hs.url(), identity));
    let mut previous = helper.get_ok(HOST).secret;
    let file = helper.only_cache_file();

    let corruptions: [&[u8]; 4] = [
        b"{\"version\":1,\"refresh_tok",
        b"",
        b"null",
        &[0xff, 0xfe, 0x00, 0x80],
    ];
    for (i, garbage) in corruptions.iter().enumerate() {
        std::fs::write(&file, garbage).expect("corrupt the cache file");
        let out = helper.get(HOST);
        let creds = parse_get(&out, &format!("get after corruption #{i}"));
        assert_ne!(
            creds.secret, previous,
            "corruption #{i}: a new credential was fetched"
        );
        assert_eq!(
            wait_for_count(|| helper_exchanges(hs.server()), i + 2),
            i + 2,
            "corruption #{i}: one more exchange"
        );
        let (value, _) = read_cache_file(&helper.only_cache_file());
        assert_eq!(value["refresh_token"], creds.secret.as_str(), "rewritten");
        assert_eq!(mode(&file), 0o600);
        previous = creds.secret;
    }
}

#[test]
fn stale_credentials_are_refreshed_or_served_with_a_warning_when_the_server_is_down() {
    let mut hs = HelperServer::start();
    let (identity, subject_token) = service_account_identity(&hs.k8s, &hs.new_dir("id"), "team-a");
    let helper = hs.helper(RegistryEntry::new(&[HOST], &hs.url(), identity));

    let first = helper.get_ok(HOST);
    let cached = helper.get_ok(HOST);
    assert_eq!(cached.secret, first.secret, "fresh: served from the cache");
    assert_eq!(helper_exchanges(hs.server()), 1);

    // Past half its lifetime: refreshed while the server is up.
    let file = helper.only_cache_file();
    let (_, times) = read_cache_file(&file);
    let stale = |t: CacheTimes| CacheTimes {
        issued_at: 2 * unix_now() - t.expires_at - 60,
        expires_at: t.expires_at,
    };
    set_cache_times(&file, stale(times));
    let refreshed = helper.get_ok(HOST);
    assert_ne!(refreshed.secret, first.secret, "stale: a new credential");
    assert_eq!(wait_for_count(|| helper_exchanges(hs.server()), 2), 2);

    // Stale again, and the server gone: the cached credential, with a warning.
    let (_, times) = read_cache_file(&file);
    set_cache_times(&file, stale(times));
    hs.stop();
    let out = helper.get(HOST);
    let served = parse_get(&out, "get of a stale credential with the server down");
    assert_eq!(
        served.secret, refreshed.secret,
        "the cached credential is served"
    );
    assert!(
        out.stderr.contains("warning:"),
        "serving a stale credential is announced on stderr:\n{}",
        out.describe()
    );
    let leaked = leaks(
        &out.stderr,
        &[
            ("credential", &served.secret),
            ("subject token signature", signature(&subject_token)),
        ],
    );
    assert!(
        leaked.is_empty(),
        "secrets on stderr: {leaked:?}\n{}",
        out.stderr
    );

    // Expired (or about to be): never served, even with nothing better.
    let now = unix_now();
    for (label, times) in [
        (
            "expired",
            CacheTimes {
                issued_at: now - 7200,
                expires_at: now - 3600,
            },
        ),
        (
            "expiring mid-pull",
            CacheTimes {
                issued_at: now - 3590,
                expires_at: now + 5,
            },
        ),
    ] {
        set_cache_times(&file, times);
        let out = helper.get(HOST);
        assert_real_failure(&out, &format!("{label} credential with the server down"));
        assert!(
            !out.stdout.contains(&served.secret),
            "{label}: the cached credential must not be served:\n{}",
            out.describe()
        );
    }

    // Nothing cached and the server down: a clear error.
    let cold = helper.clone().with_cache_dir(&hs.new_dir("cold-cache"));
    let out = cold.get(HOST);
    let line = assert_real_failure(&out, "cold cache with the server down");
    assert!(
        line.contains("cannot reach the token server") && line.contains(HOST),
        "the error names the registry and the unreachable server:\n{}",
        out.describe()
    );
}

#[test]
fn debug_logs_go_to_stderr_and_never_carry_a_secret() {
    let hs = HelperServer::start();
    let dir = hs.new_dir("id");
    let (sa, subject_token) = service_account_identity(&hs.k8s, &dir, "team-a");
    let account = account_identity(&dir, "alice", &hs.alice_password);
    let id_token = workflow_token(&hs.ci, "org/app");

    for (label, entry, identity_secret) in [
        (
            "kubernetes",
            RegistryEntry::new(&[HOST], &hs.url(), sa),
            subject_token.clone(),
        ),
        (
            "account",
            RegistryEntry::new(&[HOST], &hs.url(), account).output(Output::Password),
            hs.alice_password.clone(),
        ),
        (
            "oidc_env",
            RegistryEntry::new(
                &[HOST],
                &hs.url(),
                Identity::OidcEnv {
                    variable: ID_TOKEN_VARIABLE.to_owned(),
                },
            ),
            id_token.clone(),
        ),
    ] {
        let helper = hs
            .helper(entry)
            .with_var("REGAUTH_LOG", "debug")
            .with_var(ID_TOKEN_VARIABLE, &id_token);
        // Cold (exchange), then warm (cache).
        for round in ["exchange", "cache"] {
            let out = helper.get(HOST);
            let creds = parse_get(&out, &format!("{label} debug get ({round})"));
            let json = |s: &str| serde_json::to_string(s).expect("serialize string");
            assert_eq!(
                out.stdout,
                format!(
                    "{{\"ServerURL\":{},\"Username\":{},\"Secret\":{}}}\n",
                    json(HOST),
                    json(&creds.username),
                    json(&creds.secret)
                ),
                "{label} ({round}): stdout is exactly the JSON"
            );
            assert!(
                out.stderr.contains("DEBUG"),
                "{label} ({round}): REGAUTH_LOG=debug adds detail on stderr:\n{}",
                out.stderr
            );
            let leaked = leaks(
                &out.stderr,
                &[
                    ("refresh token", &creds.secret),
                    ("refresh token signature", signature(&creds.secret)),
                    ("identity secret", &identity_secret),
                    ("identity token signature", signature(&identity_secret)),
                ],
            );
            assert!(
                leaked.is_empty(),
                "{label} ({round}): secrets on stderr: {leaked:?}\n{}",
                out.stderr
            );
        }

        // Without REGAUTH_LOG a successful get is silent on stderr.
        let quiet = helper.clone().without_var("REGAUTH_LOG").get(HOST);
        parse_get(&quiet, &format!("{label} quiet get"));
        assert!(
            quiet.stderr.is_empty(),
            "{label}: no stderr output by default:\n{}",
            quiet.stderr
        );
    }
}

/// How many `get`s [`killed_gets_leave_no_corrupt_file_and_no_temp_file_after_the_next_run`]
/// starts and kills; `REGAUTH_E2E_KILL_RUNS` sets another count for longer runs.
const KILL_RUNS: usize = 500;

fn kill_runs() -> usize {
    match std::env::var("REGAUTH_E2E_KILL_RUNS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("REGAUTH_E2E_KILL_RUNS={v:?} is not a count")),
        Err(_) => KILL_RUNS,
    }
}

/// Removes the cached credentials, so that the next `get` exchanges and writes.
fn drop_credentials(helper: &HelperEnv) {
    for file in helper.cache_files() {
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("remove {}: {e}", file.display()));
    }
}

fn file_names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// `kill -9` at a random moment of a `get` that must exchange and write, over
/// and over: no kill leaves a half-written credential file, and whatever
/// temporary files the killed writers left (each holds a live refresh
/// token) are gone after the next run.
#[test]
fn killed_gets_leave_no_corrupt_file_and_no_temp_file_after_the_next_run() {
    let hs = HelperServer::start();
    let (identity, _) = service_account_identity(&hs.k8s, &hs.new_dir("id"), "team-a");
    let helper = hs.helper(RegistryEntry::new(&[HOST], &hs.url(), identity));
    let runs = kill_runs();

    // How long a get that exchanges takes here: kills land across all of it.
    let mut durations: Vec<Duration> = (0..5)
        .map(|_| {
            drop_credentials(&helper);
            let started = Instant::now();
            helper.get_ok(HOST);
            started.elapsed()
        })
        .collect();
    durations.sort();
    let window = durations[durations.len() / 2].mul_f64(1.2);

    let started = Instant::now();
    let (mut corrupt, mut orphans, mut most_temp) = (Vec::new(), BTreeSet::new(), 0);
    let seeds = random_bytes(runs * 4);
    for (i, seed) in seeds.chunks_exact(4).enumerate() {
        drop_credentials(&helper);
        let mut child = helper.spawn_get(HOST);
        let fraction =
            f64::from(u32::from_le_bytes(seed.try_into().expect("4 bytes"))) / f64::from(u32::MAX);
        std::thread::sleep(window.mul_f64(fraction));
        child.kill().expect("kill -9 the helper");
        child.wait().expect("reap the helper");

        corrupt.extend(
            helper
                .cache_files()
                .into_iter()
                .filter(|f| !is_whole_cache_file(f))
                .map(|f| format!("run {i}: {}", f.display())),
        );
        let temp = helper.temp_files();
        most_temp = most_temp.max(temp.len());
        orphans.extend(file_names(&temp));
    }
    eprintln!(
        "{runs} gets killed within {window:?} each in {:?}: {} temporary files left behind (at \
         most {most_temp} at once), {} corrupt credential files",
        started.elapsed(),
        orphans.len(),
        corrupt.len()
    );
    assert!(
        corrupt.is_empty(),
        "a killed get left a half-written credential file:\n{}",
        corrupt.join("\n")
    );

    let next = helper.get_ok(HOST);
    let leftovers = helper.temp_files();
    assert!(
        leftovers.is_empty(),
        "after the next run, killed writers' temporary files (live refresh tokens) remain: {:?}",
        file_names(&leftovers)
    );
    let file = helper.only_cache_file();
    assert!(is_whole_cache_file(&file), "{}", file.display());
    let (value, _) = read_cache_file(&file);
    assert_eq!(value["refresh_token"], next.secret.as_str());
    assert_eq!(mode(&file), 0o600);
}

/// The cache key of `helper`'s only credential file.
fn cache_key(helper: &HelperEnv) -> String {
    let file = helper.only_cache_file();
    file.file_stem()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// A temporary file as a `get` killed between creating it and renaming it
/// leaves: `tmp/KEY.PID` (or, with `legacy`, `.KEY.PID.tmp` as earlier
/// versions wrote it), mode 0600, holding a whole credential. Returns its path.
fn orphaned_temp_file(helper: &HelperEnv, key: &str, pid: u32, legacy: bool) -> PathBuf {
    let content = std::fs::read(helper.only_cache_file()).expect("read the credential file");
    let path = if legacy {
        helper.cache_dir().join(format!(".{key}.{pid}.tmp"))
    } else {
        helper.cache_dir().join(format!("tmp/{key}.{pid}"))
    };
    regauth_e2e::secrets::write_secret_file(&path, &content);
    path
}

/// A PID no process has: beyond the kernel's largest.
fn dead_pid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(4_194_304)
        + 1
}

/// Temporary files that killed invocations left behind are removed by the
/// next `get` (served from the cache or not), and by `erase` (also those of
/// earlier versions), for the registry asked about and for others alike.
#[test]
fn orphaned_temp_files_are_removed_by_the_next_get_and_by_erase() {
    let hs = HelperServer::start();
    let (identity, _) = service_account_identity(&hs.k8s, &hs.new_dir("id"), "team-a");
    let helper = hs.helper(RegistryEntry::new(&[HOST], &hs.url(), identity));
    let first = helper.get_ok(HOST);
    let key = cache_key(&helper);

    let own = orphaned_temp_file(&helper, &key, dead_pid(), false);
    let other_key = format!("{}-{}", &key[..16], "0".repeat(32));
    let other = orphaned_temp_file(&helper, &other_key, dead_pid(), false);
    let cached = helper.get_ok(HOST);
    assert_eq!(cached.secret, first.secret, "served from the cache");
    assert!(
        !own.exists() && !other.exists(),
        "the next get leaves killed writers' temporary files behind: {:?}",
        file_names(&helper.temp_files())
    );

    let orphan = orphaned_temp_file(&helper, &key, dead_pid(), false);
    let legacy = orphaned_temp_file(&helper, &key, dead_pid(), true);
    let out = helper.run(&["erase"], HOST);
    out.assert_success("erase");
    assert!(
        !orphan.exists() && !legacy.exists(),
        "erase leaves a killed writer's temporary file behind: {:?}",
        file_names(&helper.temp_files())
    );
    assert!(
        helper.cache_files().is_empty(),
        "erase drops the credential"
    );
}
