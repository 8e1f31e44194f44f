//! The signing options a registry must accept: RS256 keys and the `x5c`
//! header, each verified by the real registry on a push and a pull.

use regauth_e2e::World;
use regauth_e2e::jwt::unverified_header;
use regauth_e2e::skopeo::Auth;
use regauth_e2e::token_server::SERVICE;

/// Pushes as alice, inspects as alice, and returns the header of a token
/// from the same server.
fn push_inspect_and_header(world: &World) -> serde_json::Value {
    let (_, digest) = world.push_as("alice", "alice/demo");
    let password = world.password("alice");
    let inspect = world.skopeo.inspect(
        &world.reference("alice/demo"),
        Auth::Creds("alice", &password),
        &["--raw"],
    );
    inspect.assert_success("skopeo inspect --raw alice/demo");
    assert_eq!(
        regauth_e2e::oci::sha256_digest(inspect.stdout.as_bytes()),
        digest
    );
    let reply = world.tokens().get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:alice/demo:pull"),
        ],
        Some(("alice", &password)),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    unverified_header(&reply.json_str("token"))
}

#[test]
fn registry_accepts_rs256_tokens() {
    let world = World::builder().server(|s| s.alg("RS256")).start();
    let header = push_inspect_and_header(&world);
    assert_eq!(header["alg"], "RS256");
    assert!(header.get("x5c").is_none());
}

#[test]
fn registry_accepts_tokens_with_x5c() {
    let world = World::builder().server(|s| s.embed_x5c()).start();
    let header = push_inspect_and_header(&world);
    assert_eq!(header["alg"], "ES256");
    let chain = header["x5c"].as_array().expect("x5c is an array");
    assert_eq!(chain.len(), 1, "x5c holds the signing certificate");
    // The registry decides by x5c alone when it is present, so prove the
    // certificate in it is ours: it is the one the bundle holds.
    let pem = String::from_utf8(world.server.signing_cert_pem()).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(chain[0], body.as_str());
}
