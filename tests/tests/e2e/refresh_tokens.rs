//! skopeo authenticates with a refresh token from an auth file.

use regauth_e2e::World;
use regauth_e2e::oci::layout_manifest_digest;
use regauth_e2e::skopeo::Auth;

use crate::support::{refresh_token_for, tamper, write_identity_token_authfile};

#[test]
fn skopeo_inspects_and_pulls_with_an_identity_token() {
    let world = World::start();
    let (_, digest) = world.push_as("alice", "alice/demo");
    let reference = world.reference("alice/demo");

    let refresh = refresh_token_for(&world, "alice");
    let authfile = write_identity_token_authfile(&world, &refresh);

    let inspect = world
        .skopeo
        .inspect(&reference, Auth::AuthFile(&authfile), &[]);
    inspect.assert_success("skopeo inspect with an identity token");
    let info: serde_json::Value = serde_json::from_str(&inspect.stdout).expect("inspect JSON");
    assert_eq!(info["Digest"], digest.as_str());

    let dest = world.new_dir("oci-pulled");
    world
        .skopeo
        .pull(&reference, &dest, Auth::AuthFile(&authfile))
        .assert_success("skopeo pull with an identity token");
    assert_eq!(layout_manifest_digest(&dest, "latest"), Some(digest));

    // Control: a tampered identity token gets nowhere.
    let forged = write_identity_token_authfile(&world, &tamper(&refresh));
    let denied = world
        .skopeo
        .inspect(&reference, Auth::AuthFile(&forged), &[]);
    assert!(
        !denied.success(),
        "a tampered refresh token must not work:\n{}",
        denied.describe()
    );
}

#[test]
fn identity_token_only_reaches_its_own_namespace() {
    let world = World::start();
    world.push_as("bob", "bob/demo");
    let refresh = refresh_token_for(&world, "alice");
    let authfile = write_identity_token_authfile(&world, &refresh);
    let out = world
        .skopeo
        .inspect(&world.reference("bob/demo"), Auth::AuthFile(&authfile), &[]);
    assert!(
        !out.success(),
        "alice's refresh token must not read bob/demo:\n{}",
        out.describe()
    );
}
