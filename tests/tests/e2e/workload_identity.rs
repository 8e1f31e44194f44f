//! Workload identity: Kubernetes service-account tokens and GitHub Actions
//! OIDC tokens from a real (test) issuer are exchanged (RFC 8693) at the
//! token server for a regauth credential, which skopeo then uses against
//! the real registry, as a password and as an identity token. Also: keys
//! from a local JWKS file, issuer key rotation, RFC 8414 metadata and the
//! audit log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regauth_e2e::World;
use regauth_e2e::jwt::{AccessClaims, unverified_claims, unverified_header};
use regauth_e2e::oci::layout_manifest_digest;
use regauth_e2e::oidc_issuer::claims::{
    GITHUB_FIXTURE, GithubWorkflow, KUBERNETES_FIXTURE, ServiceAccount, json_shape, load_fixture,
    now,
};
use regauth_e2e::oidc_issuer::config::{IssuerConfig, issuers_yaml};
use regauth_e2e::oidc_issuer::exchange::{
    ExchangeRequest, GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ID_TOKEN, exchange_ok, expect_exchanged,
    expect_refused,
};
use regauth_e2e::oidc_issuer::{KeyAlg, OidcIssuer};
use regauth_e2e::skopeo::Auth;
use regauth_e2e::token_client::{TokenClient, http_client, send};
use regauth_e2e::token_server::{ISSUER, SERVICE, TokenServer, TokenServerBuilder};
use serde_json::{Value, json};

use crate::support::{verify, write_identity_token_authfile};

/// The audience workloads request their tokens for.
pub const AUDIENCE: &str = "regauth";

/// The policy of the workload identity contract: team namespaces own their
/// area, CI of `org/*` pushes `ci/<repository>`, accounts own `<name>/`.
pub const POLICY: &str = r#"policy:
  - comment: team namespaces pull and push their own area
    kind: kubernetes
    attributes: {namespace: "team-*"}
    resource: "${namespace}/**"
    actions: [pull, push]
  - comment: CI of org/app pushes its own image
    kind: oidc
    attributes: {claims.repository: "org/*"}
    resource: "ci/${claim:repository}"
    actions: [pull, push]
  - kind: account
    resource: "${name}/**"
    actions: ["*"]
"#;

/// What skopeo 1.9 reports when the token endpoint refuses its credentials.
const INVALID_CREDENTIALS: &str = "unable to retrieve auth token: invalid username/password";
/// What skopeo 1.9 reports when the registry refuses a token lacking access.
const ACCESS_DENIED: &str = "requested access to the resource is denied";

/// A token server (no registry) with its own directory; the server is
/// killed before the directory is removed.
pub struct IdentityServer {
    /// The running server.
    pub server: TokenServer,
    _dir: tempfile::TempDir,
}

impl IdentityServer {
    /// Starts a token server with `issuers` and `policy`. `prepare` runs
    /// first with the server's (config) directory, for files the config
    /// names by relative path.
    pub fn start(
        issuers: &[IssuerConfig],
        policy: &str,
        configure: impl FnOnce(TokenServerBuilder) -> TokenServerBuilder,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("regauth-e2e-")
            .tempdir()
            .expect("create temp dir");
        let server_dir = dir.path().join("token-server");
        std::fs::create_dir_all(&server_dir).expect("create token-server dir");
        prepare(&server_dir);
        let builder = TokenServerBuilder::new()
            .policy(policy)
            .extra_config(&issuers_yaml(issuers));
        let server = configure(builder).start(dir.path());
        Self { server, _dir: dir }
    }

    /// The server's `/token` client.
    pub fn tokens(&self) -> &TokenClient {
        self.server.client()
    }
}

/// A world (token server + registry) trusting `issuers`, with [`POLICY`].
fn world_with(issuers: &[IssuerConfig]) -> World {
    World::builder()
        .server(|s| s.policy(POLICY).extra_config(&issuers_yaml(issuers)))
        .start()
}

/// Asserts that an access token's `sub` names the principal: either its
/// bare name or `KIND:NAME`.
pub fn assert_subject(claims: &AccessClaims, kind: &str, name: &str) {
    assert!(
        claims.sub == name || claims.sub == format!("{kind}:{name}"),
        "access token sub {:?} should be {name:?} or \"{kind}:{name}\"",
        claims.sub
    );
}

/// `GET /token` with the regauth credential as the Basic password (any
/// username, like skopeo `--creds x:CREDENTIAL`) for `scopes`; asserts 200
/// and returns the verified access token claims.
pub fn grant_with_credential(
    server: &TokenServer,
    credential: &str,
    scopes: &[&str],
) -> AccessClaims {
    let mut query = vec![("service", SERVICE)];
    query.extend(scopes.iter().map(|s| ("scope", *s)));
    let reply = server
        .client()
        .get_token(&query, Some(("ci-bot", credential)));
    assert_eq!(
        reply.status, 200,
        "GET /token with an exchanged credential: {}",
        reply.body
    );
    verify(server, &reply.json_str("token"))
}

