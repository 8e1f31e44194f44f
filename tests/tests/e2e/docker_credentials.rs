//! The Docker Engine pulls and pushes with credentials from
//! `docker-credential-regauth`: the docker CLI runs the helper (named in
//! `credHelpers` or as `credsStore`) and hands the credential to the daemon,
//! which follows the registry's challenge to the token server.

use regauth_e2e::credential_helper::audit::{audit_lines, helper_exchanges, log_field};
use regauth_e2e::credential_helper::{IDENTITY_TOKEN_USERNAME, Output};
use regauth_e2e::jwt::unverified_claims;
use regauth_e2e::registry::Registry;
use regauth_e2e::skopeo::Auth;
use serde_json::json;

use crate::docker_common::{DockerWorld, assert_docker_ok, daemon_grants, password_checks};

/// Pulls `alice/demo`, then pushes it back as `alice/copy`, with the helper
/// in `output` form; returns the world for further checks.
fn pull_and_push_as_alice(output: Output) -> DockerWorld {
    let dw = DockerWorld::start();
    let source = dw.seed("alice", "alice/demo");
    let helper = dw.helper_for("alice", output);
    let cli = dw.cli_with_cred_helpers(&helper);

    // The helper exchanges alice's password once, before docker runs; from
    // then on the daemon holds only the refresh token it printed.
    let checks_at_start = password_checks(&dw.world.server);
    let creds = helper.get_ok(&dw.world.registry.host());
    let expected_username = match output {
        Output::IdentityToken => IDENTITY_TOKEN_USERNAME,
        Output::Password => "regauth",
    };
    assert_eq!(creds.username, expected_username);
    let checks_before = password_checks(&dw.world.server);
    assert!(
        checks_before > checks_at_start,
        "the helper's password exchange is counted, so the count below means something"
    );

    assert_docker_ok(&cli.pull(&source), "docker pull alice/demo", &dw);
    let copy = dw.world.reference("alice/copy");
    cli.tag(&source, &copy);
    assert_docker_ok(&cli.push(&copy), "docker push alice/copy", &dw);

    assert_eq!(
        password_checks(&dw.world.server),
        checks_before,
        "the daemon must never present alice's password, only the refresh token:\n{}",
        dw.logs()
    );
    assert_eq!(
        helper_exchanges(&dw.world.server),
        1,
        "docker's helper runs reuse the cached credential:\n{}",
        dw.logs()
    );
    // The pushed copy is really there, readable with alice's password.
    let inspect = dw.world.skopeo.inspect(
        &copy,
        Auth::Creds("alice", &dw.world.password("alice")),
        &[],
    );
    inspect.assert_success("skopeo inspect of the pushed alice/copy");
    // Short-lived: the credential the daemon holds is the helper's refresh
    // token, which expires within the server's refresh_token_ttl (1h).
    let claims = unverified_claims(&creds.secret);
    let lifetime = claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0);
    assert!(
        (1..=3600).contains(&lifetime),
        "the daemon's credential must live at most 1h, not {lifetime}s: {claims}"
    );
    dw
}

#[test]
fn docker_pulls_and_pushes_through_cred_helpers_with_an_identity_token() {
    let dw = pull_and_push_as_alice(Output::IdentityToken);
    let grants = daemon_grants(&dw.world.server);
    assert!(
        !grants.is_empty(),
        "the daemon asked the token server nothing:\n{}",
        dw.logs()
    );
    for line in &grants {
        // With Username "<token>" the daemon uses the OAuth2 refresh grant.
        assert_eq!(log_field(line, "method").as_deref(), Some("POST"), "{line}");
        assert_eq!(
            log_field(line, "grant").as_deref(),
            Some("refresh_token"),
            "{line}"
        );
        assert_eq!(
            log_field(line, "kind").as_deref(),
            Some("account"),
            "{line}"
        );
        assert_eq!(log_field(line, "sub").as_deref(), Some("alice"), "{line}");
    }
    assert!(
        grants.iter().any(|l| log_field(l, "granted")
            .is_some_and(|g| g.contains("alice/copy:") && g.contains("push"))),
        "the daemon was granted push on alice/copy: {grants:#?}"
    );
}

#[test]
fn docker_pulls_and_pushes_through_cred_helpers_with_the_password_form() {
    let dw = pull_and_push_as_alice(Output::Password);
    // With a username and password the daemon sends GET /token with Basic;
    // the "password" is the refresh token, so the server checks no password.
    let grants: Vec<String> = audit_lines(&dw.world.server)
        .into_iter()
        .filter(|l| log_field(l, "method").as_deref() == Some("GET"))
        .collect();
    assert!(
        grants.iter().any(|l| log_field(l, "granted")
            .is_some_and(|g| g.contains("alice/copy:") && g.contains("push"))),
        "the daemon's GET /token was granted push on alice/copy:\n{}",
        dw.logs()
    );
    for line in &grants {
        assert_eq!(log_field(line, "sub").as_deref(), Some("alice"), "{line}");
        assert_eq!(log_field(line, "grant").as_deref(), Some("basic"), "{line}");
    }
}

