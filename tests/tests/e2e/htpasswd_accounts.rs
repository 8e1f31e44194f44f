//! Accounts from an `htpasswd -B` file work like config accounts.

use regauth_e2e::World;
use regauth_e2e::oci::layout_manifest_digest;
use regauth_e2e::secrets::random_password;
use regauth_e2e::skopeo::Auth;
use regauth_e2e::token_server::SERVICE;

#[test]
fn htpasswd_user_pushes_and_pulls_own_namespace() {
    let carol_password = random_password();
    let world = World::builder()
        .server(|s| s.htpasswd_user("carol", &carol_password))
        .start();

    let (_, digest) = world.push_as("carol", "carol/demo");
    let dest = world.new_dir("oci-pulled");
    world
        .skopeo
        .pull(
            &world.reference("carol/demo"),
            &dest,
            Auth::Creds("carol", &carol_password),
        )
        .assert_success("skopeo pull of carol/demo as carol");
    assert_eq!(layout_manifest_digest(&dest, "latest"), Some(digest));

    // carol is subject to the same policy: nothing outside her namespace.
    let reply = world.tokens().get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:alice/demo:pull"),
            ("scope", "repository:carol/demo:pull"),
        ],
        Some(("carol", &carol_password)),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let claims = world.verify_access_token(&reply.json_str("token"));
    assert_eq!(claims.sub, "carol");
    assert!(claims.actions_on("repository", "alice/demo").is_empty());
    assert_eq!(claims.actions_on("repository", "carol/demo"), ["pull"]);

    // And a wrong htpasswd password is a 401.
    let wrong = random_password();
    let reply = world.tokens().get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:carol/demo:pull"),
        ],
        Some(("carol", &wrong)),
    );
    assert_eq!(reply.status, 401, "{}", reply.body);
}
