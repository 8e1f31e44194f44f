//! Node identity over mTLS: a kubelet-style client certificate
//! (`CN=system:node:worker-1`, `O=system:nodes`) from the configured client
//! CA makes the caller a `node` principal; the refresh token it gets works
//! later without the certificate, in ctr and skopeo. Certificates from an
//! unknown CA, or expired ones, fail the TLS handshake (Go clients such as
//! ctr do not even offer a certificate from a CA the server did not name).

use regauth_e2e::World;
use regauth_e2e::containerd::{Containerd, CtrAuth, CtrTls, write_hosts_toml};
use regauth_e2e::jwt::{unverified_claims, unverified_header};
use regauth_e2e::pki::{NODE_DNS_SAN, NODE_IP_SAN, NODE_NAME, TestPki};
use regauth_e2e::skopeo::Auth;
use regauth_e2e::token_client::{HttpReply, TokenClient, error_chain, try_send};
use regauth_e2e::token_server::{SERVICE, TokenServer};

use crate::support::{StandaloneServer, standalone_server, verify, write_identity_token_authfile};

/// Policy for these tests. Each node attribute gets a rule of its own under
/// `attrs/`, so a missing attribute shows up as one missing grant.
const NODE_POLICY: &str = r#"policy:
  - comment: alice publishes the shared images
    kind: account
    name: alice
    type: repository
    resource: "shared/**"
    actions: ["*"]
  - comment: kubelet-style node certificates pull everything under shared/
    kind: node
    attributes: {organization: "system:nodes"}
    type: repository
    resource: "shared/**"
    actions: [pull]
  - comment: a node may push its own area
    kind: node
    type: repository
    resource: "nodes/${node}/**"
    actions: [pull, push]
  - comment: the cn attribute of the node certificate
    kind: node
    attributes: {cn: "system:node:worker-1"}
    resource: "attrs/cn/**"
    actions: [pull]
  - comment: the dns_sans attribute of the node certificate
    kind: node
    attributes: {dns_sans: "worker-1.nodes.regauth.test"}
    resource: "attrs/dns/**"
    actions: [pull]
  - comment: the ip_sans attribute of the node certificate
    kind: node
    attributes: {ip_sans: "10.20.30.41"}
    resource: "attrs/ip/**"
    actions: [pull]
  - comment: each account owns its namespace
    kind: account
    type: repository
    resource: "${name}/**"
    actions: ["*"]
"#;

/// What the node asks for: it may get pull on shared/, everything in its own
/// area, nothing in another node's area.
const NODE_SCOPE: &str = "repository:shared/base:pull,push \
     repository:nodes/worker-1/x:pull,push \
     repository:nodes/worker-2/x:pull,push";

/// A token server (no registry) serving HTTPS with `tls.client_ca` set.
fn tls_server(pki: &TestPki) -> StandaloneServer {
    standalone_server(|b| b.policy(NODE_POLICY).tls(pki.server_tls(true)))
}

/// A world whose token server serves HTTPS with `tls.client_ca` set; the
/// registry stays plain HTTP and advertises the `https://` realm.
fn tls_world(pki: &TestPki) -> World {
    World::builder()
        .server(|b| b.policy(NODE_POLICY).tls(pki.server_tls(true)))
        .start()
}

/// Asserts the access token in `reply` carries exactly the node's grants for [`NODE_SCOPE`].
fn assert_node_grants(server: &TokenServer, reply: &HttpReply, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    let claims = verify(server, &reply.json_str("token"));
    assert!(
        claims.sub != NODE_NAME && claims.sub.ends_with(NODE_NAME) && claims.sub.contains("node"),
        "{what}: `sub` must name node {NODE_NAME} as a node (e.g. node:{NODE_NAME}), not {:?}",
        claims.sub
    );
    assert_eq!(
        claims.actions_on("repository", "shared/base"),
        ["pull"],
        "{what}: nodes with O=system:nodes pull shared/ and push nothing there: {:?}",
        claims.access
    );
    assert_eq!(
        claims.actions_on("repository", "nodes/worker-1/x"),
        ["pull", "push"],
        "{what}: ${{node}} is {NODE_NAME}, so its own area is granted: {:?}",
        claims.access
    );
    assert!(
        claims
            .actions_on("repository", "nodes/worker-2/x")
            .is_empty(),
        "{what}: another node's area must not be granted: {:?}",
        claims.access
    );
}

