//! The kubelet image credential provider plugin (`docker-credential-regauth
//! kubelet`), driven like the kubelet drives it: the credentials it answers
//! are handed to ctr and skopeo the way the kubelet hands them to the CRI; a
//! pod's service-account token is the pod's identity; every apiVersion gets
//! exactly the API's fields back; `auth` keys follow the kubelet's matching
//! rules and survive its cache; a cached credential goes only to the exact
//! pod token the token server accepted for it; bad input and a hung token
//! server end in a prompt, clear failure with nothing on stdout.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use regauth_e2e::World;
use regauth_e2e::containerd::{Containerd, CtrAuth};
use regauth_e2e::jwt::AccessClaims;
use regauth_e2e::kubelet_plugin::config::{Entry, NodeIdentity, write_config};
use regauth_e2e::kubelet_plugin::kubelet::{Kubelet, urls_match};
use regauth_e2e::kubelet_plugin::silent::SilentServer;
use regauth_e2e::kubelet_plugin::{
    API_GROUP, API_VERSIONS, AuthConfig, Plugin, REQUEST_KIND, RESPONSE_KIND, Request,
    STDERR_PREFIX, api_version, log_field, strip_ansi,
};
use regauth_e2e::net::free_port;
use regauth_e2e::oci::layout_manifest_digest;
use regauth_e2e::oidc_issuer::OidcIssuer;
use regauth_e2e::oidc_issuer::claims::{ServiceAccount, now};
use regauth_e2e::oidc_issuer::config::{IssuerConfig, issuers_yaml};
use regauth_e2e::oidc_issuer::forge;
use regauth_e2e::pki::{NODE_NAME, TestPki};
use regauth_e2e::process::CmdOutput;
use regauth_e2e::secrets::{random_bytes, random_hex, random_password};
use regauth_e2e::skopeo::Auth;
use regauth_e2e::token_server::{SERVICE, TokenServer, TokenServerBuilder};
use serde_json::{Value, json};

use crate::support::verify;

/// The account a node exchanges when a request carries no pod token.
const NODE_ACCOUNT: &str = "node-a";
/// The username the plugin answers with unless an entry sets one.
const DEFAULT_USERNAME: &str = "regauth";

/// Nodes pull what alice publishes under `apps/`; accounts own `<name>/`.
const NODE_POLICY: &str = r#"policy:
  - comment: alice publishes the apps
    kind: account
    name: alice
    type: repository
    resource: "apps/**"
    actions: ["*"]
  - comment: the node pulls the apps
    kind: account
    name: node-a
    type: repository
    resource: "apps/**"
    actions: [pull]
  - kind: account
    type: repository
    resource: "${name}/**"
    actions: ["*"]
"#;

/// Kubelet-style node certificates pull `shared/`, which alice publishes.
const NODE_CERT_POLICY: &str = r#"policy:
  - kind: account
    name: alice
    type: repository
    resource: "shared/**"
    actions: ["*"]
  - kind: node
    attributes: {organization: "system:nodes"}
    type: repository
    resource: "shared/**"
    actions: [pull]
  - kind: account
    type: repository
    resource: "${name}/**"
    actions: ["*"]
"#;

/// Pods of `team-*` namespaces own their namespace's area; the node account
/// pulls everything; accounts own `<name>/`.
const POD_POLICY: &str = r#"policy:
  - comment: team namespaces pull and push their own area
    kind: kubernetes
    attributes: {namespace: "team-*"}
    type: repository
    resource: "${namespace}/**"
    actions: [pull, push]
  - comment: the node pulls everything
    kind: account
    name: node-a
    type: repository
    resource: "**"
    actions: [pull]
  - kind: account
    type: repository
    resource: "${name}/**"
    actions: ["*"]
"#;

/// What skopeo 1.9 says when the registry refuses a token lacking access.
const ACCESS_DENIED: &str = "requested access to the resource is denied";
/// What skopeo 1.9 says when the token endpoint refuses the credentials.
const INVALID_CREDENTIALS: &str = "invalid username/password";
/// What ctr 1.6 reports when the registry refuses a token lacking access.
const CTR_INSUFFICIENT_SCOPE: &str = "insufficient_scope: authorization failed";

/// A token server without a registry, and a directory for plugin setups.
/// Fields drop in order: the server is killed before the directory goes.
struct Bench {
    server: TokenServer,
    dir: tempfile::TempDir,
}

impl Bench {
    /// Starts a token server with account [`NODE_ACCOUNT`] after `configure`.
    fn start(configure: impl FnOnce(TokenServerBuilder) -> TokenServerBuilder) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("regauth-e2e-")
            .tempdir()
            .expect("create temp dir");
        let builder = TokenServerBuilder::new().account(NODE_ACCOUNT, &random_password(), &[]);
        let server = configure(builder).start(dir.path());
        Self { server, dir }
    }

    /// The node account as an identity, its password in `label/`.
    fn node_identity(&self, label: &str) -> NodeIdentity {
        NodeIdentity::account(
            &self.dir.path().join(label),
            NODE_ACCOUNT,
            self.server.password(NODE_ACCOUNT),
        )
    }

    /// A plugin with `entries`, configured under `label/`.
    fn plugin(&self, label: &str, entries: &[Entry]) -> Plugin {
        plugin_in(&self.dir.path().join(label), entries)
    }
}

/// A plugin whose config (with `entries`), cache and HOME live in `dir`.
fn plugin_in(dir: &Path, entries: &[Entry]) -> Plugin {
    let config = write_config(dir, entries);
    Plugin::new(&config, &dir.join("home"))
}

/// A registry host no registry serves: for tests of the plugin's answers alone.
const ABSENT_REGISTRY: &str = "registry.regauth.test:5000";

