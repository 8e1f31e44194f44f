//! The docker credential-helper protocol at the edges: every server-URL
//! shape clients send, the exact not-found answer (and skopeo going
//! anonymous on it), real failures that must never look like not-found
//! (and skopeo failing with them), config discovery, `list`, `erase`, `store`.

use std::collections::BTreeMap;

use regauth_e2e::credential_helper::audit::{audit_lines, helper_exchanges, log_field};
use regauth_e2e::credential_helper::{
    FAILURE_PREFIX, HelperConfig, HelperEnv, IDENTITY_TOKEN_USERNAME, Identity, NOT_FOUND,
    RegistryEntry, assert_not_found, assert_real_failure, parse_get,
};
use regauth_e2e::oidc_issuer::claims::ServiceAccount;

use crate::credential_helper_common::{
    AUDIENCE, DOWN_TOKEN_SERVER, HelperServer, HelperWorld, account_identity,
    service_account_identity,
};

/// The patterns of the shapes test's one registry entry.
const SHAPES_PATTERNS: [&str; 3] = [
    "registry.shapes.test",
    "registry.shapes.test:5000",
    "index.docker.io",
];

/// What skopeo 1.9 reports when the registry refuses a token lacking access.
const ACCESS_DENIED: &str = "requested access to the resource is denied";

/// skopeo 1.9's debug line when a helper answers not-found.
fn skopeo_not_logged_in(host: &str) -> String {
    format!("Not logged in to {host} with credential helper regauth")
}

#[test]
fn get_answers_every_server_url_shape_of_a_configured_host() {
    let hs = HelperServer::start();
    let (identity, _) = service_account_identity(&hs.k8s, &hs.new_dir("id"), "team-a");
    let helper = hs.helper(RegistryEntry::new(&SHAPES_PATTERNS, &hs.url(), identity));

    // (stdin as sent, ServerURL expected back)
    let shapes = [
        ("registry.shapes.test", "registry.shapes.test"),
        ("registry.shapes.test\n", "registry.shapes.test"),
        ("  registry.shapes.test \n", "registry.shapes.test"),
        ("Registry.Shapes.Test", "Registry.Shapes.Test"),
        ("registry.shapes.test:5000", "registry.shapes.test:5000"),
        (
            "https://registry.shapes.test/",
            "https://registry.shapes.test/",
        ),
        (
            "https://registry.shapes.test:5000/v2/",
            "https://registry.shapes.test:5000/v2/",
        ),
        (
            "http://registry.shapes.test:5000",
            "http://registry.shapes.test:5000",
        ),
        (
            "registry.shapes.test/team-a/app",
            "registry.shapes.test/team-a/app",
        ),
        (
            "registry.shapes.test:5000/team-a/app:1.0",
            "registry.shapes.test:5000/team-a/app:1.0",
        ),
        ("https://index.docker.io/v1/", "https://index.docker.io/v1/"),
    ];
    let mut secrets = Vec::new();
    for (stdin, server_url) in shapes {
        let creds = parse_get(&helper.get(stdin), &format!("get {stdin:?}"));
        assert_eq!(creds.server_url, server_url, "ServerURL for {stdin:?}");
        assert_eq!(creds.username, IDENTITY_TOKEN_USERNAME, "{stdin:?}");
        secrets.push(creds.secret);
    }
    assert!(
        secrets.windows(2).all(|w| w[0] == w[1]),
        "every shape names the same registry entry, so the same cached credential"
    );
    assert_eq!(helper_exchanges(hs.server()), 1, "one entry, one exchange");

    for stdin in [
        "registry.shapes.test:5001",
        "https://registry.shapes.test:5001/v2/",
        "other.shapes.test",
        "sub.registry.shapes.test",
        "shapes.test",
        "docker.io",
        "127.0.0.1:5000",
    ] {
        assert_not_found(&helper.get(stdin), &format!("get {stdin:?}"));
    }
    let empty = helper.get("");
    let line = assert_real_failure(&empty, "get with an empty payload");
    assert!(line.contains("not a registry host"), "{}", empty.describe());

    // list: every pattern with its username.
    let listed = helper.run(&["list"], "");
    listed.assert_success("list");
    let map: BTreeMap<String, String> = serde_json::from_str(listed.stdout.trim())
        .unwrap_or_else(|e| panic!("list prints a JSON map ({e}):\n{}", listed.describe()));
    let want: BTreeMap<String, String> = SHAPES_PATTERNS
        .iter()
        .map(|p| ((*p).to_owned(), IDENTITY_TOKEN_USERNAME.to_owned()))
        .collect();
    assert_eq!(map, want);

    // store: accepted, kept nowhere, the secret never echoed.
    let before = helper.cache_files();
    let stored = helper.run(
        &["store"],
        r#"{"ServerURL":"registry.shapes.test","Username":"u","Secret":"store-secret-123"}"#,
    );
    stored.assert_success("store");
    assert!(stored.stdout.is_empty(), "{}", stored.describe());
    assert!(
        !stored.stderr.contains("store-secret-123"),
        "{}",
        stored.describe()
    );
    assert_eq!(helper.cache_files(), before, "store keeps nothing");

    // erase drops the entry's cached credential: the next get exchanges again.
    let erased = helper.run(&["erase"], "https://registry.shapes.test:5000/");
    erased.assert_success("erase");
    assert!(
        helper.cache_files().is_empty(),
        "erase removed the credential"
    );
    let again = helper.get_ok("registry.shapes.test");
    assert_ne!(again.secret, secrets[0], "a new exchange after erase");
    assert_eq!(helper_exchanges(hs.server()), 2);
    assert_not_found(
        &helper.run(&["erase"], "other.shapes.test"),
        "erase of an unconfigured host",
    );
}

