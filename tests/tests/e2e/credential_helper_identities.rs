//! Every identity source of `docker-credential-regauth`, end to end: skopeo
//! names the helper in `credHelpers`, the helper exchanges the identity at
//! the real token server, and skopeo pushes and pulls at the real registry
//! 2.8 with the credential, within policy, and is denied outside it.
//!
//! Both output forms run against the registry: the identity-token form
//! (`Username "<token>"`, skopeo then POSTs `grant_type=refresh_token` with
//! `client_id=containers/image`) and the password form (skopeo then GETs
//! `/token` with Basic and no client ID), told apart in the audit log.

use regauth_e2e::credential_helper::audit::{
    HELPER_CLIENT_ID, SKOPEO_CLIENT_ID, audit_lines, helper_exchanges, log_field, wait_for_count,
};
use regauth_e2e::credential_helper::github_actions::{API_VERSION, GithubActionsStub};
use regauth_e2e::credential_helper::{
    HelperEnv, IDENTITY_TOKEN_USERNAME, Identity, Output, RegistryEntry, assert_real_failure,
};
use regauth_e2e::jwt::{unverified_claims, unverified_header};
use regauth_e2e::oci::{build_oci_image, layout_manifest_digest};
use regauth_e2e::oidc_issuer::claims::GithubWorkflow;
use regauth_e2e::pki::TestPki;
use regauth_e2e::token_server::SERVICE;

use crate::credential_helper_common::{
    AUDIENCE, HelperWorld, account_identity, service_account_identity, workflow_token,
};

/// What skopeo 1.9 reports when the registry refuses a token lacking access.
const ACCESS_DENIED: &str = "requested access to the resource is denied";
/// What skopeo 1.9 reports when the token endpoint refuses its credentials.
const INVALID_CREDENTIALS: &str = "invalid username/password";
/// What skopeo 1.9 reports when a credential helper fails.
const HELPER_ERROR: &str = "error getting credentials";

/// What one identity should be able to do through skopeo.
struct Scenario<'a> {
    /// For messages.
    what: &'a str,
    /// A repository it may push and pull.
    own: &'a str,
    /// A repository it may not push.
    foreign: &'a str,
    /// Its principal's `kind` in the audit log.
    kind: &'a str,
    /// The `Username` the helper should answer.
    username: &'a str,
}

/// Runs the scenario with `helper` (already configured for the world's
/// registry): a direct `get`, a push and pull of the own repository, a
/// denied push of the foreign one; then checks the audit log for the
/// output form on the wire and for exactly one exchange.
fn exercise(hw: &HelperWorld, helper: &HelperEnv, output: Output, s: &Scenario<'_>) {
    let world = &hw.world;
    let host = hw.host();
    let what = s.what;

    let creds = helper.get_ok(&host);
    assert_eq!(creds.server_url, host, "{what}: ServerURL is the URL asked");
    assert_eq!(
        creds.username, s.username,
        "{what}: Username for {output:?}"
    );
    assert_eq!(
        unverified_header(&creds.secret)["alg"],
        "HS256",
        "{what}: the Secret is a regauth refresh token"
    );
    assert_ne!(
        unverified_claims(&creds.secret)["aud"],
        SERVICE,
        "{what}: a refresh token is never addressed to the registry"
    );

    let skopeo = hw.skopeo(helper);
    let image = build_oci_image(&world.new_dir("oci-src"));
    let (pushed, digest) = skopeo.push(&image, &world.reference(s.own));
    pushed.assert_success(&format!("{what}: skopeo push of {} via the helper", s.own));
    let digest = digest.unwrap_or_else(|| panic!("{what}: the push wrote no --digestfile"));

    let dest = world.new_dir("oci-pulled");
    skopeo
        .pull(&world.reference(s.own), &dest)
        .assert_success(&format!("{what}: skopeo pull of {} via the helper", s.own));
    assert_eq!(
        layout_manifest_digest(&dest, "latest").as_deref(),
        Some(digest.as_str()),
        "{what}: pulled {} is not the pushed manifest",
        s.own
    );

    let foreign = build_oci_image(&world.new_dir("oci-src"));
    let (denied, _) = skopeo.push(&foreign, &world.reference(s.foreign));
    assert!(
        !denied.success(),
        "{what}: push of {} must be denied:\n{}",
        s.foreign,
        denied.describe()
    );
    assert!(
        denied.stderr.contains(ACCESS_DENIED)
            && !denied.stderr.contains(INVALID_CREDENTIALS)
            && !denied.stderr.contains(HELPER_ERROR),
        "{what}: the credential is valid, so the push of {} must fail on access:\n{}",
        s.foreign,
        denied.describe()
    );

    assert_wire_form(hw, output, s);
    let exchanges = wait_for_count(|| helper_exchanges(&world.server), 1);
    assert_eq!(
        exchanges,
        1,
        "{what}: one get and three skopeo runs share the cache, so exactly one exchange\n{}",
        audit_lines(&world.server).join("\n")
    );
}