#[test]
fn client_credentials_with_a_node_certificate_grants_the_node_policy() {
    let pki = TestPki::new();
    let standalone = tls_server(&pki);
    let server = &standalone.server;
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let node = server.client_with_cert(Some(&pki.node));

    let reply = node.client_credentials_grant(SERVICE, NODE_SCOPE);
    assert_node_grants(
        server,
        &reply,
        "client_credentials with worker-1's certificate",
    );
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["token"], body["access_token"], "{body}");
    let expires_in = body["expires_in"]
        .as_i64()
        .expect("expires_in is an integer");
    assert!(
        expires_in > 0 && expires_in <= 300,
        "expires_in {expires_in}"
    );
    assert!(body["issued_at"].is_string(), "issued_at: {body}");
    assert!(body["scope"].is_string(), "scope: {body}");

    // The certificate's attributes reach the policy.
    let reply = node.client_credentials_grant(
        SERVICE,
        "repository:attrs/cn/x:pull repository:attrs/dns/x:pull repository:attrs/ip/x:pull",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let claims = verify(server, &reply.json_str("token"));
    for (attribute, repo, value) in [
        ("cn", "attrs/cn/x", "system:node:worker-1"),
        ("dns_sans", "attrs/dns/x", NODE_DNS_SAN),
        ("ip_sans", "attrs/ip/x", NODE_IP_SAN),
    ] {
        assert_eq!(
            claims.actions_on("repository", repo),
            ["pull"],
            "attribute {attribute} should be {value:?} for the node certificate: {:?}",
            claims.access
        );
    }

    // The refresh token is the server's own (HS256, not for the registry) ...
    let refresh = reply.json_str("refresh_token");
    assert_eq!(unverified_header(&refresh)["alg"], "HS256");
    let refresh_claims = unverified_claims(&refresh);
    assert_ne!(
        refresh_claims["aud"], SERVICE,
        "a refresh token must never be addressed to the registry: {refresh_claims}"
    );

    // ... and stands for the node later, over a connection without a certificate.
    let plain = server.client_with_cert(None);
    let refreshed = plain.refresh_grant(&refresh, SERVICE, NODE_SCOPE);
    assert_node_grants(
        server,
        &refreshed,
        "refresh grant with the node's refresh token, no certificate",
    );
    assert_eq!(
        refreshed.json_str("refresh_token"),
        refresh,
        "the refresh grant returns the same refresh token"
    );
    let basic = plain.get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:shared/base:pull,push"),
            ("scope", "repository:nodes/worker-1/x:pull,push"),
            ("scope", "repository:nodes/worker-2/x:pull,push"),
        ],
        Some(("<token>", &refresh)),
    );
    assert_node_grants(
        server,
        &basic,
        "GET /token with the node's refresh token as Basic password",
    );
}

