//! Signing key rotation with overlap, checked by the real registry 2.8: a
//! token signed before the rotation keeps working while the old key is
//! still published, new tokens carry the new key's kid, and retiring the
//! old key makes the registry reject its tokens. Refresh-secret rotation
//! the same way: a refresh token from before keeps working through the
//! overlap, new ones carry the new secret's kid, and retiring the old secret
//! refuses its tokens.

use regauth_e2e::bins::token_server_bin;
use regauth_e2e::jwt::unverified_header;
use regauth_e2e::oci::build_oci_image;
use regauth_e2e::ops::{
    FIXTURE_SIGNING_KEYS, Reload, RestartableRegistry, access_token, generate_key, jwks_kids,
    reload, replace_in_config, signing_keys_yaml,
};
use regauth_e2e::process::run;
use regauth_e2e::secrets::random_password;
use regauth_e2e::skopeo::{Auth, Skopeo};
use regauth_e2e::token_server::{SERVICE, TokenServer, TokenServerBuilder};

use crate::support::standalone_server;

const REPO: &str = "alice/demo";
const PULL: &str = "repository:alice/demo:pull";

/// The kid in a token's header.
fn kid(token: &str) -> String {
    unverified_header(token)["kid"]
        .as_str()
        .unwrap_or_else(|| panic!("token without kid: {token}"))
        .to_owned()
}

/// Asserts the registry answers `GET /v2/alice/demo/manifests/latest` with
/// `Bearer token` by `status`; on 200 also that it serves `digest`.
fn assert_registry(
    registry: &RestartableRegistry,
    token: &str,
    status: u16,
    digest: &str,
    what: &str,
) {
    let reply = registry.get_manifest(REPO, token);
    assert_eq!(
        reply.status,
        status,
        "{what}: manifest GET with kid {}: {}\n{}",
        kid(token),
        reply.body,
        registry.logs()
    );
    if status == 200 {
        assert_eq!(
            reply.header("docker-content-digest").as_deref(),
            Some(digest),
            "{what}: the registry serves the pushed manifest"
        );
    }
}

fn pull_token(server: &TokenServer, password: &str) -> String {
    access_token(server.client(), "alice", password, PULL)
}

#[test]
fn rotated_signing_keys_overlap_at_the_registry_then_the_old_key_retires() {
    let temp = tempfile::Builder::new()
        .prefix("regauth-e2e-")
        .tempdir()
        .expect("create temp dir");
    let password = random_password();
    let server = TokenServerBuilder::new()
        .account("alice", &password, &[])
        .start(temp.path());
    let mut registry = RestartableRegistry::start(&server, &temp.path().join("registry"));
    let skopeo = Skopeo::new(&temp.path().join("skopeo"));

    let image = build_oci_image(&temp.path().join("image"));
    let pushed = skopeo.push(
        &image,
        &registry.reference(REPO),
        Auth::Creds("alice", &password),
    );
    pushed.output.assert_success("skopeo push with key A");
    let digest = pushed.digest.expect("skopeo wrote the pushed digest");

    let published = jwks_kids(server.client());
    assert_eq!(published.len(), 1, "one key before the rotation");
    let kid_a = published[0].clone();
    let token_a = pull_token(&server, &password);
    assert_eq!(kid(&token_a), kid_a, "tokens carry the published kid");
    assert_registry(&registry, &token_a, 200, &digest, "before the rotation");

    // Rotate: B signs, A stays published.
    let key_b = generate_key(&server.dir().join("keys-b"));
    assert_ne!(key_b.kid, kid_a, "a new key has a new kid");
    let both = signing_keys_yaml(&["keys-b", "keys"]);
    replace_in_config(&server, FIXTURE_SIGNING_KEYS, &both);
    assert_eq!(reload(&server), Reload::Applied, "{}", server.logs());
    assert_eq!(
        jwks_kids(server.client()),
        [key_b.kid.clone(), kid_a.clone()],
        "both keys are published, the signing one first"
    );
    let token_b = pull_token(&server, &password);
    assert_eq!(
        kid(&token_b),
        key_b.kid,
        "new tokens are signed with B (the kid `keys generate` printed)"
    );

    assert_eq!(
        registry.regenerate_bundle(&server),
        2,
        "bundle.pem holds A and B"
    );
    // Registry 2.8 reads bundle.pem only at start: until it restarts it
    // knows only A.
    assert_registry(
        &registry,
        &token_b,
        401,
        &digest,
        "B token before the registry restart",
    );
    registry.restart();
    assert_registry(
        &registry,
        &token_a,
        200,
        &digest,
        "A token (signed before the rotation) during the overlap",
    );
    assert_registry(
        &registry,
        &token_b,
        200,
        &digest,
        "B token during the overlap",
    );
    let inspect = skopeo.inspect(
        &registry.reference(REPO),
        Auth::Creds("alice", &password),
        &[],
    );
    inspect.assert_success("skopeo inspect during the overlap");

    // Retire A.
    replace_in_config(&server, &both, &signing_keys_yaml(&["keys-b"]));
    assert_eq!(reload(&server), Reload::Applied, "{}", server.logs());
    assert_eq!(jwks_kids(server.client()), std::slice::from_ref(&key_b.kid));
    assert_eq!(
        registry.regenerate_bundle(&server),
        1,
        "bundle.pem holds B only"
    );
    registry.restart();
    assert_registry(&registry, &token_a, 401, &digest, "A token after A retired");
    assert_registry(&registry, &token_b, 200, &digest, "B token after A retired");
    let fresh = pull_token(&server, &password);
    assert_eq!(kid(&fresh), key_b.kid);
    assert_registry(
        &registry,
        &fresh,
        200,
        &digest,
        "fresh token after A retired",
    );
}

