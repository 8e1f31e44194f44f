//! Signing key rotation with overlap, checked by the real registry 2.8: a
//! token signed before the rotation keeps working while the old key is
//! still published, new tokens carry the new key's kid, and retiring the
//! old key makes the registry reject its tokens.

use regauth_e2e::jwt::unverified_header;
use regauth_e2e::oci::build_oci_image;
use regauth_e2e::ops::{
    FIXTURE_SIGNING_KEYS, Reload, RestartableRegistry, access_token, generate_key, jwks_kids,
    reload, replace_in_config, signing_keys_yaml,
};
use regauth_e2e::secrets::random_password;
use regauth_e2e::skopeo::{Auth, Skopeo};
use regauth_e2e::token_server::{TokenServer, TokenServerBuilder};

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