#[test]
fn certificate_authenticated_get_token_without_basic_is_the_node() {
    let pki = TestPki::new();
    let standalone = tls_server(&pki);
    let server = &standalone.server;
    let query = [
        ("service", SERVICE),
        ("scope", "repository:shared/base:pull,push"),
        ("scope", "repository:nodes/worker-1/x:pull,push"),
        ("scope", "repository:nodes/worker-2/x:pull,push"),
        ("offline_token", "true"),
    ];

    let reply = server
        .client_with_cert(Some(&pki.node))
        .get_token(&query, None);
    assert_node_grants(
        server,
        &reply,
        "GET /token over a node-certificate connection, no Authorization",
    );
    let refresh = reply.json_str("refresh_token");
    let refreshed = server
        .client_with_cert(None)
        .refresh_grant(&refresh, SERVICE, NODE_SCOPE);
    assert_node_grants(
        server,
        &refreshed,
        "refresh grant with the GET's refresh token",
    );

    // Control: the same request without a certificate is anonymous.
    let anonymous = server.client_with_cert(None).get_token(&query, None);
    assert_eq!(anonymous.status, 200, "{}", anonymous.body);
    assert!(
        anonymous.json().get("refresh_token").is_none(),
        "no refresh token for an anonymous caller: {}",
        anonymous.body
    );
    let claims = verify(server, &anonymous.json_str("token"));
    assert!(
        claims.access.iter().all(|e| e.actions.is_empty()),
        "anonymous callers get nothing under NODE_POLICY: {:?}",
        claims.access
    );
}

/// The cluster's client CA also signs user and admin certificates. Before,
/// `CN=alice` became `node:alice` and got every node grant; now only
/// `CN=system:node:NAME` with `O=system:nodes` is a node, and any other
/// trusted certificate is a `certificate` principal that no node rule
/// matches.
#[test]
fn user_certificates_from_the_client_ca_are_not_nodes() {
    let pki = TestPki::new();
    let standalone = tls_server(&pki);
    let server = &standalone.server;
    for (cn, org) in [
        ("alice", Some("system:masters")),
        (
            regauth_e2e::pki::node_common_name("worker-1").as_str(),
            Some("developers"),
        ),
        (
            regauth_e2e::pki::node_common_name("worker-1").as_str(),
            None,
        ),
    ] {
        let user = pki
            .client_ca
            .issue_client(cn, org, regauth_e2e::pki::Validity::Current);
        let reply = server
            .client_with_cert(Some(&user))
            .client_credentials_grant(SERVICE, NODE_SCOPE);
        assert_eq!(reply.status, 200, "{cn} {org:?}: {}", reply.body);
        let claims = verify(server, &reply.json_str("token"));
        assert_eq!(
            claims.sub,
            format!("certificate:{cn}"),
            "{cn} {org:?} is a certificate principal"
        );
        assert!(
            claims.access.iter().all(|e| e.actions.is_empty()),
            "{cn} {org:?} matches no node rule: {:?}",
            claims.access
        );
    }
}

#[test]
fn client_credentials_without_a_client_certificate_is_invalid_client() {
    let pki = TestPki::new();
    let standalone = tls_server(&pki);
    let server = &standalone.server;

    let reply = server
        .client_with_cert(None)
        .client_credentials_grant(SERVICE, NODE_SCOPE);
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(reply.json_str("error"), "invalid_client", "{}", reply.body);
    assert!(reply.json().get("access_token").is_none());

    // The same connection kind still serves password grants.
    let password = server.client_with_cert(None).password_grant(
        "alice",
        &standalone.alice_password,
        SERVICE,
        "repository:alice/demo:pull",
        false,
    );
    assert_eq!(
        password.status, 200,
        "password grant over TLS without a client certificate: {}",
        password.body
    );
    let claims = verify(server, &password.json_str("token"));
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.actions_on("repository", "alice/demo"), ["pull"]);
}