/// Checks in the audit log that skopeo used the credential in the form the
/// helper chose: `POST /token` refresh grants with
/// `client_id=containers/image` for an identity token, `GET /token` with
/// Basic and no client ID for a password; never the other.
fn assert_wire_form(hw: &HelperWorld, output: Output, s: &Scenario<'_>) {
    let lines: Vec<String> = audit_lines(&hw.world.server)
        .into_iter()
        .filter(|l| {
            l.contains("token issued")
                && log_field(l, "kind").as_deref() == Some(s.kind)
                && log_field(l, "client_id").as_deref() != Some(HELPER_CLIENT_ID)
        })
        .collect();
    let context = || {
        format!(
            "{}: skopeo's token requests (kind={}):\n{}",
            s.what,
            s.kind,
            lines.join("\n")
        )
    };
    let (method, client_id) = match output {
        Output::IdentityToken => ("POST", SKOPEO_CLIENT_ID),
        Output::Password => ("GET", "-"),
    };
    assert!(
        lines.len() >= 3,
        "skopeo asked for tokens for push, pull and the denied push\n{}",
        context()
    );
    for line in &lines {
        assert!(
            log_field(line, "method").as_deref() == Some(method)
                && log_field(line, "client_id").as_deref() == Some(client_id),
            "{output:?}: every skopeo token request must be {method} /token with client_id {client_id:?}\n{}",
            context()
        );
    }
}

#[test]
fn kubernetes_service_account_token_as_identity_token() {
    let hw = HelperWorld::start();
    let (identity, _) = service_account_identity(&hw.k8s, &hw.world.new_dir("id"), "team-a");
    let helper = hw.helper(
        RegistryEntry::new(&[&hw.host()], &hw.world.server.url(), identity)
            .output(Output::IdentityToken),
    );
    exercise(
        &hw,
        &helper,
        Output::IdentityToken,
        &Scenario {
            what: "kubernetes",
            own: "team-a/app",
            foreign: "team-b/app",
            kind: "kubernetes",
            username: IDENTITY_TOKEN_USERNAME,
        },
    );
}

#[test]
fn oidc_token_file_as_password() {
    let hw = HelperWorld::start();
    let token_file = hw.world.new_dir("id").join("id-token");
    std::fs::write(&token_file, workflow_token(&hw.ci, "org/app")).expect("write the ID token");
    let helper = hw.helper(
        RegistryEntry::new(
            &[&hw.host()],
            &hw.world.server.url(),
            Identity::OidcFile { token_file },
        )
        .output(Output::Password),
    );
    exercise(
        &hw,
        &helper,
        Output::Password,
        &Scenario {
            what: "oidc_file",
            own: "ci/org/app",
            foreign: "ci/org/other",
            kind: "oidc",
            username: "regauth",
        },
    );
}

#[test]
fn oidc_token_in_skopeos_environment_as_identity_token() {
    let hw = HelperWorld::start();
    let variable = "REGAUTH_E2E_ID_TOKEN";
    // Set on skopeo only (through the helper env): the helper sees it
    // because skopeo passes its environment to credential helpers.
    let helper = hw
        .helper(RegistryEntry::new(
            &[&hw.host()],
            &hw.world.server.url(),
            Identity::OidcEnv {
                variable: variable.to_owned(),
            },
        ))
        .with_var(variable, &workflow_token(&hw.ci, "org/app"));
    exercise(
        &hw,
        &helper,
        Output::IdentityToken,
        &Scenario {
            what: "oidc_env",
            own: "ci/org/app",
            foreign: "ci/org/other",
            kind: "oidc",
            username: IDENTITY_TOKEN_USERNAME,
        },
    );
}

