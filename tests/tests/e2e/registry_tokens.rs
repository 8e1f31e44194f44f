//! The registry accepts access tokens and rejects refresh tokens.

use regauth_e2e::World;
use regauth_e2e::token_server::SERVICE;

use crate::support::refresh_token_for;

#[test]
fn registry_rejects_refresh_token_but_accepts_access_token() {
    let world = World::start();
    let password = world.password("alice");
    let (_, digest) = world.push_as("alice", "alice/demo");
    let refresh = refresh_token_for(&world, "alice");

    let rejected = world
        .registry
        .get_manifest("alice/demo", "latest", Some(&refresh));
    assert_eq!(
        rejected.status, 401,
        "a refresh token presented as a bearer token must be rejected: {}",
        rejected.body
    );

    let access = world
        .tokens()
        .get_token(
            &[
                ("service", SERVICE),
                ("scope", "repository:alice/demo:pull"),
            ],
            Some(("alice", &password)),
        )
        .json_str("token");
    let accepted = world
        .registry
        .get_manifest("alice/demo", "latest", Some(&access));
    assert_eq!(accepted.status, 200, "access token: {}", accepted.body);
    assert_eq!(
        accepted.header("docker-content-digest"),
        Some(digest.clone())
    );

    // An access token obtained with the refresh token as Basic password also works.
    let via_refresh = world.tokens().get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:alice/demo:pull"),
        ],
        Some(("alice", &refresh)),
    );
    assert_eq!(via_refresh.status, 200, "{}", via_refresh.body);
    let accepted =
        world
            .registry
            .get_manifest("alice/demo", "latest", Some(&via_refresh.json_str("token")));
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!(accepted.header("docker-content-digest"), Some(digest));
}