#[test]
fn untrusted_and_expired_certificates_fail_the_handshake() {
    let pki = TestPki::new();
    let standalone = tls_server(&pki);
    let server = &standalone.server;
    let form = TokenClient::client_credentials_form(SERVICE, NODE_SCOPE);

    for (what, cert) in [
        ("a certificate from an untrusted CA", &pki.untrusted_node),
        (
            "an expired certificate from the client CA",
            &pki.expired_node,
        ),
    ] {
        let client = server.client_with_cert(Some(cert));
        match client.try_post_token(&form) {
            Err(error) => eprintln!("{what}: rejected as expected: {}", error_chain(&error)),
            Ok(reply) => {
                assert_ne!(
                    reply.status, 200,
                    "{what} must not authenticate a node: {}",
                    reply.body
                );
                panic!(
                    "{what} must fail the TLS handshake (tls.client_ca contract), \
                     but the server answered {}: {}",
                    reply.status, reply.body
                );
            }
        }
        let get = try_send(client.http().get(client.token_url()).query(&[
            ("service", SERVICE),
            ("scope", "repository:shared/base:pull"),
        ]));
        assert!(
            get.is_err(),
            "{what}: GET /token must fail the handshake too, got {:?}",
            get.map(|r| (r.status, r.body))
        );
    }

    // Controls: the valid certificate is accepted on the same server, and
    // a connection without a certificate still serves password grants.
    let good = server
        .client_with_cert(Some(&pki.node))
        .client_credentials_grant(SERVICE, NODE_SCOPE);
    assert_node_grants(server, &good, "the trusted, current node certificate");
    let password = server.client_with_cert(None).password_grant(
        "alice",
        &standalone.alice_password,
        SERVICE,
        "",
        false,
    );
    assert_eq!(password.status, 200, "{}", password.body);
}

#[test]
fn without_client_ca_a_certificate_is_not_a_node() {
    let pki = TestPki::new();
    let standalone = standalone_server(|b| b.policy(NODE_POLICY).tls(pki.server_tls(false)));
    let server = &standalone.server;

    // The server does not ask for client certificates, so one offered by
    // the client is never sent, and the caller is no node.
    let reply = server
        .client_with_cert(Some(&pki.node))
        .client_credentials_grant(SERVICE, NODE_SCOPE);
    assert_eq!(
        reply.status, 401,
        "client_credentials without tls.client_ca: {}",
        reply.body
    );
    assert_eq!(reply.json_str("error"), "invalid_client", "{}", reply.body);
    let get = server.client_with_cert(Some(&pki.node)).get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:shared/base:pull"),
        ],
        None,
    );
    assert_eq!(get.status, 200, "{}", get.body);
    let claims = verify(server, &get.json_str("token"));
    assert!(
        claims.actions_on("repository", "shared/base").is_empty(),
        "no node principal without tls.client_ca: {:?}",
        claims.access
    );

    // HTTPS itself works: passwords as before.
    let password = server.client_with_cert(None).password_grant(
        "alice",
        &standalone.alice_password,
        SERVICE,
        "repository:alice/demo:pull",
        false,
    );
    assert_eq!(password.status, 200, "{}", password.body);
}

/// The name ctr pulls the world's registry by. ctr 1.6 skips TLS
/// verification (token realm included) for registries named by a loopback
/// address, so the ctr tests use this name, mapped to 127.0.0.1 by a
/// `hosts.toml`, to make ctr verify the token server's certificate.
const REGISTRY_ALIAS: &str = "registry.regauth.test";

/// ctr against `world`'s registry under [`REGISTRY_ALIAS`]: the containerd
/// daemon, the hosts dir mapping the alias, and the aliased `host:port`.
struct CtrSetup {
    containerd: Containerd,
    hosts_dir: std::path::PathBuf,
    host: String,
}

impl CtrSetup {
    fn start(world: &World) -> Self {
        let host = format!("{REGISTRY_ALIAS}:{}", world.registry.port());
        let hosts_dir = world.new_dir("ctr-hosts");
        write_hosts_toml(&hosts_dir, &host, &world.registry.url());
        Self {
            containerd: Containerd::start(world.dir()),
            hosts_dir,
            host,
        }
    }

    /// `ALIAS:PORT/REPO:latest`.
    fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}:latest", self.host)
    }

    /// TLS options with the hosts dir set.
    fn tls(&self) -> CtrTls<'_> {
        CtrTls {
            hosts_dir: Some(&self.hosts_dir),
            ..CtrTls::default()
        }
    }
}

