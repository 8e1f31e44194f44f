//! containerd's `ctr` pulls with a password and with a refresh token.

use regauth_e2e::World;
use regauth_e2e::containerd::{Containerd, CtrAuth};
use regauth_e2e::secrets::random_password;

use crate::support::refresh_token_for;

#[test]
fn ctr_pulls_with_password_and_with_refresh_token() {
    let world = World::start();
    let password = world.password("alice");
    let (_, demo_digest) = world.push_as("alice", "alice/demo");
    let (_, other_digest) = world.push_as("alice", "alice/other");
    let demo = world.reference("alice/demo");
    let other = world.reference("alice/other");
    let containerd = Containerd::start(world.dir());

    containerd
        .pull("password", &demo, CtrAuth::User("alice", &password))
        .assert_success("ctr images pull --user alice");
    assert_eq!(
        containerd.image_digest("password", &demo),
        Some(demo_digest),
        "ctr lists the pushed manifest"
    );

    let refresh = refresh_token_for(&world, "alice");
    containerd
        .pull("refresh", &other, CtrAuth::Refresh(&refresh))
        .assert_success("ctr images pull --refresh");
    assert_eq!(
        containerd.image_digest("refresh", &other),
        Some(other_digest)
    );

    // Controls: without valid credentials ctr gets nothing.
    let wrong = random_password();
    let out = containerd.pull("wrong", &demo, CtrAuth::User("alice", &wrong));
    assert!(
        !out.success(),
        "ctr pull with a wrong password must fail:\n{}",
        out.describe()
    );
    let out = containerd.pull("anonymous", &demo, CtrAuth::Anonymous);
    assert!(
        !out.success(),
        "anonymous ctr pull must fail:\n{}",
        out.describe()
    );
    assert_eq!(containerd.image_digest("anonymous", &demo), None);
}