/// The refresh secret line as the token server fixture writes it.
const FIXTURE_REFRESH_SECRET: &str = "refresh_secret_file: keys/refresh.secret\n";

/// A `refresh_secrets:` list of `files` (relative to the config's
/// directory), the first one signing.
fn refresh_secrets_yaml(files: &[&str]) -> String {
    let mut yaml = String::from("refresh_secrets:\n");
    for file in files {
        yaml.push_str(&format!("  - {file}\n"));
    }
    yaml
}

/// A refresh token for alice from the password grant.
fn refresh_token(server: &TokenServer, password: &str) -> String {
    let reply = server
        .client()
        .password_grant("alice", password, SERVICE, PULL, true);
    assert_eq!(reply.status, 200, "password grant: {}", reply.body);
    reply.json_str("refresh_token")
}

/// Asserts that `token` still buys a pull token, by the refresh grant and
/// as a Basic password (how docker sends an identity token).
fn assert_refresh_works(server: &TokenServer, token: &str, what: &str) {
    let reply = server.client().refresh_grant(token, SERVICE, PULL);
    assert_eq!(reply.status, 200, "{what}: refresh grant: {}", reply.body);
    let reply = server.client().get_token(
        &[("service", SERVICE), ("scope", PULL)],
        Some(("alice", token)),
    );
    assert_eq!(reply.status, 200, "{what}: GET /token: {}", reply.body);
}

#[test]
fn rotated_refresh_secrets_overlap_then_the_old_secret_retires() {
    let s = standalone_server(|b| b);
    let (server, password) = (&s.server, &s.alice_password);
    let before = refresh_token(server, password);
    let kid_a = kid(&before);
    assert_eq!(
        kid_a.len(),
        16,
        "a short fingerprint, not the secret: {kid_a}"
    );

    // `keys rotate-refresh` writes the new secret and prints its kid and the
    // steps; it never replaces a file without --force.
    let new_secret = server.dir().join("keys/refresh-b.secret");
    let rotate = || {
        let mut cmd = std::process::Command::new(token_server_bin());
        cmd.args(["keys", "rotate-refresh", "--out"])
            .arg(&new_secret);
        run(cmd, std::time::Duration::from_secs(60))
    };
    let out = rotate();
    out.assert_success("keys rotate-refresh");
    for step in ["1. Publish", "2. Sign", "3. Retire", "refresh_secrets"] {
        assert!(out.stdout.contains(step), "no {step:?} in:\n{}", out.stdout);
    }
    let kid_b = out
        .stdout
        .split_once("kid ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(kid, _)| kid.to_owned())
        .unwrap_or_else(|| panic!("no kid in:\n{}", out.stdout));
    assert_ne!(kid_b, kid_a);
    let meta = std::fs::metadata(&new_secret).expect("the new secret exists");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let written = std::fs::read(&new_secret).expect("read the new secret");
    let again = rotate();
    assert!(!again.success(), "a second run must not replace the secret");
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(std::fs::read(&new_secret).unwrap(), written);

    // 1. Publish: B verifies, A still signs.
    let published = refresh_secrets_yaml(&["keys/refresh.secret", "keys/refresh-b.secret"]);
    replace_in_config(server, FIXTURE_REFRESH_SECRET, &published);
    assert_eq!(reload(server), Reload::Applied, "{}", server.logs());
    assert_refresh_works(server, &before, "A token after publishing B");
    assert_eq!(
        kid(&refresh_token(server, password)),
        kid_a,
        "A still signs"
    );

    // 2. Sign: B first.
    let signing = refresh_secrets_yaml(&["keys/refresh-b.secret", "keys/refresh.secret"]);
    replace_in_config(server, &published, &signing);
    assert_eq!(reload(server), Reload::Applied, "{}", server.logs());
    let after = refresh_token(server, password);
    assert_eq!(kid(&after), kid_b, "new refresh tokens carry B's kid");
    assert_refresh_works(server, &before, "A token during the overlap");
    assert_refresh_works(server, &after, "B token during the overlap");

    // 3. Retire A: its tokens are refused as any invalid refresh token is.
    replace_in_config(
        server,
        &signing,
        &refresh_secrets_yaml(&["keys/refresh-b.secret"]),
    );
    assert_eq!(reload(server), Reload::Applied, "{}", server.logs());
    let refused = server.client().refresh_grant(&before, SERVICE, PULL);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"], "invalid_grant", "{}", refused.body);
    let refused = server.client().get_token(
        &[("service", SERVICE), ("scope", PULL)],
        Some(("alice", &before)),
    );
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_refresh_works(server, &after, "B token after A retired");
}