#[test]
fn ctr_pulls_with_the_node_refresh_token_through_an_https_realm() {
    let pki = TestPki::new();
    let world = tls_world(&pki);
    let (_, shared_digest) = world.push_as("alice", "shared/base");
    world.push_as("alice", "alice/private");

    let reply = world
        .server
        .client_with_cert(Some(&pki.node))
        .client_credentials_grant(SERVICE, "repository:shared/base:pull");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let refresh = reply.json_str("refresh_token");

    let ctr = CtrSetup::start(&world);
    let shared = ctr.reference("shared/base");
    let private = ctr.reference("alice/private");
    let ca = world.server.server_ca_path();
    let trusting = CtrTls {
        ca: Some(&ca),
        ..ctr.tls()
    };

    // ctr verifies the realm's certificate: without the CA it gets no token.
    let untrusting =
        ctr.containerd
            .pull_tls("no-ca", &shared, CtrAuth::Refresh(&refresh), ctr.tls());
    assert!(
        !untrusting.success(),
        "ctr must not accept the token server's certificate without --tlscacert:\n{}",
        untrusting.describe()
    );
    assert!(
        untrusting
            .stderr
            .contains("x509: certificate signed by unknown authority"),
        "the failure should be about the realm's certificate:\n{}",
        untrusting.describe()
    );

    ctr.containerd
        .pull_tls("node", &shared, CtrAuth::Refresh(&refresh), trusting)
        .assert_success("ctr images pull --tlscacert --refresh <node refresh token> shared/base");
    assert_eq!(
        ctr.containerd.image_digest("node", &shared),
        Some(shared_digest.clone())
    );

    // --skip-verify reaches the realm too (the documented way to opt out).
    ctr.containerd
        .pull_tls(
            "skip-verify",
            &shared,
            CtrAuth::Refresh(&refresh),
            CtrTls {
                skip_verify: true,
                ..ctr.tls()
            },
        )
        .assert_success("ctr images pull --skip-verify --refresh <node refresh token>");
    assert_eq!(
        ctr.containerd.image_digest("skip-verify", &shared),
        Some(shared_digest)
    );

    let denied = ctr
        .containerd
        .pull_tls("node", &private, CtrAuth::Refresh(&refresh), trusting);
    assert!(
        !denied.success(),
        "the node's refresh token must not pull alice/private:\n{}",
        denied.describe()
    );
    assert!(
        !denied.stderr.contains("x509") && !denied.stderr.contains("tls:"),
        "alice/private must fail on authorization, not TLS:\n{}",
        denied.describe()
    );
    assert_eq!(ctr.containerd.image_digest("node", &private), None);
}