#[test]
fn github_actions_runtime_token_as_password() {
    let hw = HelperWorld::start();
    let (issuer_url, key) = (hw.ci.url(), hw.ci.current_key());
    let workflow = GithubWorkflow::new("org/tool");
    let minted = workflow.clone();
    let stub = GithubActionsStub::start("runtime-request-token", move |audience| {
        // Without `audience` GitHub uses the owner's URL, which the server refuses.
        let audience = audience.unwrap_or("https://github.com/org");
        key.sign(&minted.claims(&issuer_url, audience))
    });
    let mut helper = hw.helper(
        RegistryEntry::new(
            &[&hw.host()],
            &hw.world.server.url(),
            Identity::GithubActions {
                audience: AUDIENCE.to_owned(),
            },
        )
        .output(Output::Password)
        .username("ci-bot"),
    );
    for (key, value) in stub.env() {
        helper = helper.with_var(&key, &value);
    }
    let helper = helper
        .with_var("GITHUB_REPOSITORY", &workflow.repository)
        .with_var("GITHUB_RUN_ID", "12874563210")
        .with_var("GITHUB_JOB", "release");
    exercise(
        &hw,
        &helper,
        Output::Password,
        &Scenario {
            what: "github_actions",
            own: "ci/org/tool",
            foreign: "ci/org/app",
            kind: "oidc",
            username: "ci-bot",
        },
    );

    let seen = stub.requests();
    assert_eq!(
        seen.len(),
        1,
        "one exchange, so one ID-token request: {seen:?}"
    );
    let request = &seen[0];
    assert_eq!(request.method, "GET", "{request:?}");
    assert!(
        request.bearer_ok,
        "the helper must send Authorization: Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN: {request:?}"
    );
    assert_eq!(
        request.audience.as_deref(),
        Some(AUDIENCE),
        "the configured audience goes in &audience=: {request:?}"
    );
    assert!(
        request.target.contains(API_VERSION),
        "the runner's query (api-version) must survive: {request:?}"
    );
    assert_eq!(request.status, 200, "{request:?}");

    // A wrong request token is a refusal, reported as a real failure.
    let refused = helper
        .clone()
        .with_var("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "wrong")
        .with_cache_dir(&hw.world.new_dir("empty-cache"))
        .get(&hw.host());
    let line = assert_real_failure(&refused, "github_actions with a wrong request token");
    assert!(
        line.contains("GitHub Actions") && refused.stderr.contains("id-token: write"),
        "the failure names the GitHub request and the fix:\n{}",
        refused.describe()
    );
}

#[test]
fn client_certificate_over_mtls_as_identity_token() {
    let pki = TestPki::new();
    let hw = HelperWorld::start_tls(&pki);
    let server = &hw.world.server;
    assert!(server.url().starts_with("https://"), "{}", server.url());
    let (cert, key) = pki.node.write(&hw.world.new_dir("node-cert"), "node");
    let entry = RegistryEntry::new(
        &[&hw.host()],
        &server.url(),
        Identity::ClientCertificate { cert, key },
    );

    // Without the server's CA the helper cannot trust the token server.
    let untrusting = hw.helper(entry.clone()).get(&hw.host());
    let line = assert_real_failure(&untrusting, "client_certificate without ca_file");
    assert!(
        line.contains("cannot reach the token server") || untrusting.stderr.contains("certificate"),
        "the failure should be about TLS trust:\n{}",
        untrusting.describe()
    );

    let helper = hw.helper(
        entry
            .ca_file(&server.server_ca_path())
            .output(Output::IdentityToken),
    );
    exercise(
        &hw,
        &helper,
        Output::IdentityToken,
        &Scenario {
            what: "client_certificate",
            own: "nodes/worker-1/app",
            foreign: "shared/base",
            kind: "node",
            username: IDENTITY_TOKEN_USERNAME,
        },
    );
}

#[test]
fn account_password_file_as_password() {
    let hw = HelperWorld::start();
    let identity = account_identity(
        &hw.world.new_dir("id"),
        "alice",
        &hw.world.password("alice"),
    );
    let helper = hw.helper(
        RegistryEntry::new(&[&hw.host()], &hw.world.server.url(), identity)
            .output(Output::Password),
    );
    exercise(
        &hw,
        &helper,
        Output::Password,
        &Scenario {
            what: "account",
            own: "alice/app",
            foreign: "bob/app",
            kind: "account",
            username: "regauth",
        },
    );

    // A wrong password is refused by the server: a real failure.
    let wrong = account_identity(&hw.world.new_dir("id"), "alice", "not-her-password");
    let refused = hw
        .helper(RegistryEntry::new(
            &[&hw.host()],
            &hw.world.server.url(),
            wrong,
        ))
        .get(&hw.host());
    assert_real_failure(&refused, "account with a wrong password");
    assert!(
        !refused.stderr.contains("not-her-password"),
        "the password must not be printed:\n{}",
        refused.describe()
    );
}