/// A plugin serving [`ABSENT_REGISTRY`] from `token_server` (with the entry
/// `timeout`, if any) as an account whose password is made up: for tests
/// where no exchange may succeed. Returns the directory holding it all.
fn offline_plugin(token_server: &str, timeout: Option<&str>) -> (tempfile::TempDir, Plugin) {
    let dir = tempfile::Builder::new()
        .prefix("regauth-e2e-")
        .tempdir()
        .expect("create temp dir");
    let node = NodeIdentity::account(
        &dir.path().join("identity"),
        NODE_ACCOUNT,
        &random_password(),
    );
    let mut entry = Entry::new(&[ABSENT_REGISTRY], token_server, node);
    if let Some(timeout) = timeout {
        entry = entry.timeout(timeout);
    }
    let plugin = plugin_in(&dir.path().join("plugin"), &[entry]);
    (dir, plugin)
}

/// A world whose token server knows [`NODE_ACCOUNT`] too, after `configure`.
fn world_with_node(configure: impl FnOnce(TokenServerBuilder) -> TokenServerBuilder) -> World {
    World::builder()
        .server(|s| configure(s.account(NODE_ACCOUNT, &random_password(), &[])))
        .start()
}

/// `GET /token` with `creds` as Basic credentials, the way a CRI client
/// spends them, for `scopes`; asserts 200 and returns the verified claims.
fn granted(server: &TokenServer, creds: &AuthConfig, scopes: &[&str]) -> AccessClaims {
    let mut query = vec![("service", SERVICE)];
    query.extend(scopes.iter().map(|s| ("scope", *s)));
    let reply = server
        .client()
        .get_token(&query, Some((&creds.username, &creds.password)));
    assert_eq!(
        reply.status, 200,
        "GET /token with the plugin's credential: {}",
        reply.body
    );
    verify(server, &reply.json_str("token"))
}

/// Asserts that `sub` names `name`, bare or as `KIND:NAME`.
fn assert_subject(claims: &AccessClaims, kind: &str, name: &str) {
    assert!(
        claims.sub == name || claims.sub == format!("{kind}:{name}"),
        "access token sub {:?} should name {kind} {name:?}",
        claims.sub
    );
}

/// Asserts that a password handed out for a pod is a regauth credential
/// and nothing of the pod's service-account token.
fn assert_not_the_token(password: &str, sa_token: &str) {
    assert_ne!(
        password, sa_token,
        "the plugin echoed the service-account token as the password (the kubelet refuses that)"
    );
    let signature = sa_token.rsplit('.').next().unwrap_or_default();
    assert!(
        signature.len() > 8 && !password.contains(signature),
        "the password embeds the service-account token"
    );
    assert_eq!(
        password.split('.').count(),
        3,
        "the password should be a regauth refresh token (a JWT)"
    );
}

/// Asserts that skopeo failed on access, with valid credentials.
fn assert_access_denied(out: &CmdOutput, what: &str) {
    assert!(!out.success(), "{what} must fail:\n{}", out.describe());
    assert!(
        out.stderr.contains(ACCESS_DENIED) && !out.stderr.contains(INVALID_CREDENTIALS),
        "{what}: the credential is valid, so the registry must refuse on access:\n{}",
        out.describe()
    );
}

/// `skopeo inspect` of `image` with `creds`, asserting success and `digest`.
fn inspect_ok(world: &World, image: &str, creds: &AuthConfig, digest: &str, what: &str) {
    let out = world
        .skopeo
        .inspect(image, Auth::Creds(&creds.username, &creds.password), &[]);
    out.assert_success(what);
    let info: Value = serde_json::from_str(&out.stdout).expect("skopeo inspect prints JSON");
    assert_eq!(info["Digest"], digest, "{what}: not the pushed manifest");
}

/// `skopeo copy` of `image` with `creds` into an OCI layout, asserting the
/// pulled manifest is `digest`.
fn copy_ok(world: &World, image: &str, creds: &AuthConfig, digest: &str, what: &str) {
    let dest = world.new_dir("oci-pulled");
    world
        .skopeo
        .pull(image, &dest, Auth::Creds(&creds.username, &creds.password))
        .assert_success(what);
    assert_eq!(
        layout_manifest_digest(&dest, "latest").as_deref(),
        Some(digest),
        "{what}: not the pushed manifest"
    );
}

/// Asserts `cacheDuration` lies within `[low, high]`.
fn assert_cache_duration(d: Duration, low: Duration, high: Duration, what: &str) {
    assert!(
        (low..=high).contains(&d),
        "{what}: cacheDuration {d:?} should be about half the credential's remaining life, within [{low:?}, {high:?}]"
    );
}