#[test]
fn ctr_presents_its_client_certificate_to_the_realm() {
    let pki = TestPki::new();
    let world = tls_world(&pki);
    let (_, shared_digest) = world.push_as("alice", "shared/base");
    let ctr = CtrSetup::start(&world);
    let shared = ctr.reference("shared/base");
    let ca = world.server.server_ca_path();
    let certs = world.new_dir("ctr-certs");
    let (node_cert, node_key) = pki.node.write(&certs, "node");
    let (bad_cert, bad_key) = pki.untrusted_node.write(&certs, "untrusted");

    // No credentials: ctr asks the realm with GET and no Authorization, over
    // a connection carrying --tlscert; the token server sees node worker-1.
    ctr.containerd
        .pull_tls(
            "mtls",
            &shared,
            CtrAuth::Anonymous,
            CtrTls {
                ca: Some(&ca),
                client_cert: Some((&node_cert, &node_key)),
                ..ctr.tls()
            },
        )
        .assert_success("ctr images pull --tlscacert --tlscert <node cert> shared/base");
    assert_eq!(
        ctr.containerd.image_digest("mtls", &shared),
        Some(shared_digest)
    );

    // Controls: without a certificate ctr is anonymous and denied. Go's TLS
    // client only offers a certificate whose issuer is among the CA names the
    // server requests, so with the untrusted certificate ctr sends none and is
    // anonymous too; the expired one is sent and the handshake fails.
    let anonymous = ctr.containerd.pull_tls(
        "anonymous",
        &shared,
        CtrAuth::Anonymous,
        CtrTls {
            ca: Some(&ca),
            ..ctr.tls()
        },
    );
    assert!(
        !anonymous.success(),
        "anonymous ctr pull of shared/base must fail:\n{}",
        anonymous.describe()
    );
    let untrusted = ctr.containerd.pull_tls(
        "untrusted",
        &shared,
        CtrAuth::Anonymous,
        CtrTls {
            ca: Some(&ca),
            client_cert: Some((&bad_cert, &bad_key)),
            ..ctr.tls()
        },
    );
    assert!(
        !untrusted.success(),
        "ctr with an untrusted client certificate must fail:\n{}",
        untrusted.describe()
    );
    assert_eq!(ctr.containerd.image_digest("untrusted", &shared), None);
    let (old_cert, old_key) = pki.expired_node.write(&certs, "expired");
    let expired = ctr.containerd.pull_tls(
        "expired",
        &shared,
        CtrAuth::Anonymous,
        CtrTls {
            ca: Some(&ca),
            client_cert: Some((&old_cert, &old_key)),
            ..ctr.tls()
        },
    );
    assert!(
        expired
            .stderr
            .contains("remote error: tls: expired certificate"),
        "the realm must refuse the expired certificate in the handshake:\n{}",
        expired.describe()
    );
    assert_eq!(ctr.containerd.image_digest("expired", &shared), None);
}