/// Asserts that the regauth credential is a refresh token for the token
/// server only: HS256, an audience that is not the registry's, and nothing
/// of the subject token inside.
fn assert_is_regauth_refresh_token(credential: &str, subject_token: &str) {
    assert_eq!(
        unverified_header(credential)["alg"],
        "HS256",
        "the credential is a regauth refresh token"
    );
    let claims = unverified_claims(credential);
    let aud = &claims["aud"];
    assert!(
        aud != SERVICE
            && !aud
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == SERVICE)),
        "a refresh token must never carry the registry service as audience: {claims}"
    );
    let signature = subject_token.rsplit('.').next().unwrap_or_default();
    assert!(
        !credential.contains(signature) && !claims.to_string().contains(signature),
        "the credential embeds the subject token"
    );
}

/// Pushes a fresh image to `repo` with `auth`, asserting success; returns the digest.
fn push_ok(world: &World, repo: &str, auth: Auth<'_>, what: &str) -> String {
    let (_, pushed) = world.try_push(repo, auth);
    pushed
        .output
        .assert_success(&format!("skopeo push of {repo} {what}"));
    pushed
        .digest
        .unwrap_or_else(|| panic!("skopeo push of {repo} wrote no --digestfile"))
}

/// Pulls `repo` with `auth`, asserting success and the manifest digest.
fn pull_ok(world: &World, repo: &str, auth: Auth<'_>, digest: &str, what: &str) {
    let dest = world.new_dir("oci-pulled");
    world
        .skopeo
        .pull(&world.reference(repo), &dest, auth)
        .assert_success(&format!("skopeo pull of {repo} {what}"));
    assert_eq!(
        layout_manifest_digest(&dest, "latest").as_deref(),
        Some(digest),
        "pulled {repo} {what}: not the pushed manifest"
    );
}

/// Asserts that a skopeo run failed on access, not on authentication.
fn assert_access_denied(output: &regauth_e2e::process::CmdOutput, what: &str) {
    assert!(
        !output.success(),
        "{what} must fail:\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains(ACCESS_DENIED) && !output.stderr.contains(INVALID_CREDENTIALS),
        "{what}: the credential is valid, so the failure must be about access:\n{}",
        output.describe()
    );
}

#[test]
fn service_account_token_pushes_and_pulls_its_namespace() {
    let issuer = OidcIssuer::start();
    let world = world_with(&[IssuerConfig::kubernetes("cluster-a", &issuer.url())]);
    let sa = ServiceAccount::new("team-a", "builder");
    let subject_token = issuer.service_account_token(&sa, AUDIENCE);

    let exchanged = exchange_ok(world.tokens(), &subject_token, SERVICE);
    let credential = exchanged.credential;
    assert_is_regauth_refresh_token(&credential, &subject_token);
    assert!(
        issuer.jwks_requests() >= 1,
        "the server verified the token without fetching the issuer's JWKS: {:?}",
        issuer.requests()
    );

    // The credential is no registry token.
    let direct = world
        .registry
        .get_manifest("team-a/app", "latest", Some(&credential));
    assert_eq!(
        direct.status, 401,
        "the registry must not accept the refresh token as a bearer token: {}",
        direct.body
    );

    // As a password: skopeo --creds x:CREDENTIAL (GET /token with Basic).
    let password = Auth::Creds("x", &credential);
    let digest = push_ok(&world, "team-a/app", password, "with --creds x:CREDENTIAL");
    pull_ok(
        &world,
        "team-a/app",
        password,
        &digest,
        "with --creds x:CREDENTIAL",
    );

    // As an identity token (POST grant_type=refresh_token).
    let authfile = write_identity_token_authfile(&world, &credential);
    let identity = Auth::AuthFile(&authfile);
    let digest = push_ok(&world, "team-a/app", identity, "with an identity token");
    pull_ok(
        &world,
        "team-a/app",
        identity,
        &digest,
        "with an identity token",
    );

    let claims = grant_with_credential(
        &world.server,
        &credential,
        &[
            "repository:team-a/app:pull,push",
            "repository:team-b/app:pull",
        ],
    );
    assert_subject(&claims, "kubernetes", &sa.subject());
    assert_eq!(
        claims.actions_on("repository", "team-a/app"),
        ["pull", "push"]
    );
    assert!(
        claims.actions_on("repository", "team-b/app").is_empty(),
        "team-a's service account reached team-b: {:?}",
        claims.access
    );
}