/// The audit lines of `server` with `outcome="exchanged"` whose `sub` names
/// the kubernetes principal `subject` (bare or `kubernetes:SUBJECT`),
/// waiting up to five seconds for at least one.
fn exchange_lines(server: &TokenServer, subject: &str) -> Vec<String> {
    let prefixed = format!("kubernetes:{subject}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = strip_ansi(&format!("{}\n{}", server.stdout(), server.stderr()));
        let lines: Vec<String> = log
            .lines()
            .filter(|l| {
                l.contains("regauth::audit")
                    && log_field(l, "outcome").as_deref() == Some("exchanged")
                    && log_field(l, "sub").is_some_and(|s| s == subject || s == prefixed)
            })
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CRI path: the node's credential from the plugin, taken from the
/// response exactly as the kubelet's keyring hands it over, pulls with ctr
/// (`--user`) and with skopeo (`--creds`), and reaches nothing else.
#[test]
fn cri_pulls_with_the_node_credential_in_ctr_and_skopeo() {
    let world = world_with_node(|s| s.policy(NODE_POLICY));
    let (_, digest) = world.push_as("alice", "apps/web");
    let (_, private_digest) = world.push_as("alice", "alice/private");
    let host = world.registry.host();
    let image = world.reference("apps/web");
    let private = world.reference("alice/private");

    let dir = world.new_dir("kubelet-plugin");
    let node = NodeIdentity::account(
        &dir.join("identity"),
        NODE_ACCOUNT,
        &world.password(NODE_ACCOUNT),
    );
    let plugin = plugin_in(&dir, &[Entry::new(&[&host], &world.server.url(), node)]);
    let mut kubelet = Kubelet::new(&plugin, &[&host]);

    let creds = kubelet.credentials(&image);
    assert_eq!(
        creds.len(),
        1,
        "the keyring holds exactly one credential for {image}"
    );
    let creds = creds[0].clone();
    assert_eq!(creds.username, DEFAULT_USERNAME);
    assert_ne!(creds.password, world.password(NODE_ACCOUNT));
    assert_subject(
        &granted(&world.server, &creds, &["repository:apps/web:pull"]),
        "account",
        NODE_ACCOUNT,
    );

    let containerd = Containerd::start(world.dir());
    containerd
        .pull(
            "k8s.io",
            &image,
            CtrAuth::User(&creds.username, &creds.password),
        )
        .assert_success("ctr images pull --user <plugin username>:<plugin password> apps/web");
    assert_eq!(
        containerd.image_digest("k8s.io", &image),
        Some(digest.clone()),
        "ctr lists the pushed manifest"
    );
    copy_ok(
        &world,
        &image,
        &creds,
        &digest,
        "skopeo copy --src-creds <plugin credential>",
    );
    inspect_ok(
        &world,
        &image,
        &creds,
        &digest,
        "skopeo inspect --creds <plugin credential>",
    );

    // The kubelet reuses the answer for the whole registry without running
    // the plugin again; the credential still reaches only what the node may.
    let reused = kubelet.credentials(&private);
    assert_eq!(
        kubelet.plugin_runs(),
        1,
        "cacheKeyType Registry: one run per registry"
    );
    assert_eq!(reused, std::slice::from_ref(&creds));
    let denied = containerd.pull(
        "k8s.io",
        &private,
        CtrAuth::User(&creds.username, &creds.password),
    );
    assert!(
        !denied.success() && denied.stderr.contains(CTR_INSUFFICIENT_SCOPE),
        "the node's valid credential must be refused on access to alice/private:\n{}",
        denied.describe()
    );
    assert_eq!(containerd.image_digest("k8s.io", &private), None);
    let out = world
        .skopeo
        .inspect(&private, Auth::Creds(&creds.username, &creds.password), &[]);
    assert_access_denied(
        &out,
        "skopeo inspect of alice/private with the node's credential",
    );

    // Controls: the registry needs a credential, and alice's image is intact.
    let anonymous = containerd.pull("anonymous", &image, CtrAuth::Anonymous);
    assert!(
        !anonymous.success(),
        "an anonymous ctr pull must fail:\n{}",
        anonymous.describe()
    );
    let alice = AuthConfig {
        username: "alice".into(),
        password: world.password("alice"),
    };
    inspect_ok(
        &world,
        &private,
        &alice,
        &private_digest,
        "skopeo inspect of alice/private as alice",
    );
}

/// How many pulls a busy node makes with one cached plugin credential in
/// [`cri_keeps_pulling_with_one_credential`]: more than a failed-login
/// backoff would let through from one address.
const NODE_PULLS: usize = 30;

/// A node pulls again and again with the one credential the kubelet caches.
/// containerd's resolver first tries `POST grant_type=password` with it and
/// only falls back to `GET` with Basic after the 401; that must not turn
/// into a lockout of the node's address.
#[test]
fn cri_keeps_pulling_with_one_credential() {
    let world = world_with_node(|s| s.policy(NODE_POLICY));
    let (_, digest) = world.push_as("alice", "apps/web");
    let host = world.registry.host();
    let image = world.reference("apps/web");
    let dir = world.new_dir("kubelet-plugin");
    let node = NodeIdentity::account(
        &dir.join("identity"),
        NODE_ACCOUNT,
        &world.password(NODE_ACCOUNT),
    );
    let plugin = plugin_in(&dir, &[Entry::new(&[&host], &world.server.url(), node)]);
    let mut kubelet = Kubelet::new(&plugin, &[&host]);
    let containerd = Containerd::start(world.dir());

    for n in 0..NODE_PULLS {
        let creds = kubelet.credentials(&image);
        assert_eq!(creds.len(), 1);
        let namespace = format!("pull-{n}");
        let out = containerd.pull(
            &namespace,
            &image,
            CtrAuth::User(&creds[0].username, &creds[0].password),
        );
        assert!(
            out.success(),
            "ctr pull {} of {NODE_PULLS} with the kubelet's cached credential failed:\n{}\n{}",
            n + 1,
            out.describe(),
            world.server.logs()
        );
        assert_eq!(
            containerd.image_digest(&namespace, &image),
            Some(digest.clone())
        );
    }
    assert_eq!(kubelet.plugin_runs(), 1, "the kubelet cached the answer");
}

/// The node identity of a real node: its kubelet client certificate over
/// mutual TLS. The plugin's credential names the node and pulls through the
/// registry's HTTPS realm in ctr and skopeo.
#[test]
fn node_certificate_credential_pulls_through_an_https_realm() {
    let pki = TestPki::new();
    let world = World::builder()
        .server(|b| b.policy(NODE_CERT_POLICY).tls(pki.server_tls(true)))
        .start();
    let (_, digest) = world.push_as("alice", "shared/base");
    world.push_as("alice", "alice/private");
    let host = world.registry.host();
    let image = world.reference("shared/base");

    let dir = world.new_dir("kubelet-plugin");
    let (cert, key) = pki.node.write(&dir.join("identity"), "node");
    let entry = Entry::new(
        &[&host],
        &world.server.url(),
        NodeIdentity::ClientCertificate { cert, key },
    )
    .ca_file(&world.server.server_ca_path());
    let plugin = plugin_in(&dir, &[entry]);

    let response = plugin.answer(&Request::new(&image), "plugin with the node certificate");
    assert_eq!(response.auth_keys(), [host.as_str()]);
    let creds = response.credential().clone();
    let claims = granted(
        &world.server,
        &creds,
        &[
            "repository:shared/base:pull,push",
            "repository:alice/private:pull",
        ],
    );
    assert!(
        claims.sub.ends_with(NODE_NAME) && claims.sub.contains("node"),
        "the credential should name node {NODE_NAME}, not {:?}",
        claims.sub
    );
    assert_eq!(claims.actions_on("repository", "shared/base"), ["pull"]);
    assert!(claims.actions_on("repository", "alice/private").is_empty());

    // ctr 1.6 does not verify TLS for a loopback registry's realm.
    let containerd = Containerd::start(world.dir());
    containerd
        .pull(
            "k8s.io",
            &image,
            CtrAuth::User(&creds.username, &creds.password),
        )
        .assert_success("ctr images pull --user <node credential> shared/base (HTTPS realm)");
    assert_eq!(
        containerd.image_digest("k8s.io", &image),
        Some(digest.clone())
    );
    inspect_ok(
        &world,
        &image,
        &creds,
        &digest,
        "skopeo inspect --creds <node credential>",
    );
    let out = world.skopeo.inspect(
        &world.reference("alice/private"),
        Auth::Creds(&creds.username, &creds.password),
        &[],
    );
    assert_access_denied(
        &out,
        "skopeo inspect of alice/private with the node credential",
    );
}

/// With a `serviceAccountToken` the pod, not the node, is the identity:
/// team-a's pod pushes and pulls `team-a/app`; a pod of namespace `other`
/// gets a credential the registry refuses there, although the node itself
/// could pull it. The password is never the pod's token, and its
/// `cacheDuration` follows the credential's own life.
#[test]
fn service_account_token_makes_the_pod_the_identity() {
    let issuer = OidcIssuer::start();
    let issuers = issuers_yaml(&[IssuerConfig::kubernetes("cluster-a", &issuer.url())
        .audiences(&[SERVICE])
        .credential_ttl("10m")]);
    let world = world_with_node(|s| s.policy(POD_POLICY).extra_config(&issuers));
    let host = world.registry.host();
    let image = world.reference("team-a/app");
    let dir = world.new_dir("kubelet-plugin");
    let node = NodeIdentity::account(
        &dir.join("identity"),
        NODE_ACCOUNT,
        &world.password(NODE_ACCOUNT),
    );
    let plugin = plugin_in(&dir, &[Entry::new(&[&host], &world.server.url(), node)]);

    // A pod of team-a, its token minted for the audience the kubelet's
    // tokenAttributes name (the registry service).
    let team_a = ServiceAccount::new("team-a", "builder");
    let token_a = issuer.service_account_token(&team_a, SERVICE);
    let response = plugin.answer(&Request::new(&image).token(&token_a), "team-a pod");
    assert_eq!(response.auth_keys(), [host.as_str()]);
    assert_cache_duration(
        response.cache_duration(),
        Duration::from_secs(270),
        Duration::from_secs(300),
        "team-a pod (credential_ttl 10m)",
    );
    let pod_a = response.credential().clone();
    assert_not_the_token(&pod_a.password, &token_a);
    let claims = granted(&world.server, &pod_a, &["repository:team-a/app:pull,push"]);
    assert_subject(&claims, "kubernetes", &team_a.subject());
    assert_eq!(
        claims.actions_on("repository", "team-a/app"),
        ["pull", "push"]
    );
    let (_, pushed) = world.try_push("team-a/app", Auth::Creds(&pod_a.username, &pod_a.password));
    pushed
        .output
        .assert_success("skopeo push of team-a/app with team-a's pod credential");
    let digest = pushed.digest.expect("skopeo wrote --digestfile");
    copy_ok(
        &world,
        &image,
        &pod_a,
        &digest,
        "skopeo copy of team-a/app by team-a's pod",
    );

    // A pod of namespace other: a credential, but no access to team-a/app.
    let other = ServiceAccount::new("other", "builder");
    let token_o = issuer.service_account_token(&other, SERVICE);
    let response = plugin.answer(
        &Request::new(&image).token(&token_o),
        "pod of namespace other",
    );
    let pod_o = response.credential().clone();
    assert_not_the_token(&pod_o.password, &token_o);
    assert_ne!(
        pod_o.password, pod_a.password,
        "each pod identity gets its own credential"
    );
    let claims = granted(&world.server, &pod_o, &["repository:team-a/app:pull"]);
    assert_subject(&claims, "kubernetes", &other.subject());
    assert!(claims.actions_on("repository", "team-a/app").is_empty());
    let out = world
        .skopeo
        .inspect(&image, Auth::Creds(&pod_o.username, &pod_o.password), &[]);
    assert_access_denied(
        &out,
        "skopeo inspect of team-a/app by namespace other's pod",
    );
    let out = world.skopeo.pull(
        &image,
        &world.new_dir("oci-pulled"),
        Auth::Creds(&pod_o.username, &pod_o.password),
    );
    assert_access_denied(&out, "skopeo copy of team-a/app by namespace other's pod");

    // Without a token the node's own identity answers, and the node may
    // pull team-a/app: the refusal above was the pod's identity at work.
    let response = plugin.answer(&Request::new(&image), "no pod token (node identity)");
    let node_creds = response.credential().clone();
    assert_cache_duration(
        response.cache_duration(),
        Duration::from_secs(29 * 60),
        Duration::from_secs(30 * 60),
        "node account (refresh_token_ttl 1h)",
    );
    assert_subject(
        &granted(&world.server, &node_creds, &["repository:team-a/app:pull"]),
        "account",
        NODE_ACCOUNT,
    );
    inspect_ok(
        &world,
        &image,
        &node_creds,
        &digest,
        "skopeo inspect of team-a/app by the node",
    );
}

/// Only the annotation keys an entry lists in `forward_annotations` reach
/// the token server, which records them in its exchange audit line. A pod
/// token does not need the node identity (here unreadable); tokens the
/// server or the plugin cannot use are refused with a reason.
#[test]
fn pod_requests_forward_only_allowed_annotations() {
    let issuer = OidcIssuer::start();
    let issuers =
        issuers_yaml(&[IssuerConfig::kubernetes("cluster-a", &issuer.url()).audiences(&[SERVICE])]);
    let bench = Bench::start(|b| b.policy(POD_POLICY).extra_config(&issuers));
    let host = ABSENT_REGISTRY;
    let image = format!("{host}/team-a/app:1.0");
    let missing = bench.dir.path().join("no-such-node.password");
    let node = NodeIdentity::Account {
        username: NODE_ACCOUNT.into(),
        password_file: missing.clone(),
    };
    let entry =
        Entry::new(&[host], &bench.server.url(), node).forward_annotations(&["regauth.io/purpose"]);
    let plugin = bench.plugin("plugin", &[entry]);

    let purpose = format!("build-{}", random_hex(6));
    let owner = format!("owner-{}", random_hex(6));
    let team_a = ServiceAccount::new("team-a", "builder");
    let token = issuer.service_account_token(&team_a, SERVICE);
    let request = Request::new(&image)
        .token(&token)
        .annotation("regauth.io/purpose", &purpose)
        .annotation("regauth.io/owner", &owner);
    let response = plugin.answer(&request, "team-a pod with annotations");
    assert_not_the_token(&response.credential().password, &token);

    let lines = exchange_lines(&bench.server, &team_a.subject());
    assert_eq!(
        lines.len(),
        1,
        "one exchange audit line for {}:\n{}",
        team_a.subject(),
        bench.server.logs()
    );
    assert_eq!(
        log_field(&lines[0], "annotations").as_deref(),
        Some(format!("regauth.io/purpose={purpose}").as_str()),
        "the allowed annotation, and only it, is recorded: {}",
        lines[0]
    );
    let log = bench.server.logs();
    assert!(
        !log.contains("regauth.io/owner") && !log.contains(&owner),
        "an annotation key the entry does not forward reached the token server:\n{log}"
    );
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(
        !log.contains(signature),
        "the pod's token is in the server log"
    );

    // A token for another audience: the server refuses, the plugin says so.
    let stranger =
        issuer.service_account_token(&ServiceAccount::new("team-a", "x"), "not-the-registry");
    plugin
        .run(&Request::new(&image).token(&stranger))
        .assert_refused("token for another audience", &["refused", "audience"]);
    // Not a JWT at all: refused before any exchange.
    plugin
        .run(&Request::new(&image).token("not-a-jwt"))
        .assert_refused(
            "serviceAccountToken that is no JWT",
            &["serviceAccountToken"],
        );
    // Without a token the node identity is needed, and it is unreadable here.
    let stderr = plugin
        .run(&Request::new(&image))
        .assert_refused("no pod token, unreadable node identity", &["identity"])
        .to_owned();
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

/// Every apiVersion is answered in kind, with exactly the API's fields,
/// a Registry cache key and about half the credential's life as
/// `cacheDuration`, nothing on stderr; unknown request fields are tolerated.
#[test]
fn each_api_version_gets_exactly_the_api_fields_back() {
    let bench = Bench::start(|b| b);
    let host = ABSENT_REGISTRY;
    let image = format!("{host}/{NODE_ACCOUNT}/app:1.0");
    let entry = Entry::new(
        &[host],
        &bench.server.url(),
        bench.node_identity("identity"),
    );
    let plugin = bench.plugin("plugin", &[entry]);

    let top: BTreeSet<&str> = [
        "apiVersion",
        "kind",
        "cacheKeyType",
        "cacheDuration",
        "auth",
    ]
    .into();
    let creds: BTreeSet<&str> = ["username", "password"].into();
    let mut passwords = BTreeSet::new();
    for version in API_VERSIONS {
        let what = format!("{version} request");
        let run = plugin.run(&Request::new(&image).version(version));
        let body = run.json(&what);
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let want = |s: &BTreeSet<&str>| s.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(
            keys(&body),
            want(&top),
            "{what}: top-level fields of {body}"
        );
        assert_eq!(body["apiVersion"], api_version(version), "{what}");
        assert_eq!(body["kind"], RESPONSE_KIND, "{what}");
        assert_eq!(body["cacheKeyType"], "Registry", "{what}");
        assert_eq!(
            keys(&body["auth"]),
            [host.to_owned()].into(),
            "{what}: auth keys"
        );
        assert_eq!(
            keys(&body["auth"][host]),
            want(&creds),
            "{what}: auth entry fields"
        );
        assert!(
            run.output.stderr.is_empty(),
            "{what}: stderr:\n{}",
            run.output.stderr
        );

        let response = run.response(&what);
        assert_cache_duration(
            response.cache_duration(),
            Duration::from_secs(29 * 60),
            Duration::from_secs(30 * 60),
            &what,
        );
        let credential = response.credential();
        assert_eq!(credential.username, DEFAULT_USERNAME, "{what}");
        let claims = granted(
            &bench.server,
            credential,
            &[&format!("repository:{NODE_ACCOUNT}/app:pull")],
        );
        assert_subject(&claims, "account", NODE_ACCOUNT);
        assert_eq!(
            claims.actions_on("repository", &format!("{NODE_ACCOUNT}/app")),
            ["pull"]
        );
        passwords.insert(credential.password.clone());
    }
    assert_eq!(
        passwords.len(),
        1,
        "within half its life the cached credential is served to every version"
    );

    // A field a newer kubelet may send is ignored, not fatal.
    let mut future = Request::new(&image).to_json();
    future["futureField"] = json!({"x": 1});
    let run = plugin.run_raw(future.to_string().as_bytes());
    assert_eq!(
        run.response("request with an unknown field").auth_keys(),
        [host]
    );
}

/// `auth` holds exactly the entry's patterns that match the image under the
/// kubelet's rules (host parts globbed one by one, equal ports, path
/// prefixes), all with the same credential; an image nothing matches gets
/// an empty `auth` that the kubelet must not cache.
#[test]
fn auth_keys_are_the_patterns_that_match_the_image() {
    let bench = Bench::start(|b| b);
    let patterns = [
        "127.0.0.1:5000",
        "127.0.0.1:5000/team-a",
        "127.0.0.1:5000/team-b",
        "*.0.0.1:5000",
        "127.0.0.*:5000",
        "*.127.0.0.1:5000",
        "127.0.0.1",
        "127.0.0.1:6000",
    ];
    let entry = Entry::new(
        &patterns,
        &bench.server.url(),
        bench.node_identity("identity"),
    )
    .username("node-puller");
    let plugin = bench.plugin("plugin", &[entry]);

    let digest = format!("sha256:{}", random_hex(32));
    let host_wide = ["*.0.0.1:5000", "127.0.0.*:5000", "127.0.0.1:5000"];
    let team_a = [
        "*.0.0.1:5000",
        "127.0.0.*:5000",
        "127.0.0.1:5000",
        "127.0.0.1:5000/team-a",
    ];
    let team_b = [
        "*.0.0.1:5000",
        "127.0.0.*:5000",
        "127.0.0.1:5000",
        "127.0.0.1:5000/team-b",
    ];
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("127.0.0.1:5000/team-a/app:latest".into(), team_a.into()),
        ("127.0.0.1:5000/team-a/app".into(), team_a.into()),
        (format!("127.0.0.1:5000/team-a/app@{digest}"), team_a.into()),
        ("127.0.0.1:5000/team-b/app:1.0".into(), team_b.into()),
        ("127.0.0.1:5000/c/d/e:1".into(), host_wide.into()),
        ("127.0.0.1/team-a/app:latest".into(), vec!["127.0.0.1"]),
        ("127.0.0.1:6000/x:1".into(), vec!["127.0.0.1:6000"]),
    ];
    let mut password = None;
    for (image, want) in &cases {
        let response = plugin.answer(&Request::new(image), image);
        assert_eq!(response.auth_keys(), *want, "auth keys for {image}");
        let by_kubelet: Vec<&str> = patterns
            .iter()
            .copied()
            .filter(|p| urls_match(p, image))
            .collect();
        let mut by_kubelet_sorted = by_kubelet.clone();
        by_kubelet_sorted.sort_unstable();
        assert_eq!(
            response.auth_keys(),
            by_kubelet_sorted,
            "for {image} the kubelet's keyring would match {by_kubelet:?}"
        );
        let credential = response.credential();
        assert_eq!(credential.username, "node-puller", "{image}");
        assert_eq!(
            password.get_or_insert_with(|| credential.password.clone()),
            &credential.password,
            "one entry, one (cached) credential"
        );
    }

    for image in [
        "127.0.0.1:5001/team-a/app:latest",
        "localhost:5000/team-a/app:latest",
        "10.0.0.2:5000/team-a/app:latest",
        "registry.regauth.test/app:1",
    ] {
        assert!(
            !patterns.iter().any(|p| urls_match(p, image)),
            "the kubelet would match {image}; fix the test"
        );
        let run = plugin.run(&Request::new(image));
        assert_eq!(
            run.json(image),
            json!({"apiVersion": api_version("v1"), "kind": RESPONSE_KIND,
                "cacheKeyType": "Registry", "cacheDuration": "0s", "auth": {}}),
            "{image}: no entry matches"
        );
    }
}

/// The kubelet caches a `cacheKeyType: Registry` answer under the registry
/// host and serves it to every later image of that host. When two entries
/// split one registry by path (each with its own identity), the second
/// image must still end up with its own entry's credential.
#[test]
fn kubelet_cache_keeps_path_scoped_entries_apart() {
    let bench = Bench::start(|b| {
        b.account("alice", &random_password(), &[])
            .account("bob", &random_password(), &[])
    });
    let host = ABSENT_REGISTRY;
    let identity = |name: &str| {
        NodeIdentity::account(
            &bench.dir.path().join("identity"),
            name,
            bench.server.password(name),
        )
    };
    let url = bench.server.url();
    let alice_area = format!("{host}/alice");
    let bob_area = format!("{host}/bob");
    let plugin = bench.plugin(
        "plugin",
        &[
            Entry::new(&[&alice_area], &url, identity("alice")),
            Entry::new(&[&bob_area], &url, identity("bob")),
        ],
    );
    // The plugin itself answers each image with its own entry.
    for (name, area) in [("alice", &alice_area), ("bob", &bob_area)] {
        let image = format!("{host}/{name}/app:1");
        let response = plugin.answer(&Request::new(&image), &image);
        assert_eq!(response.auth_keys(), [area.as_str()], "{image}");
        assert_subject(
            &granted(&bench.server, response.credential(), &[]),
            "account",
            name,
        );
    }

    // Through the kubelet: alice's image first, then bob's.
    let mut kubelet = Kubelet::new(&plugin, &[host]);
    let first = kubelet.credentials(&format!("{host}/alice/app:1"));
    assert_eq!(first.len(), 1);
    let bob_image = format!("{host}/bob/app:1");
    let second = kubelet.credentials(&bob_image);
    assert!(
        !second.is_empty(),
        "the kubelet has no credential for {bob_image} (plugin runs: {}): the answer for \
         alice's image was cached under the registry {host} (cacheKeyType Registry) although \
         its auth only covers {alice_area}, so bob's entry is never asked until it expires; \
         path-scoped answers need cacheKeyType Image",
        kubelet.plugin_runs()
    );
    assert_subject(&granted(&bench.server, &second[0], &[]), "account", "bob");
}

/// How long refusing bad input may take (a debug binary on a busy machine).
const QUICK: Duration = Duration::from_secs(5);

/// Requests the plugin cannot answer fail fast: exit 1, nothing on stdout,
/// a reason on stderr, and no exchange attempted.
#[test]
fn bad_requests_fail_fast_with_a_reason_and_nothing_on_stdout() {
    // Nothing listens there: an exchange attempt would fail differently.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (_dir, plugin) = offline_plugin(&closed, None);
    let v1 = api_version("v1");
    let image = format!("{ABSENT_REGISTRY}/app:1");
    let body = |value: Value| value.to_string().into_bytes();
    let request = |api: &str, kind: &str, image: Value| {
        body(json!({"apiVersion": api, "kind": kind, "image": image}))
    };
    let long_image = format!("{ABSENT_REGISTRY}/{}:1", "a".repeat(4 << 20));
    let mut garbage = random_bytes(1 << 20);
    garbage[0] = 0xff;

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty stdin", Vec::new(), &[REQUEST_KIND]),
        (
            "truncated JSON",
            br#"{"apiVersion": "#.to_vec(),
            &[REQUEST_KIND],
        ),
        ("a JSON array", b"[]".to_vec(), &[REQUEST_KIND]),
        ("NUL bytes", b"\0\0\0\0".to_vec(), &[REQUEST_KIND]),
        ("binary garbage", garbage, &[]),
        (
            "a request of several MB",
            request(&v1, REQUEST_KIND, json!(long_image)),
            &[],
        ),
        (
            "the kind of a response",
            request(&v1, RESPONSE_KIND, json!(image)),
            &["kind", RESPONSE_KIND],
        ),
        (
            "no kind",
            body(json!({"apiVersion": v1, "image": image})),
            &["kind"],
        ),
        (
            "apiVersion v2",
            request(&api_version("v2"), REQUEST_KIND, json!(image)),
            &["apiVersion", "v2"],
        ),
        (
            "apiVersion of another group",
            request("other/v1", REQUEST_KIND, json!(image)),
            &["apiVersion", "other/v1"],
        ),
        (
            "apiVersion without a version",
            request(API_GROUP, REQUEST_KIND, json!(image)),
            &["apiVersion"],
        ),
        (
            "no apiVersion",
            body(json!({"kind": REQUEST_KIND, "image": image})),
            &["apiVersion"],
        ),
        (
            "no image",
            body(json!({"apiVersion": v1, "kind": REQUEST_KIND})),
            &["image"],
        ),
        (
            "image not a string",
            request(&v1, REQUEST_KIND, json!(42)),
            &[REQUEST_KIND],
        ),
        (
            "empty image",
            request(&v1, REQUEST_KIND, json!("")),
            &["image", "host"],
        ),
        (
            "image without host",
            request(&v1, REQUEST_KIND, json!("/team-a/app:1")),
            &["image", "host"],
        ),
        (
            "serviceAccountToken that is no JWT",
            body(Request::new(&image).token("x.y").to_json()),
            &["serviceAccountToken"],
        ),
    ];
    for (what, stdin, keywords) in cases {
        let run = plugin.run_raw(&stdin);
        let stderr = run.assert_refused(what, keywords);
        assert!(
            stderr.trim().len() > STDERR_PREFIX.len() + 10,
            "{what}: stderr should say why:\n{}",
            run.output.describe()
        );
        assert!(
            !stderr.contains("token server"),
            "{what}: refused input must not reach the token server:\n{}",
            run.output.describe()
        );
        assert!(
            run.elapsed < QUICK,
            "{what}: took {:?}, bad input should fail within {QUICK:?}",
            run.elapsed
        );
    }
}

/// A token server that accepts and never answers: with `timeout: 2s` the
/// plugin gives up after about two seconds and says the server is unreachable.
#[test]
fn hung_token_server_fails_within_the_entry_timeout() {
    let silent = SilentServer::start();
    let (_dir, plugin) = offline_plugin(&silent.url(), Some("2s"));
    let host = ABSENT_REGISTRY;
    let run = plugin.run(&Request::new(&format!("{host}/app:1")));
    run.assert_refused(
        "hung token server, timeout 2s",
        &["token server", &silent.url()],
    );
    assert!(silent.connections() >= 1, "the plugin never connected");
    assert!(
        run.elapsed >= Duration::from_millis(1500) && run.elapsed < Duration::from_secs(15),
        "with timeout 2s the plugin should give up after about 2 s, took {:?}",
        run.elapsed
    );
}

/// The same hung server with the default timeout: the plugin still ends
/// long before the kubelet's one-minute kill.
#[test]
fn hung_token_server_with_the_default_timeout_ends_well_before_the_kubelet_kill() {
    let silent = SilentServer::start();
    let (_dir, plugin) = offline_plugin(&silent.url(), None);
    let host = ABSENT_REGISTRY;
    let run = plugin.run(&Request::new(&format!("{host}/app:1")));
    run.assert_refused("hung token server, default timeout", &["token server"]);
    assert!(silent.connections() >= 1, "the plugin never connected");
    assert!(
        run.elapsed >= Duration::from_secs(2) && run.elapsed < Duration::from_secs(30),
        "with the default timeout the plugin should wait, then end well under 60 s; took {:?}",
        run.elapsed
    );
}

/// The token server's audit lines with `outcome` (`exchanged`, `rejected`…).
fn audit_outcomes(server: &TokenServer, outcome: &str) -> usize {
    strip_ansi(&format!("{}\n{}", server.stdout(), server.stderr()))
        .lines()
        .filter(|l| {
            l.contains("regauth::audit") && log_field(l, "outcome").as_deref() == Some(outcome)
        })
        .count()
}

/// Polls until the server has logged `want` audit lines with `outcome`
/// (a line is written just before the reply); returns the last count.
fn wait_for_outcomes(server: &TokenServer, outcome: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = audit_outcomes(server, outcome);
        if n >= want || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `token` with one character in the middle of its signature changed.
fn flip_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("a JWS");
    let mut chars: Vec<char> = signature.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", chars.into_iter().collect::<String>())
}

/// A team-a pod's token, minted for the registry audience with `lifetime`,
/// and the token server and plugin that serve its registry.
struct PodTokenBench {
    issuer: OidcIssuer,
    bench: Bench,
    plugin: Plugin,
    image: String,
    pod: ServiceAccount,
}

impl PodTokenBench {
    fn start() -> Self {
        let issuer = OidcIssuer::start();
        let issuers = issuers_yaml(&[
            IssuerConfig::kubernetes("cluster-a", &issuer.url()).audiences(&[SERVICE])
        ]);
        let bench = Bench::start(|b| b.policy(POD_POLICY).extra_config(&issuers));
        let entry = Entry::new(
            &[ABSENT_REGISTRY],
            &bench.server.url(),
            bench.node_identity("identity"),
        );
        let plugin = bench.plugin("plugin", &[entry]);
        Self {
            issuer,
            bench,
            plugin,
            image: format!("{ABSENT_REGISTRY}/team-a/app:1.0"),
            pod: ServiceAccount::new("team-a", "builder"),
        }
    }

    fn claims(&self, lifetime: Duration) -> Value {
        self.pod.claims(&self.issuer.url(), SERVICE, lifetime)
    }
}

/// The plugin once served the credential of one good exchange to any token
/// naming the same service account: an expired one, one with a flipped
/// signature, an unsigned one. A credential now goes only to the exact
/// token the token server accepted; the others fail, the forged ones after
/// the server refused them (its audit shows them presented), the expired
/// one at once. The kubelet may cache the answer no longer than the token
/// lives, and a rotated token is exchanged anew.
#[test]
fn only_the_pod_token_the_server_accepted_gets_its_cached_credential() {
    let pt = PodTokenBench::start();
    let server = &pt.bench.server;
    let lifetime = Duration::from_secs(600);
    let claims = pt.claims(lifetime);
    let token = pt.issuer.mint(&claims);
    let response = pt
        .plugin
        .answer(&Request::new(&pt.image).token(&token), "the pod's token");
    let credential = response.credential().clone();
    assert_not_the_token(&credential.password, &token);
    assert_cache_duration(
        response.cache_duration(),
        lifetime - Duration::from_secs(60),
        lifetime,
        "a 10-minute pod token with a 1-hour credential: the kubelet caches the answer no longer \
         than the token lives",
    );
    assert_eq!(wait_for_outcomes(server, "exchanged", 1), 1);

    let mut expired = claims.clone();
    let t = now();
    expired["iat"] = json!(t - 660);
    expired["nbf"] = json!(t - 660);
    expired["exp"] = json!(t - 60);
    let kid = pt.issuer.current_key().kid().to_owned();
    let (_, unsigned) = forge::alg_none(&kid, &claims).remove(0);
    let attacks = [
        (
            "an expired token of the same service account",
            pt.issuer.mint(&expired),
            "expired",
            false,
        ),
        (
            "the accepted token with a flipped signature",
            flip_signature(&token),
            "refused",
            true,
        ),
        (
            "an unsigned (alg none) token with the accepted token's claims",
            unsigned,
            "refused",
            true,
        ),
    ];
    for (what, attack, keyword, reaches_server) in attacks {
        let rejected = audit_outcomes(server, "rejected");
        let run = pt.plugin.run(&Request::new(&pt.image).token(&attack));
        run.assert_refused(what, &[keyword]);
        assert!(
            !run.output.stderr.contains(&credential.password),
            "{what}: the cached credential leaked on stderr"
        );
        if reaches_server {
            assert_eq!(
                wait_for_outcomes(server, "rejected", rejected + 1),
                rejected + 1,
                "{what}: the token server must have seen (and refused) the new token:\n{}",
                server.logs()
            );
        } else {
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(
                audit_outcomes(server, "rejected"),
                rejected,
                "{what}: refused before any request"
            );
        }
        assert_eq!(
            audit_outcomes(server, "exchanged"),
            1,
            "{what}: nothing was exchanged"
        );
    }

    // The accepted token still gets its credential, from the cache.
    let again = pt.plugin.answer(
        &Request::new(&pt.image).token(&token),
        "the accepted token again",
    );
    assert_eq!(again.credential(), &credential);
    assert_eq!(
        audit_outcomes(server, "exchanged"),
        1,
        "served from the cache"
    );

    // The kubelet rotates the token: the new one is exchanged, not matched.
    let rotated = pt.issuer.mint(&pt.claims(lifetime));
    let fresh = pt
        .plugin
        .answer(&Request::new(&pt.image).token(&rotated), "a rotated token");
    assert_ne!(fresh.credential(), &credential, "a new exchange");
    assert_eq!(wait_for_outcomes(server, "exchanged", 2), 2);
}

/// Concurrent plugin runs for one pod token make one exchange: the cache
/// binding to the token keeps the per-key lock.
#[test]
fn fifty_parallel_runs_with_one_pod_token_make_one_exchange() {
    let pt = PodTokenBench::start();
    let token = pt.issuer.mint(&pt.claims(Duration::from_secs(3600)));
    let request = Request::new(&pt.image).token(&token);
    let passwords: BTreeSet<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (plugin, request) = (&pt.plugin, &request);
                scope.spawn(move || {
                    plugin
                        .answer(request, &format!("parallel run #{i}"))
                        .credential()
                        .password
                        .clone()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a plugin thread panicked"))
            .collect()
    });
    assert_eq!(passwords.len(), 1, "every run answers the one credential");
    assert_eq!(
        wait_for_outcomes(&pt.bench.server, "exchanged", 1),
        1,
        "50 concurrent runs with one token must make exactly one exchange:\n{}",
        pt.bench.server.logs()
    );
}
