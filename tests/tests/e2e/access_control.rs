//! Policy and authentication failures as clients see them.

use regauth_e2e::World;
use regauth_e2e::secrets::random_password;
use regauth_e2e::skopeo::Auth;
use regauth_e2e::token_server::SERVICE;

/// What containers/image (skopeo 1.9) reports when the token endpoint
/// answers 401 to the credentials it sent; the server's own message follows
/// after `unauthorized: `.
const INVALID_CREDENTIALS: &str = "unable to retrieve auth token: invalid username/password";

/// What skopeo 1.9 reports when the registry refuses a token that lacks the
/// needed access (registry error code DENIED).
const ACCESS_DENIED: &str = "denied: requested access to the resource is denied";

#[test]
fn alice_cannot_push_into_bobs_namespace_and_gets_no_such_grant() {
    let world = World::start();
    let password = world.password("alice");

    let (_, pushed) = world.try_push("bob/demo", Auth::Creds("alice", &password));
    assert!(
        !pushed.output.success(),
        "alice's push to bob/demo must fail:\n{}",
        pushed.output.describe()
    );
    assert!(
        !pushed.output.stderr.contains(INVALID_CREDENTIALS)
            && pushed.output.stderr.contains(ACCESS_DENIED),
        "alice's credentials are valid, so the failure must be about access, not login:\n{}",
        pushed.output.describe()
    );

    // Nothing landed in bob/demo, as bob himself can see.
    let bob_password = world.password("bob");
    let bob_view = world.skopeo.inspect(
        &world.reference("bob/demo"),
        Auth::Creds("bob", &bob_password),
        &[],
    );
    assert!(
        !bob_view.success(),
        "bob/demo must not exist after the denied push:\n{}",
        bob_view.describe()
    );

    // Ask the token server directly: the denied scope is silently dropped,
    // the allowed one (control) is granted.
    let reply = world.tokens().get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:bob/demo:pull,push"),
            ("scope", "repository:alice/demo:pull,push"),
        ],
        Some(("alice", &password)),
    );
    assert_eq!(
        reply.status, 200,
        "denied access is not an error: {}",
        reply.body
    );
    let claims = world.verify_access_token(&reply.json_str("token"));
    assert_eq!(claims.sub, "alice");
    assert_eq!(
        claims.actions_on("repository", "bob/demo"),
        Vec::<String>::new(),
        "no push or pull on bob/demo may be granted to alice: {:?}",
        claims.access
    );
    assert_eq!(
        claims.actions_on("repository", "alice/demo"),
        ["pull", "push"],
        "alice's own namespace is granted: {:?}",
        claims.access
    );
    let access_token = reply.json_str("access_token");
    let same = world.verify_access_token(&access_token);
    assert_eq!(same.access, claims.access);
}

#[test]
fn wrong_password_is_reported_as_invalid_credentials() {
    let world = World::start();
    let wrong = random_password();

    let (_, pushed) = world.try_push("alice/demo", Auth::Creds("alice", &wrong));
    assert!(
        !pushed.output.success(),
        "push with a wrong password must fail"
    );
    assert!(
        pushed.output.stderr.contains(INVALID_CREDENTIALS),
        "skopeo push should report {INVALID_CREDENTIALS:?}:\n{}",
        pushed.output.describe()
    );

    let inspect = world.skopeo.inspect(
        &world.reference("alice/demo"),
        Auth::Creds("alice", &wrong),
        &[],
    );
    assert!(
        !inspect.success(),
        "inspect with a wrong password must fail"
    );
    assert!(
        inspect.stderr.contains(INVALID_CREDENTIALS),
        "skopeo inspect should report {INVALID_CREDENTIALS:?}:\n{}",
        inspect.describe()
    );
}

#[test]
fn anonymous_client_cannot_read_a_private_repository() {
    let world = World::start();
    let (_, digest) = world.push_as("alice", "alice/demo");
    let reference = world.reference("alice/demo");

    let anonymous = world.skopeo.inspect(&reference, Auth::Anonymous, &[]);
    assert!(
        !anonymous.success(),
        "anonymous inspect of alice/demo must fail:\n{}",
        anonymous.describe()
    );
    assert!(
        anonymous
            .stderr
            .contains("requested access to the resource is denied")
            || anonymous.stderr.contains("unauthorized"),
        "anonymous inspect should fail on authorization:\n{}",
        anonymous.describe()
    );

    // Control: the image is there for its owner.
    let password = world.password("alice");
    let owner = world
        .skopeo
        .inspect(&reference, Auth::Creds("alice", &password), &[]);
    owner.assert_success("skopeo inspect alice/demo as alice");
    assert!(owner.stdout.contains(&digest));

    // An anonymous token request succeeds but grants nothing.
    let reply = world.tokens().get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:alice/demo:pull"),
        ],
        None,
    );
    assert_eq!(reply.status, 200, "anonymous token request: {}", reply.body);
    assert!(
        reply.json().get("refresh_token").is_none(),
        "no refresh token without authentication"
    );
    let claims = world.verify_access_token(&reply.json_str("token"));
    assert!(
        claims.actions_on("repository", "alice/demo").is_empty(),
        "anonymous got access to alice/demo: {:?}",
        claims.access
    );
}