#[test]
fn config_is_found_in_the_documented_places() {
    let hs = HelperServer::start();
    let dir = hs.new_dir("discovery");
    let token = hs
        .k8s
        .service_account_token(&ServiceAccount::new("team-a", "builder"), AUDIENCE);
    // A relative token_file resolves against the config file's directory.
    let config = HelperConfig::new().registry(RegistryEntry::new(
        &["registry.found.test"],
        &hs.url(),
        Identity::Kubernetes {
            token_file: "sa-token".into(),
        },
    ));
    let place = |config_dir: &std::path::Path| {
        std::fs::create_dir_all(config_dir).expect("create config dir");
        config.write(&config_dir.join("helper.yaml"));
        std::fs::write(config_dir.join("sa-token"), &token).expect("write token");
    };
    let base = HelperEnv::new(&dir, &HelperConfig::new()).without_var("REGAUTH_HELPER_CONFIG");

    let xdg = dir.join("xdg");
    place(&xdg.join("regauth"));
    let via_xdg = base
        .clone()
        .with_var("XDG_CONFIG_HOME", &xdg.to_string_lossy());
    via_xdg.get_ok("registry.found.test");

    let home = dir.join("user-home");
    place(&home.join(".config/regauth"));
    let via_home = base.clone().with_var("HOME", &home.to_string_lossy());
    via_home.get_ok("registry.found.test");

    let flag = dir.join("flag");
    place(&flag);
    let via_flag = base.run(
        &[
            "--config",
            &flag.join("helper.yaml").to_string_lossy(),
            "get",
        ],
        "registry.found.test",
    );
    parse_get(&via_flag, "get with --config");

    // Nothing at any implicit place: not found, so clients go anonymous.
    assert!(
        !std::path::Path::new("/etc/regauth/helper.yaml").exists(),
        "/etc/regauth/helper.yaml exists on this machine; this test needs it absent"
    );
    assert_not_found(
        &base.get("registry.found.test"),
        "get with no config anywhere",
    );

    // An explicit config that is missing is an error, not "nothing configured".
    let missing = base.clone().with_var(
        "REGAUTH_HELPER_CONFIG",
        &dir.join("missing.yaml").to_string_lossy(),
    );
    assert_real_failure(
        &missing.get("registry.found.test"),
        "REGAUTH_HELPER_CONFIG missing",
    );
}

#[test]
fn failures_are_real_errors_never_not_found() {
    let hs = HelperServer::start();
    let dir = hs.new_dir("failures");
    let host = "registry.fail.test";
    let entry = |identity: Identity| RegistryEntry::new(&[host], &hs.url(), identity);

    let missing = dir.join("no-such-token");
    let out = hs
        .helper(entry(Identity::Kubernetes {
            token_file: missing.clone(),
        }))
        .get(host);
    assert_real_failure(&out, "identity file missing");
    assert!(
        out.stderr.contains(&*missing.to_string_lossy()),
        "the detail names the file:\n{}",
        out.describe()
    );

    let forged = dir.join("forged-token");
    let claims = ServiceAccount::new("team-a", "builder").claims(
        &hs.k8s.url(),
        AUDIENCE,
        std::time::Duration::from_secs(600),
    );
    std::fs::write(&forged, hs.k8s.mint_unpublished(&claims)).expect("write forged token");
    let out = hs
        .helper(entry(Identity::Kubernetes { token_file: forged }))
        .get(host);
    let line = assert_real_failure(&out, "token signed by an unknown key");
    assert!(
        line.contains("refused"),
        "the server refused it:\n{}",
        out.describe()
    );

    let (identity, _) = service_account_identity(&hs.k8s, &dir, "team-a");
    let out = hs
        .helper(RegistryEntry::new(&[host], DOWN_TOKEN_SERVER, identity).timeout("3s"))
        .get(host);
    let line = assert_real_failure(&out, "token server down");
    assert!(
        line.contains("cannot reach the token server"),
        "{}",
        out.describe()
    );
}