#[test]
fn service_account_of_another_namespace_gets_a_credential_but_no_access() {
    let issuer = OidcIssuer::start();
    let world = world_with(&[IssuerConfig::kubernetes("cluster-a", &issuer.url())]);
    let owner = exchange_ok(
        world.tokens(),
        &issuer.service_account_token(&ServiceAccount::new("team-a", "builder"), AUDIENCE),
        SERVICE,
    );
    let digest = push_ok(
        &world,
        "team-a/app",
        Auth::Creds("x", &owner.credential),
        "by team-a",
    );

    let outsider = ServiceAccount::new("other", "builder");
    let credential = exchange_ok(
        world.tokens(),
        &issuer.service_account_token(&outsider, AUDIENCE),
        SERVICE,
    )
    .credential;

    let (_, pushed) = world.try_push("team-a/app", Auth::Creds("x", &credential));
    assert_access_denied(&pushed.output, "push of team-a/app by namespace other");
    let pull = world.skopeo.pull(
        &world.reference("team-a/app"),
        &world.new_dir("oci-pulled"),
        Auth::Creds("x", &credential),
    );
    assert_access_denied(&pull, "pull of team-a/app by namespace other (password)");
    let authfile = write_identity_token_authfile(&world, &credential);
    let inspect = world.skopeo.inspect(
        &world.reference("team-a/app"),
        Auth::AuthFile(&authfile),
        &[],
    );
    assert_access_denied(
        &inspect,
        "inspect of team-a/app by namespace other (identity token)",
    );

    let claims = grant_with_credential(
        &world.server,
        &credential,
        &[
            "repository:team-a/app:pull,push",
            "repository:other/app:pull",
        ],
    );
    assert_subject(&claims, "kubernetes", &outsider.subject());
    assert!(
        claims.actions_on("repository", "team-a/app").is_empty()
            && claims.actions_on("repository", "other/app").is_empty(),
        "namespace other matches no rule, yet got: {:?}",
        claims.access
    );

    // Control: the image is intact for its owner.
    pull_ok(
        &world,
        "team-a/app",
        Auth::Creds("x", &owner.credential),
        &digest,
        "by team-a after the denied push",
    );
}

#[test]
fn github_actions_token_pushes_its_own_ci_repository() {
    let issuer = OidcIssuer::start_with(KeyAlg::Rs256);
    let world = world_with(&[IssuerConfig::oidc("github", &issuer.url()).name_claim("sub")]);
    let workflow = GithubWorkflow::new("org/app");
    let subject_token = issuer.github_token(&workflow, AUDIENCE);

    // GitHub tokens are ID tokens; exchange them as such, without `audience`
    // (optional when the server has one service).
    let reply = ExchangeRequest {
        subject_token: &subject_token,
        subject_token_type: TOKEN_TYPE_ID_TOKEN,
        audience: None,
        scope: None,
    }
    .send(world.tokens());
    let credential = expect_exchanged(&reply, "exchange of a GitHub Actions ID token").credential;
    assert_is_regauth_refresh_token(&credential, &subject_token);

    let digest = push_ok(
        &world,
        "ci/org/app",
        Auth::Creds("x", &credential),
        "by org/app's workflow",
    );
    let authfile = write_identity_token_authfile(&world, &credential);
    pull_ok(
        &world,
        "ci/org/app",
        Auth::AuthFile(&authfile),
        &digest,
        "by org/app's workflow with an identity token",
    );

    let claims = grant_with_credential(
        &world.server,
        &credential,
        &[
            "repository:ci/org/app:pull,push",
            "repository:ci/org/other:pull",
        ],
    );
    assert_subject(&claims, "oidc", &workflow.subject());
    assert_eq!(
        claims.actions_on("repository", "ci/org/app"),
        ["pull", "push"]
    );
    assert!(
        claims.actions_on("repository", "ci/org/other").is_empty(),
        "org/app's workflow reached another repository: {:?}",
        claims.access
    );
}

#[test]
fn github_actions_token_of_another_org_is_denied() {
    let issuer = OidcIssuer::start_with(KeyAlg::Rs256);
    let world = world_with(&[IssuerConfig::oidc("github", &issuer.url())]);
    let evil = GithubWorkflow::new("evil/app");
    let credential = exchange_ok(
        world.tokens(),
        &issuer.github_token(&evil, AUDIENCE),
        SERVICE,
    )
    .credential;

    let (_, pushed) = world.try_push("ci/org/app", Auth::Creds("x", &credential));
    assert_access_denied(&pushed.output, "push of ci/org/app by evil/app's workflow");

    let claims = grant_with_credential(
        &world.server,
        &credential,
        &[
            "repository:ci/org/app:pull,push",
            "repository:ci/evil/app:pull,push",
        ],
    );
    assert_subject(&claims, "oidc", &evil.subject());
    assert!(
        claims.access.iter().all(|e| e.actions.is_empty()),
        "evil/app matches no rule, yet got: {:?}",
        claims.access
    );

    // Control: org/app's workflow may push where evil/app may not.
    let good = exchange_ok(
        world.tokens(),
        &issuer.github_token(&GithubWorkflow::new("org/app"), AUDIENCE),
        SERVICE,
    );
    push_ok(
        &world,
        "ci/org/app",
        Auth::Creds("x", &good.credential),
        "by org/app's workflow",
    );
}

/// One rule per attribute, each granting pull on `attrs/<attribute>`, so a
/// missing or misnamed attribute shows up as exactly one missing grant.
fn attribute_policy(kind: &str, attributes: &[(&str, &str)], variable_rule: &str) -> String {
    let mut policy = String::from("policy:\n");
    for (key, value) in attributes {
        policy.push_str(&format!(
            "  - kind: {kind}\n    attributes: {{{}: {}}}\n    resource: \"attrs/{key}\"\n    actions: [pull]\n",
            json!(key),
            json!(value),
        ));
    }
    policy.push_str(variable_rule);
    policy
}