#[test]
fn skopeo_uses_the_node_refresh_token_as_identity_token() {
    let pki = TestPki::new();
    let world = tls_world(&pki);
    let (_, digest) = world.push_as("alice", "shared/base");
    world.push_as("alice", "alice/private");

    let reply = world
        .server
        .client_with_cert(Some(&pki.node))
        .client_credentials_grant(SERVICE, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let authfile = write_identity_token_authfile(&world, &reply.json_str("refresh_token"));

    let inspect = world.skopeo.inspect(
        &world.reference("shared/base"),
        Auth::AuthFile(&authfile),
        &[],
    );
    inspect.assert_success("skopeo inspect shared/base with the node's identity token");
    let info: serde_json::Value = serde_json::from_str(&inspect.stdout).expect("inspect JSON");
    assert_eq!(info["Digest"], digest.as_str());

    let denied = world.skopeo.inspect(
        &world.reference("alice/private"),
        Auth::AuthFile(&authfile),
        &[],
    );
    assert!(
        !denied.success(),
        "the node's identity token must not read alice/private:\n{}",
        denied.describe()
    );
}

#[test]
fn skopeo_cert_dir_client_certificate_reaches_the_realm() {
    let pki = TestPki::new();
    let world = tls_world(&pki);
    let (_, digest) = world.push_as("alice", "shared/base");
    let reference = world.reference("shared/base");

    // containers/image reads `*.cert` + `*.key` pairs from --cert-dir and
    // uses the registry's TLS settings for the token realm too.
    let cert_dir = world.new_dir("skopeo-certs");
    std::fs::write(cert_dir.join("node.cert"), &pki.node.cert_pem).expect("write node.cert");
    regauth_e2e::secrets::write_secret_file(
        &cert_dir.join("node.key"),
        pki.node.key_pem.as_bytes(),
    );
    let cert_dir_arg = cert_dir.to_string_lossy().into_owned();

    let inspect = world
        .skopeo
        .inspect(&reference, Auth::Anonymous, &["--cert-dir", &cert_dir_arg]);
    inspect.assert_success("skopeo inspect --cert-dir <node cert> shared/base");
    let info: serde_json::Value = serde_json::from_str(&inspect.stdout).expect("inspect JSON");
    assert_eq!(info["Digest"], digest.as_str());

    // Control: the same anonymous inspect without the certificate is denied.
    let anonymous = world.skopeo.inspect(&reference, Auth::Anonymous, &[]);
    assert!(
        !anonymous.success(),
        "anonymous skopeo inspect of shared/base must fail:\n{}",
        anonymous.describe()
    );
}

/// Before, a refresh token minted from a client certificate stayed valid
/// once the CA that verified the certificate was no longer trusted, whether
/// replaced in the client CA bundle or `tls.client_ca` removed from the
/// config. Now the token names the CA its certificate chained to (by
/// fingerprint), and every refresh checks that the server still trusts it.
#[test]
fn refresh_tokens_of_a_client_ca_no_longer_trusted_are_refused() {
    use regauth_e2e::pki::{Ca, Validity};
    use regauth_e2e::token_server::TokenServerBuilder;
    let pki = TestPki::new();
    let d = tempfile::tempdir().expect("temp dir");
    let mut server = TokenServerBuilder::new()
        .account("alice", "alice-pw", &[])
        .policy(NODE_POLICY)
        .tls(pki.server_tls(true))
        .start(d.path());
    let node_token = |server: &TokenServer, cert| {
        let reply = server
            .client_with_cert(Some(cert))
            .client_credentials_grant(SERVICE, "repository:shared/base:pull");
        assert_eq!(reply.status, 200, "node sign-in: {}", reply.body);
        reply.json_str("refresh_token")
    };
    let old = node_token(&server, &pki.node);
    let plain = server.client_with_cert(None);
    let get = |c: &TokenClient, token: &str| {
        c.get_token(&[("service", SERVICE)], Some(("x", token)))
            .status
    };
    assert_eq!(
        plain.refresh_grant(&old, SERVICE, "").status,
        200,
        "control: POST"
    );
    assert_eq!(get(&plain, &old), 200, "control: GET");

    // The bundle now holds another CA only (the file is watched).
    let next_ca = Ca::new("regauth e2e node CA 2");
    let next_node = next_ca.issue_node(NODE_NAME, Validity::Current);
    std::fs::write(server.dir().join("tls/client-ca.pem"), next_ca.cert_pem())
        .expect("replace the client CA bundle");
    let start = std::time::Instant::now();
    loop {
        let reply = try_send(
            server
                .client_with_cert(Some(&pki.node))
                .http()
                .post(server.token_url())
                .form(&[("grant_type", "client_credentials"), ("service", SERVICE)]),
        );
        if !matches!(&reply, Ok(r) if r.status == 200) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "control: the old CA's certificate still signs in"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let plain = server.client_with_cert(None);
    let post = plain.refresh_grant(&old, SERVICE, "");
    assert!(
        post.status == 400 && post.body.contains("invalid_grant"),
        "POST with a token of the CA no longer trusted: {} {}",
        post.status,
        post.body
    );
    assert_eq!(
        get(&plain, &old),
        401,
        "GET with a token of the CA no longer trusted"
    );
    let next = node_token(&server, &next_node);
    assert_eq!(
        plain.refresh_grant(&next, SERVICE, "").status,
        200,
        "the new CA's node refreshes"
    );

    // tls.client_ca removed from the config, and the server restarted.
    regauth_e2e::ops::edit_config(&server, |text| {
        text.lines()
            .filter(|l| !l.trim_start().starts_with("client_ca:"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    regauth_e2e::ops::send_signal(server.pid(), regauth_e2e::ops::Signal::Term);
    server
        .wait_exit(std::time::Duration::from_secs(40))
        .expect("the server exits");
    server.restart();
    let plain = server.client_with_cert(None);
    let post = plain.refresh_grant(&next, SERVICE, "");
    assert_eq!(post.status, 400, "without tls.client_ca: {}", post.body);
    assert_eq!(get(&plain, &next), 401, "GET without tls.client_ca");
    assert_eq!(
        plain
            .password_grant("alice", "alice-pw", SERVICE, "", false)
            .status,
        200,
        "control: the server answers"
    );
}