/// A `service` the token server does not serve is reported as that, for
/// every grant: never as a refused password or token.
#[test]
fn a_wrong_service_is_named_not_blamed_on_the_credential() {
    let hs = HelperServer::start();
    let dir = hs.new_dir("id");
    let host = "registry.fail.test";
    let wrong = "no-such-service.test";
    let (sa, _) = service_account_identity(&hs.k8s, &dir, "team-a");
    let alice = account_identity(&dir, "alice", &hs.alice_password);
    for (label, identity, credential) in [
        ("account", alice, "account password"),
        ("kubernetes", sa, "subject token"),
    ] {
        let helper = hs.helper(RegistryEntry::new(&[host], &hs.url(), identity).service(wrong));
        let out = helper.get(host);
        let line = assert_real_failure(&out, &format!("{label} identity, service {wrong}"));
        assert!(
            !line.contains(&format!("refused the {credential}")),
            "{label}: the {credential} is fine; the service is wrong:\n{}",
            out.describe()
        );
        assert!(
            line.contains(&format!("{wrong:?}"))
                && (line.contains("unknown service") || line.contains("does not serve")),
            "{label}: the message should say the token server does not know service {wrong:?}:\n{}",
            out.describe()
        );
    }
}

#[test]
fn a_broken_config_is_a_one_line_failure_with_the_detail_on_stderr() {
    let dir = tempfile::Builder::new()
        .prefix("regauth-e2e-")
        .tempdir()
        .expect("create temp dir");
    let helper = HelperEnv::new(dir.path(), &HelperConfig::new());
    let mut multi_line = Vec::new();
    for (label, yaml, detail) in [
        (
            "unknown key",
            "registries:\n  - match: [registry.fail.test]\n    token_server: http://x\n    sevice: typo\n",
            "sevice",
        ),
        (
            "bad value",
            "registries:\n  - match: [registry.fail.test]\n    token_server: ftp://x\n    service: s\n    identity: {kind: oidc_env, variable: V}\n",
            "token_server",
        ),
        ("not YAML", "registries: [\n", "helper.yaml"),
    ] {
        std::fs::write(helper.config_path(), yaml).expect("write broken config");
        let out = helper.get("registry.fail.test");
        let what = format!("config with a {label}");
        assert_eq!(out.status.code(), Some(1), "{what}:\n{}", out.describe());
        assert!(
            out.stdout.starts_with(FAILURE_PREFIX) && !out.stdout.contains(NOT_FOUND),
            "{what}: a real failure on stdout, never not-found:\n{}",
            out.describe()
        );
        assert!(
            out.stderr.contains(detail),
            "{what}: stderr names {detail:?}:\n{}",
            out.describe()
        );
        if out.stdout.trim_end().lines().count() != 1 {
            multi_line.push(format!("{what}:\n{}", out.stdout));
        }
    }
    assert!(
        multi_line.is_empty(),
        "the failure message on stdout must be one line (the detail belongs on stderr):\n{}",
        multi_line.join("\n")
    );
}

#[test]
fn unconfigured_registry_is_not_found_and_skopeo_goes_anonymous() {
    let hw = HelperWorld::start();
    let world = &hw.world;
    let (_, public_digest) = world.push_as("alice", "public/base");
    world.push_as("alice", "alice/private");
    let (identity, _) = service_account_identity(&hw.k8s, &world.new_dir("id"), "team-a");
    // The helper is configured, but for another registry.
    let helper = hw.helper(RegistryEntry::new(
        &["registry.elsewhere.test"],
        &world.server.url(),
        identity,
    ));
    let host = hw.host();
    assert_not_found(&helper.get(&host), "get of the unconfigured registry");

    let skopeo = hw.skopeo(&helper);
    let public = skopeo.inspect(&world.reference("public/base"), true);
    public.assert_success("skopeo inspect public/base, anonymous after not-found");
    assert!(
        public.stderr.contains(&skopeo_not_logged_in(&host)),
        "skopeo must have asked the helper and taken its not-found:\n{}",
        public.stderr
    );
    let info: serde_json::Value = serde_json::from_str(&public.stdout).expect("inspect JSON");
    assert_eq!(info["Digest"], public_digest.as_str());

    let private = skopeo.inspect(&world.reference("alice/private"), false);
    assert!(
        !private.success(),
        "anonymous inspect of alice/private must fail:\n{}",
        private.describe()
    );
    assert!(
        !private.stderr.contains("error getting credentials")
            && !private.stderr.contains("docker-credential-regauth"),
        "the failure must be the registry's denial, not a helper error:\n{}",
        private.describe()
    );
    assert!(
        private
            .stderr
            .contains(&format!("reading manifest latest in {host}/alice/private"))
            && private.stderr.contains(ACCESS_DENIED),
        "the registry's own denial of the manifest:\n{}",
        private.describe()
    );
    assert_eq!(helper_exchanges(&world.server), 0, "nothing was exchanged");
    assert!(
        audit_lines(&world.server).iter().any(|l| {
            log_field(l, "kind").as_deref() == Some("anonymous")
                && log_field(l, "granted").is_some_and(|g| g.contains("public/base:pull"))
        }),
        "the token server saw skopeo as anonymous:\n{}",
        audit_lines(&world.server).join("\n")
    );
}