/// Asks for pull on `attrs/<key>` for every attribute and returns the keys
/// that were not granted.
fn missing_attribute_grants(
    server: &TokenServer,
    credential: &str,
    attributes: &[(&str, &str)],
) -> Vec<String> {
    let scopes: Vec<String> = attributes
        .iter()
        .map(|(key, _)| format!("repository:attrs/{key}:pull"))
        .collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let claims = grant_with_credential(server, credential, &scopes);
    attributes
        .iter()
        .filter(|(key, _)| claims.actions_on("repository", &format!("attrs/{key}")) != ["pull"])
        .map(|(key, _)| (*key).to_owned())
        .collect()
}

#[test]
fn service_account_token_becomes_a_principal_with_every_attribute() {
    // The fixture is the template: what we mint has exactly its shape.
    let fixture = load_fixture(KUBERNETES_FIXTURE);
    let sa = ServiceAccount::from_fixture();
    assert_eq!(fixture["sub"], sa.subject().as_str());
    let issuer = OidcIssuer::start();
    let minted = sa.claims(&issuer.url(), AUDIENCE, Duration::from_secs(3600));
    assert_eq!(
        json_shape(&minted),
        json_shape(&fixture),
        "minted service-account claims differ in shape from {KUBERNETES_FIXTURE}"
    );
    assert_eq!(minted["kubernetes.io"], fixture["kubernetes.io"]);

    let attributes = [
        ("namespace", sa.namespace.as_str()),
        ("service_account", sa.name.as_str()),
        ("service_account_uid", sa.uid.as_str()),
        ("pod", sa.pod.as_str()),
        ("pod_uid", sa.pod_uid.as_str()),
        ("node", sa.node.as_str()),
        ("node_uid", sa.node_uid.as_str()),
        ("issuer", "cluster-a"),
    ];
    let policy = attribute_policy(
        "kubernetes",
        &attributes,
        "  - kind: kubernetes\n    name: \"system:serviceaccount:*:*\"\n    resource: \"vars/${namespace}/${service_account}/${node}\"\n    actions: [pull]\n",
    );
    let identity = IdentityServer::start(
        &[IssuerConfig::kubernetes("cluster-a", &issuer.url())],
        &policy,
        |b| b,
        |_| {},
    );
    let credential = exchange_ok(identity.tokens(), &issuer.mint(&minted), SERVICE).credential;

    let missing = missing_attribute_grants(&identity.server, &credential, &attributes);
    assert!(
        missing.is_empty(),
        "attributes missing or wrong on the kubernetes principal: {missing:?}\n{}",
        identity.server.logs()
    );
    let vars = format!("vars/{}/{}/{}", sa.namespace, sa.name, sa.node);
    let claims = grant_with_credential(
        &identity.server,
        &credential,
        &[&format!("repository:{vars}:pull")],
    );
    assert_eq!(
        claims.actions_on("repository", &vars),
        ["pull"],
        "${{namespace}}, ${{service_account}} and ${{node}} should expand to {vars}: {:?}",
        claims.access
    );

    // Control: the same service account in another pod matches every rule
    // but the pod ones.
    let mut elsewhere = sa.clone();
    elsewhere.pod = "builder-elsewhere".into();
    elsewhere.pod_uid = regauth_e2e::oidc_issuer::claims::random_uuid();
    let credential = exchange_ok(
        identity.tokens(),
        &issuer.service_account_token(&elsewhere, AUDIENCE),
        SERVICE,
    )
    .credential;
    let missing = missing_attribute_grants(&identity.server, &credential, &attributes);
    assert_eq!(
        missing,
        ["pod", "pod_uid"],
        "attribute rules in another pod"
    );
}