#[test]
fn docker_uses_the_helper_as_creds_store_and_goes_anonymous_where_it_has_nothing() {
    let dw = DockerWorld::start();
    let private = dw.seed("alice", "alice/demo");
    // A second registry behind the same token server, which the helper's
    // config does not list.
    let other = Registry::start(&dw.world.server, &dw.world.new_dir("other"));
    let (_, pushed) = {
        let image = regauth_e2e::oci::build_oci_image(&dw.world.new_dir("oci-public"));
        let password = dw.world.password("alice");
        let pushed = dw.world.skopeo.push(
            &image,
            &other.reference("public/tool"),
            Auth::Creds("alice", &password),
        );
        (image, pushed)
    };
    pushed
        .output
        .assert_success("skopeo push of public/tool to the other registry");

    let helper = dw.helper_for("alice", Output::IdentityToken);
    let cli = dw.cli(&helper);
    cli.write_config(&json!({ "credsStore": "regauth" }));

    assert_docker_ok(
        &cli.pull(&private),
        "docker pull alice/demo via credsStore",
        &dw,
    );
    assert_eq!(helper_exchanges(&dw.world.server), 1);

    // The helper answers "not found" for the other registry, so docker pulls
    // anonymously, and policy lets anyone pull public/.
    let public = other.reference("public/tool");
    assert_docker_ok(&cli.pull(&public), "anonymous docker pull public/tool", &dw);
    // The daemon sends no client_id when it asks without credentials.
    let anonymous: Vec<String> = audit_lines(&dw.world.server)
        .into_iter()
        .filter(|l| log_field(l, "kind").as_deref() == Some("anonymous"))
        .collect();
    assert!(
        anonymous
            .iter()
            .any(|l| log_field(l, "granted").is_some_and(|g| g.contains("public/tool:pull"))),
        "the pull from the unconfigured registry went anonymous:\n{}",
        dw.logs()
    );
    assert_eq!(
        helper_exchanges(&dw.world.server),
        1,
        "no exchange for a registry the helper does not serve"
    );
    // And anonymous means anonymous: alice's private repository on the other
    // registry stays closed to that pull.
    let closed = cli.pull(&other.reference("alice/demo"));
    assert!(!closed.success(), "{}", closed.describe());
}

#[test]
fn docker_push_into_another_accounts_repository_is_denied_with_the_registrys_message() {
    let dw = DockerWorld::start();
    let source = dw.seed("alice", "alice/demo");
    let helper = dw.helper_for("alice", Output::IdentityToken);
    let cli = dw.cli_with_cred_helpers(&helper);
    assert_docker_ok(&cli.pull(&source), "docker pull alice/demo", &dw);

    let target = dw.world.reference("bob/stolen");
    cli.tag(&source, &target);
    let push = cli.push(&target);
    assert!(
        !push.success(),
        "alice pushed into bob's namespace:\n{}",
        push.describe()
    );
    // The token server granted nothing on bob/stolen (denial is an empty
    // grant, not an error), so the registry refused the upload itself (401,
    // insufficient scope), which docker reports as a denial.
    assert!(
        push.stderr
            .contains("denied: requested access to the resource is denied"),
        "docker must show the registry's refusal:\n{}",
        push.describe()
    );
    assert!(
        !push.stderr.contains("docker-credential-regauth"),
        "the refusal is the registry's, not a helper failure:\n{}",
        push.describe()
    );
    let registry_log = dw.world.registry.logs();
    assert!(
        registry_log.lines().any(
            |l| l.contains("insufficient scope") && l.contains("/v2/bob/stolen/blobs/uploads/")
        ),
        "the registry refused the upload for want of scope:\n{registry_log}"
    );
    let bob_grants: Vec<String> = daemon_grants(&dw.world.server)
        .into_iter()
        .filter(|l| log_field(l, "requested").is_some_and(|r| r.contains("bob/stolen")))
        .collect();
    assert!(
        !bob_grants.is_empty(),
        "the daemon asked for bob/stolen:\n{}",
        dw.logs()
    );
    for line in &bob_grants {
        assert!(
            !log_field(line, "granted").is_some_and(|g| g.contains("bob/stolen")),
            "bob/stolen must not be granted to alice: {line}"
        );
    }
    // Nothing arrived in bob's repository.
    let bob = dw
        .world
        .skopeo
        .inspect(&target, Auth::Creds("bob", &dw.world.password("bob")), &[]);
    assert!(!bob.success(), "bob/stolen exists:\n{}", bob.describe());
}