#[test]
fn token_server_down_fails_get_and_skopeo_with_the_helpers_message() {
    let hw = HelperWorld::start();
    let world = &hw.world;
    // Anonymous callers may read public/base: a helper that wrongly said
    // "not found" would let skopeo succeed here.
    world.push_as("alice", "public/base");
    let (identity, _) = service_account_identity(&hw.k8s, &world.new_dir("id"), "team-a");
    let helper =
        hw.helper(RegistryEntry::new(&[&hw.host()], DOWN_TOKEN_SERVER, identity).timeout("3s"));

    let out = helper.get(&hw.host());
    let line = assert_real_failure(&out, "get with the token server down");
    assert!(
        line.contains("cannot reach the token server"),
        "{}",
        out.describe()
    );

    let skopeo = hw.skopeo(&helper);
    let inspect = skopeo.inspect(&world.reference("public/base"), false);
    assert!(
        !inspect.success(),
        "skopeo must fail when its credential helper fails:\n{}",
        inspect.describe()
    );
    assert!(
        inspect.stderr.contains("error getting credentials") && inspect.stderr.contains(&line),
        "skopeo's error carries the helper's one-line message {line:?}:\n{}",
        inspect.describe()
    );
}

/// A credential helper that records its arguments, stdin and environment,
/// then hands over to `docker-credential-regauth` with the same stdin.
const PROBE_HELPER: &str = r#"#!/bin/sh
in=$(mktemp "$PROBE_DIR/call.XXXXXX")
cat > "$in"
printf '%s\n' "$@" > "$in.args"
env > "$in.env"
exec docker-credential-regauth "$@" < "$in"
"#;

#[test]
fn skopeo_runs_its_helper_with_get_the_bare_host_and_its_own_environment() {
    use std::os::unix::fs::PermissionsExt;

    let hw = HelperWorld::start();
    let world = &hw.world;
    let (identity, _) = service_account_identity(&hw.k8s, &world.new_dir("id"), "team-a");
    let helper = hw.helper(RegistryEntry::new(
        &[&hw.host()],
        &world.server.url(),
        identity,
    ));
    let probe_dir = world.new_dir("probe");
    let bin = probe_dir.join("bin");
    std::fs::create_dir_all(&bin).expect("create probe bin dir");
    let script = bin.join("docker-credential-probe");
    std::fs::write(&script, PROBE_HELPER).expect("write the probe helper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the probe helper");
    let skopeo = hw
        .skopeo(&helper)
        .env("PROBE_DIR", &probe_dir.to_string_lossy())
        .env("REGAUTH_E2E_MARKER", "passed-through")
        .with_helper("probe", &bin);

    let image = regauth_e2e::oci::build_oci_image(&world.new_dir("oci-src"));
    let (pushed, _) = skopeo.push(&image, &world.reference("team-a/app"));
    pushed.assert_success("skopeo push through the recording helper");
    let inspect = skopeo.inspect(&world.reference("team-a/app"), false);
    inspect.assert_success("skopeo inspect through the recording helper");

    let mut calls: Vec<std::path::PathBuf> = std::fs::read_dir(&probe_dir)
        .expect("read probe dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("call.") && name.matches('.').count() == 1
        })
        .collect();
    calls.sort();
    eprintln!("skopeo copy + inspect ran the helper {} times", calls.len());
    assert!(
        calls.len() >= 2,
        "one call at least per skopeo run: {calls:?}"
    );
    for call in &calls {
        let read = |suffix: &str| {
            let path = format!("{}{suffix}", call.display());
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
        };
        assert_eq!(
            read(""),
            hw.host(),
            "stdin is the bare host:port, no newline"
        );
        assert_eq!(read(".args"), "get\n", "the only argument is the action");
        let env = read(".env");
        for (key, value) in helper
            .vars()
            .iter()
            .chain([("REGAUTH_E2E_MARKER".to_owned(), "passed-through".to_owned())].iter())
        {
            assert!(
                env.lines().any(|l| l == format!("{key}={value}")),
                "skopeo passes its environment to the helper: {key} missing\n{env}"
            );
        }
    }
}
