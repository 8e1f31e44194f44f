//! An account pushes to and pulls from its own namespace with skopeo.

use regauth_e2e::World;
use regauth_e2e::oci::{go_arch, layout_blob, layout_manifest_digest, sha256_digest};
use regauth_e2e::skopeo::Auth;
use serde_json::Value;

#[test]
fn alice_pushes_inspects_and_pulls_her_image() {
    let world = World::start();
    let password = world.password("alice");
    let (image, pushed_digest) = world.push_as("alice", "alice/demo");
    let reference = world.reference("alice/demo");

    let inspect = world
        .skopeo
        .inspect(&reference, Auth::Creds("alice", &password), &[]);
    inspect.assert_success("skopeo inspect alice/demo as alice");
    let info: Value = serde_json::from_str(&inspect.stdout).expect("inspect prints JSON");
    assert_eq!(info["Digest"], pushed_digest.as_str(), "inspect: {info}");
    assert_eq!(info["Architecture"], go_arch());
    assert_eq!(info["Os"], "linux");

    let raw = world
        .skopeo
        .inspect(&reference, Auth::Creds("alice", &password), &["--raw"]);
    raw.assert_success("skopeo inspect --raw alice/demo as alice");
    assert_eq!(
        sha256_digest(raw.stdout.as_bytes()),
        pushed_digest,
        "the raw manifest served is the one pushed"
    );

    let dest = world.new_dir("oci-pulled");
    world
        .skopeo
        .pull(&reference, &dest, Auth::Creds("alice", &password))
        .assert_success("skopeo pull of alice/demo as alice");
    let pulled_digest =
        layout_manifest_digest(&dest, "latest").expect("pulled layout lists the tag");
    assert_eq!(pulled_digest, pushed_digest);

    // The layer may be recompressed on push, but the config (naming our
    // unique layer's diff_id) travels unchanged.
    let manifest: Value =
        serde_json::from_slice(&layout_blob(&dest, &pulled_digest).expect("pulled manifest blob"))
            .expect("manifest JSON");
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    let config: Value = serde_json::from_slice(
        &layout_blob(&dest, &image.config_digest).expect("pulled config blob"),
    )
    .expect("config JSON");
    assert_eq!(config["rootfs"]["diff_ids"][0], image.layer_digest.as_str());
}