#[test]
fn oidc_token_claims_become_attributes() {
    let fixture = load_fixture(GITHUB_FIXTURE);
    let issuer = OidcIssuer::start_with(KeyAlg::Rs256);
    let workflow = GithubWorkflow::new("org/app");
    let mut claims = workflow.claims(&issuer.url(), AUDIENCE);
    assert_eq!(
        json_shape(&claims),
        json_shape(&fixture),
        "minted GitHub claims differ in shape from {GITHUB_FIXTURE}"
    );
    assert_eq!(fixture["sub"], workflow.subject().as_str());
    // Non-string top-level claims become attributes too.
    claims["build_number"] = json!(42);
    claims["protected"] = json!(true);
    claims["labels"] = json!(["not", "a", "scalar"]);

    let attributes = [
        ("claims.repository", "org/app"),
        ("claims.repository_owner", "org"),
        ("claims.ref", "refs/heads/main"),
        ("claims.ref_type", "branch"),
        ("claims.event_name", "push"),
        ("claims.actor", "octocat"),
        ("claims.runner_environment", "github-hosted"),
        (
            "claims.job_workflow_ref",
            "org/app/.github/workflows/release.yml@refs/heads/main",
        ),
        ("claims.sub", "repo:org/app:ref:refs/heads/main"),
        ("claims.build_number", "42"),
        ("claims.protected", "true"),
        ("issuer", "github"),
    ];
    let policy = attribute_policy(
        "oidc",
        &attributes,
        "  - kind: oidc\n    name: \"repo:org/**\"\n    resource: \"vars/${claim:repository_owner}/${claim:workflow}\"\n    actions: [pull]\n",
    );
    let identity = IdentityServer::start(
        &[IssuerConfig::oidc("github", &issuer.url()).name_claim("sub")],
        &policy,
        |b| b,
        |_| {},
    );
    let credential = exchange_ok(identity.tokens(), &issuer.mint(&claims), SERVICE).credential;
    let missing = missing_attribute_grants(&identity.server, &credential, &attributes);
    assert!(
        missing.is_empty(),
        "attributes missing or wrong on the oidc principal: {missing:?}\n{}",
        identity.server.logs()
    );
    let granted = grant_with_credential(
        &identity.server,
        &credential,
        &["repository:vars/org/release:pull"],
    );
    assert_subject(&granted, "oidc", &workflow.subject());
    assert_eq!(
        granted.actions_on("repository", "vars/org/release"),
        ["pull"],
        "${{claim:NAME}} should expand: {:?}",
        granted.access
    );

    // Control: a run on another branch misses exactly the ref rule.
    let mut dev = workflow.clone();
    dev.git_ref = "refs/heads/dev".into();
    let mut claims = dev.claims(&issuer.url(), AUDIENCE);
    claims["build_number"] = json!(42);
    claims["protected"] = json!(true);
    let credential = exchange_ok(identity.tokens(), &issuer.mint(&claims), SERVICE).credential;
    let missing = missing_attribute_grants(&identity.server, &credential, &attributes);
    assert_eq!(
        missing,
        ["claims.ref", "claims.job_workflow_ref", "claims.sub"],
        "attribute rules for a run on refs/heads/dev"
    );
}

#[test]
fn oidc_name_claim_picks_the_principal_name() {
    let issuer = OidcIssuer::start_with(KeyAlg::Rs256);
    let identity = IdentityServer::start(
        &[IssuerConfig::oidc("github", &issuer.url()).name_claim("repository")],
        "policy:\n  - kind: oidc\n    name: \"org/app\"\n    resource: \"ci/${name}\"\n    actions: [pull]\n",
        |b| b,
        |_| {},
    );
    let credential = exchange_ok(
        identity.tokens(),
        &issuer.github_token(&GithubWorkflow::new("org/app"), AUDIENCE),
        SERVICE,
    )
    .credential;
    let claims = grant_with_credential(
        &identity.server,
        &credential,
        &["repository:ci/org/app:pull"],
    );
    assert_subject(&claims, "oidc", "org/app");
    assert_eq!(claims.actions_on("repository", "ci/org/app"), ["pull"]);
}

#[test]
fn air_gapped_issuers_are_trusted_from_a_jwks_file() {
    // cluster-a: a live issuer the server must NOT contact (it has a file).
    // cluster-b: the usual in-cluster issuer URL, unreachable from here.
    let live = OidcIssuer::start();
    let offline = OidcIssuer::offline(
        "https://kubernetes.default.svc.cluster.local",
        KeyAlg::Rs256,
    );
    let temp = tempfile::Builder::new()
        .prefix("regauth-e2e-jwks-")
        .tempdir()
        .expect("temp dir");
    let absolute: PathBuf = temp.path().join("cluster-b.jwks.json");
    offline.write_jwks(&absolute);

    let identity = IdentityServer::start(
        &[
            IssuerConfig::kubernetes("cluster-a", &live.url()).jwks_file("jwks/cluster-a.json"),
            IssuerConfig::kubernetes("cluster-b", &offline.url())
                .danger_allow_http(false)
                .jwks_file(absolute.to_str().expect("UTF-8 temp path")),
        ],
        POLICY,
        |b| b,
        |dir| {
            std::fs::create_dir_all(dir.join("jwks")).expect("create jwks dir");
            live.write_jwks(&dir.join("jwks").join("cluster-a.json"));
        },
    );

    for (issuer, name) in [(&live, "cluster-a"), (&offline, "cluster-b")] {
        let sa = ServiceAccount::new("team-a", "builder");
        let credential = exchange_ok(
            identity.tokens(),
            &issuer.service_account_token(&sa, AUDIENCE),
            SERVICE,
        )
        .credential;
        let claims = grant_with_credential(
            &identity.server,
            &credential,
            &["repository:team-a/app:pull"],
        );
        assert_eq!(
            claims.actions_on("repository", "team-a/app"),
            ["pull"],
            "{name}: a token verified with the JWKS file grants by policy"
        );
    }

    // The file is the only key source: a key the issuer publishes later is
    // unknown, and the server still never calls the issuer.
    live.rotate();
    let rotated = live.service_account_token(&ServiceAccount::new("team-a", "builder"), AUDIENCE);
    let reply = ExchangeRequest::jwt(&rotated, SERVICE).send(identity.tokens());
    expect_refused(
        &reply,
        "invalid_request",
        &[],
        &rotated,
        "a token signed by a key missing from the JWKS file",
    );
    assert_eq!(
        (live.discovery_requests(), live.jwks_requests()),
        (0, 0),
        "with jwks_file the server must not contact the issuer: {:?}",
        live.requests()
    );
}

