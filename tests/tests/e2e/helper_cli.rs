//! The credential helper binary as clients run it.

use std::process::Command;
use std::time::Duration;

use regauth_e2e::bins::credential_helper_bin;
use regauth_e2e::process::run;

#[test]
fn version_answers_and_unimplemented_actions_fail_loudly() {
    let mut cmd = Command::new(credential_helper_bin());
    cmd.arg("version");
    let out = run(cmd, Duration::from_secs(10));
    out.assert_success("docker-credential-regauth version");
    assert!(
        out.stdout.starts_with("docker-credential-regauth "),
        "{}",
        out.stdout
    );

    let mut cmd = Command::new(credential_helper_bin());
    cmd.arg("get");
    let out = run(cmd, Duration::from_secs(10));
    assert!(!out.success());
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout, so no client mistakes it for credentials"
    );
    assert!(out.stderr.contains("not implemented"), "{}", out.stderr);
}
