//! The helper's credential cache, counted at the token server: concurrent
//! invocations make one exchange, a corrupt file is refetched, a stale
//! credential is refreshed (or, with the server down, served with a
//! warning), an expired one never served; files are private; debug logs
//! go to stderr and never carry a secret.

use std::time::Instant;

use regauth_e2e::credential_helper::audit::{audit_lines, helper_exchanges, wait_for_count};
use regauth_e2e::credential_helper::{
    CacheTimes, HelperCredentials, Identity, Output, RegistryEntry, assert_real_failure, mode,
    parse_get, read_cache_file, set_cache_times, unix_now,
};

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
    let leftovers: Vec<_> = std::fs::read_dir(helper.cache_dir())
        .expect("read cache dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
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