#[test]
fn issuer_key_rotation_is_followed_and_keys_are_cached() {
    let issuer = OidcIssuer::start();
    let identity = IdentityServer::start(
        &[IssuerConfig::kubernetes("cluster-a", &issuer.url()).jwks_min_refresh_interval("0s")],
        POLICY,
        |b| b,
        |_| {},
    );
    let sa = ServiceAccount::new("team-a", "builder");
    let tokens = identity.tokens();
    let old_key = issuer.current_key();

    exchange_ok(
        tokens,
        &issuer.service_account_token(&sa, AUDIENCE),
        SERVICE,
    );
    let fetched = issuer.jwks_requests();
    assert!(fetched >= 1, "no JWKS fetch: {:?}", issuer.requests());

    // Cached: more tokens with a known kid fetch nothing, even with the
    // issuer down.
    for _ in 0..3 {
        exchange_ok(
            tokens,
            &issuer.service_account_token(&sa, AUDIENCE),
            SERVICE,
        );
    }
    issuer.set_available(false);
    exchange_ok(
        tokens,
        &issuer.service_account_token(&sa, AUDIENCE),
        SERVICE,
    );
    issuer.set_available(true);
    assert_eq!(
        issuer.jwks_requests(),
        fetched,
        "a known kid must be served from the cache: {:?}",
        issuer.requests()
    );

    // Rotation: the new kid is unknown, so the server refetches and accepts it.
    let new_key = issuer.rotate();
    assert_ne!(new_key.kid(), old_key.kid());
    let credential = exchange_ok(
        tokens,
        &issuer.service_account_token(&sa, AUDIENCE),
        SERVICE,
    )
    .credential;
    assert!(
        issuer.jwks_requests() > fetched,
        "the new kid was accepted without refetching the JWKS: {:?}",
        issuer.requests()
    );
    let claims = grant_with_credential(
        &identity.server,
        &credential,
        &["repository:team-a/app:pull"],
    );
    assert_eq!(claims.actions_on("repository", "team-a/app"), ["pull"]);

    // The old key left the JWKS the server now holds: its tokens stop working.
    let stale = old_key.sign(&sa.claims(&issuer.url(), AUDIENCE, Duration::from_secs(3600)));
    let reply = ExchangeRequest::jwt(&stale, SERVICE).send(tokens);
    expect_refused(
        &reply,
        "invalid_request",
        &[],
        &stale,
        "a token signed by the retired key",
    );

    // Control: the new key keeps working.
    exchange_ok(
        tokens,
        &issuer.service_account_token(&sa, AUDIENCE),
        SERVICE,
    );
}

#[test]
fn exchange_options_and_credential_lifetime() {
    let issuer = OidcIssuer::start();
    let identity = IdentityServer::start(
        &[IssuerConfig::kubernetes("cluster-a", &issuer.url()).credential_ttl("10m")],
        POLICY,
        |b| b,
        |_| {},
    );
    let sa = ServiceAccount::new("team-a", "builder");
    let subject_token = issuer.service_account_token(&sa, AUDIENCE);

    let exchanged = exchange_ok(identity.tokens(), &subject_token, SERVICE);
    assert!(
        (1..=600).contains(&exchanged.expires_in) && exchanged.expires_in > 540,
        "credential_ttl 10m: expires_in is {}",
        exchanged.expires_in
    );
    let claims = unverified_claims(&exchanged.credential);
    let lifetime = claims["exp"].as_i64().unwrap_or_default() - now();
    assert!(
        (540..=600).contains(&lifetime),
        "credential_ttl 10m: the credential expires in {lifetime} s: {claims}"
    );

    // `audience` is optional with a single service; `scope` is accepted.
    for (label, request) in [
        (
            "without audience",
            ExchangeRequest {
                audience: None,
                ..ExchangeRequest::jwt(&subject_token, SERVICE)
            },
        ),
        (
            "with a scope",
            ExchangeRequest {
                scope: Some("repository:team-a/app:pull"),
                ..ExchangeRequest::jwt(&subject_token, SERVICE)
            },
        ),
    ] {
        let reply = request.send(identity.tokens());
        let credential = expect_exchanged(&reply, label).credential;
        let granted = grant_with_credential(
            &identity.server,
            &credential,
            &["repository:team-a/app:pull"],
        );
        assert_eq!(
            granted.actions_on("repository", "team-a/app"),
            ["pull"],
            "{label}"
        );
    }
}

#[test]
fn authorization_server_metadata_advertises_token_exchange() {
    let issuer = OidcIssuer::start();
    let identity = IdentityServer::start(
        &[IssuerConfig::kubernetes("cluster-a", &issuer.url())],
        POLICY,
        |b| b,
        |_| {},
    );
    let base = identity.server.url();
    let reply = send(http_client().get(format!("{base}/.well-known/oauth-authorization-server")));
    assert_eq!(reply.status, 200, "RFC 8414 metadata: {}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "metadata content type: {:?}",
        reply.header("content-type")
    );
    let metadata = reply.json();
    let issuer_field = metadata["issuer"].as_str().unwrap_or_default();
    assert!(
        issuer_field == base || issuer_field == ISSUER,
        "metadata issuer {issuer_field:?} should be the public URL {base} (or the token issuer {ISSUER})"
    );
    assert_eq!(
        metadata["token_endpoint"],
        identity.server.token_url(),
        "{metadata}"
    );
    let grants: Vec<&str> = metadata["grant_types_supported"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for grant in [
        GRANT_TOKEN_EXCHANGE,
        "password",
        "refresh_token",
        "client_credentials",
    ] {
        assert!(
            grants.contains(&grant),
            "grant_types_supported lacks {grant}: {metadata}"
        );
    }

    // jwks_uri is absolute and serves the key that signs access tokens.
    let jwks_uri = metadata["jwks_uri"]
        .as_str()
        .unwrap_or_else(|| panic!("jwks_uri missing: {metadata}"));
    assert!(
        jwks_uri.starts_with(&format!("{base}/")),
        "jwks_uri {jwks_uri} is not on {base}"
    );
    let jwks = send(http_client().get(jwks_uri));
    assert_eq!(jwks.status, 200, "GET {jwks_uri}: {}", jwks.body);
    let access = identity
        .tokens()
        .get_token(&[("service", SERVICE)], None)
        .json_str("token");
    let kid = unverified_header(&access)["kid"].clone();
    assert!(
        jwks.json()["keys"]
            .as_array()
            .is_some_and(|keys| keys.iter().any(|k| k["kid"] == kid)),
        "the JWKS at {jwks_uri} lacks the signing kid {kid}: {}",
        jwks.body
    );
}

/// Removes ANSI escape sequences (the server's text logs are coloured).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of field `key` in a tracing text line (`key=value` or
/// `key="value"`), if present.
fn log_field(line: &str, key: &str) -> Option<String> {
    let needle = format!(" {key}=");
    let start = line.find(&needle)? + needle.len();
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut escaped = false;
        for c in quoted.chars() {
            match (escaped, c) {
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => return Some(value),
                (false, c) => value.push(c),
            }
        }
        Some(value)
    } else {
        // An empty value is followed directly by the next field's space.
        Some(rest.split(' ').next().unwrap_or_default().to_owned())
    }
}

#[test]
fn audit_log_records_exchanges_issuance_and_denials_without_tokens() {
    let issuer = OidcIssuer::start();
    let world = World::builder()
        .server(|s| {
            s.policy(POLICY)
                .extra_config(&issuers_yaml(&[IssuerConfig::kubernetes(
                    "cluster-a",
                    &issuer.url(),
                )]))
                .env("REGAUTH_LOG", "debug")
        })
        .start();
    let tokens = world.tokens();
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut secret = |label: &str, token: &str| {
        secrets.push((label.to_owned(), token.to_owned()));
        if let Some((_, signature)) = token.rsplit_once('.')
            && !signature.is_empty()
        {
            secrets.push((format!("{label} (signature)"), signature.to_owned()));
        }
    };

    let team_a = ServiceAccount::new("team-a", "builder");
    let subject_a = issuer.service_account_token(&team_a, AUDIENCE);
    secret("team-a subject token", &subject_a);
    let credential_a = exchange_ok(tokens, &subject_a, SERVICE).credential;
    secret("team-a credential", &credential_a);
    push_ok(
        &world,
        "team-a/app",
        Auth::Creds("x", &credential_a),
        "by team-a",
    );
    let authfile = write_identity_token_authfile(&world, &credential_a);
    world
        .skopeo
        .inspect(
            &world.reference("team-a/app"),
            Auth::AuthFile(&authfile),
            &[],
        )
        .assert_success("skopeo inspect with team-a's identity token");

    let other = ServiceAccount::new("other", "builder");
    let subject_other = issuer.service_account_token(&other, AUDIENCE);
    secret("other subject token", &subject_other);
    let credential_other = exchange_ok(tokens, &subject_other, SERVICE).credential;
    secret("other credential", &credential_other);
    let denied = tokens.get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:team-a/app:pull,push"),
        ],
        Some(("x", &credential_other)),
    );
    assert_eq!(denied.status, 200, "{}", denied.body);
    secret("denied access token", &denied.json_str("token"));

    let mut expired_claims = team_a.claims(&issuer.url(), AUDIENCE, Duration::from_secs(600));
    expired_claims["iat"] = json!(now() - 1800);
    expired_claims["nbf"] = json!(now() - 1800);
    expired_claims["exp"] = json!(now() - 600);
    let expired = issuer.mint(&expired_claims);
    secret("expired subject token", &expired);
    let reply = ExchangeRequest::jwt(&expired, SERVICE).send(tokens);
    expect_refused(&reply, "invalid_request", &[], &expired, "expired token");

    let log = strip_ansi(&format!(
        "{}\n{}",
        world.server.stdout(),
        world.server.stderr()
    ));
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("regauth::audit"))
        .collect();
    let context = || format!("audit lines:\n{}", audit.join("\n"));
    let outcome = |line: &str| log_field(line, "outcome").unwrap_or_default();
    let names = |line: &str, sa: &ServiceAccount| {
        line.contains(&sa.subject()) && log_field(line, "kind").as_deref() == Some("kubernetes")
    };

    // Exchanges: one line per principal, kind and name, a success outcome.
    for sa in [&team_a, &other] {
        assert!(
            audit.iter().any(|l| names(l, sa)
                && l.to_lowercase().contains("exchange")
                && !outcome(l).is_empty()
                && !["rejected", "denied", "failed"].contains(&outcome(l).as_str())),
            "no successful exchange line for {} (kind=kubernetes, with an outcome)\n{}",
            sa.subject(),
            context()
        );
    }
    // Issuance: team-a got push on its repository, with the client address.
    assert!(
        audit.iter().any(|l| names(l, &team_a)
            && log_field(l, "granted")
                .is_some_and(|g| g.contains("repository:team-a/app:") && g.contains("push"))
            && l.contains("127.0.0.1")),
        "no issuance line granting team-a/app push to {}\n{}",
        team_a.subject(),
        context()
    );
    // Denial: other asked for team-a/app and got nothing.
    assert!(
        audit.iter().any(|l| names(l, &other)
            && log_field(l, "requested").is_some_and(|r| r.contains("team-a/app"))
            && log_field(l, "granted").is_some_and(|g| !g.contains("team-a/app"))
            && outcome(l) != "granted"),
        "no denial line for {} asking for team-a/app\n{}",
        other.subject(),
        context()
    );
    // The refused exchange.
    assert!(
        audit
            .iter()
            .any(|l| outcome(l) == "rejected" && l.contains("127.0.0.1")),
        "no rejected line (with the client address) for the expired subject token\n{}",
        context()
    );

    let leaks: Vec<&str> = secrets
        .iter()
        .filter(|(_, value)| log.contains(value.as_str()))
        .map(|(label, _)| label.as_str())
        .collect();
    assert!(
        leaks.is_empty(),
        "tokens found in the token server's output: {leaks:?}\n{log}"
    );
}

#[test]
fn log_field_parses_tracing_text_fields() {
    let line = "2026-01-01T00:00:00Z  INFO regauth::audit: token issued outcome=\"granted\" kind=kubernetes granted=\"a b\" refresh=true";
    assert_eq!(log_field(line, "outcome").as_deref(), Some("granted"));
    assert_eq!(log_field(line, "kind").as_deref(), Some("kubernetes"));
    assert_eq!(log_field(line, "granted").as_deref(), Some("a b"));
    assert_eq!(log_field(line, "refresh").as_deref(), Some("true"));
    assert_eq!(log_field(line, "missing"), None);
    let empty = "x requested= granted= rules=none";
    assert_eq!(log_field(empty, "requested").as_deref(), Some(""));
    assert_eq!(log_field(empty, "granted").as_deref(), Some(""));
    assert_eq!(
        strip_ansi("\u{1b}[3mkind\u{1b}[0m\u{1b}[2m=\u{1b}[0mx"),
        "kind=x"
    );
}

#[test]
fn issuer_outage_before_the_first_fetch_is_not_fatal() {
    let issuer = OidcIssuer::start();
    let identity = IdentityServer::start(
        &[IssuerConfig::kubernetes("cluster-a", &issuer.url()).jwks_min_refresh_interval("0s")],
        POLICY,
        |b| b,
        |_| {},
    );
    let token = issuer.service_account_token(&ServiceAccount::new("team-a", "builder"), AUDIENCE);
    issuer.set_available(false);
    let reply = ExchangeRequest::jwt(&token, SERVICE).send(identity.tokens());
    assert!(
        reply.status != 200 && reply.json().get("access_token").is_none(),
        "with the issuer down and no keys cached, nothing can be verified: {} {}",
        reply.status,
        reply.body
    );
    assert!(
        reply.status == 400 || reply.status >= 500,
        "an unverifiable token is a 400 or a server-side 5xx, got {}: {}",
        reply.status,
        reply.body
    );
    assert!(
        reply.json()["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "the refusal says why: {}",
        reply.body
    );
    assert!(
        issuer.discovery_requests() + issuer.jwks_requests() >= 1,
        "the server did not even try the issuer: {:?}",
        issuer.requests()
    );
    eprintln!(
        "exchange with the issuer down: {} {}",
        reply.status, reply.body
    );

    // Back up: the next exchange fetches and succeeds.
    issuer.set_available(true);
    exchange_ok(identity.tokens(), &token, SERVICE);
}
