//! The credential helper binary's protocol edges, as clients run it.

use std::process::Command;
use std::time::Duration;

use regauth_e2e::bins::credential_helper_bin;
use regauth_e2e::process::{CmdOutput, run_with_stdin};

fn helper(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = Command::new(credential_helper_bin());
    cmd.args(args)
        .env_remove("REGAUTH_HELPER_CONFIG")
        .env("HOME", "/nonexistent-regauth-home")
        .env_remove("XDG_CONFIG_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_stdin(cmd, stdin.as_bytes(), Duration::from_secs(20))
}

#[test]
fn version_and_unconfigured_get() {
    let out = helper(&["version"], "", &[]);
    out.assert_success("docker-credential-regauth version");
    assert!(
        out.stdout.starts_with("docker-credential-regauth "),
        "{}",
        out.stdout
    );

    if !std::path::Path::new("/etc/regauth/helper.yaml").exists() {
        let out = helper(&["get"], "registry.example.com\n", &[]);
        assert!(!out.success());
        assert_eq!(
            out.stdout.trim_end(),
            "credentials not found in native keychain"
        );
    }
}

#[test]
fn broken_config_is_a_real_error_not_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("helper.yaml");
    std::fs::write(&cfg, "registries: [{match: [a], bogus: 1}]\n").unwrap();
    let out = helper(&["--config", cfg.to_str().unwrap(), "get"], "a\n", &[]);
    assert!(!out.success());
    assert!(
        !out.stdout.contains("credentials not found"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("bogus"), "{}", out.stderr);

    let missing = dir.path().join("missing.yaml");
    let out = helper(
        &["get"],
        "a\n",
        &[("REGAUTH_HELPER_CONFIG", missing.to_str().unwrap())],
    );
    assert!(!out.success());
    assert!(
        !out.stdout.contains("credentials not found"),
        "an explicit config that is missing is an error"
    );
}

/// A config named but missing is one error, its I/O cause said once on
/// each stream: the summary line on stdout, the chain on stderr.
#[test]
fn a_missing_config_names_its_io_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let out = helper(
        &["get"],
        "a\n",
        &[("REGAUTH_HELPER_CONFIG", missing.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    let cause = "No such file or directory";
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert_eq!(
            text.matches(cause).count(),
            1,
            "{stream} should say {cause:?} once:\n{}",
            out.describe()
        );
        assert!(
            text.contains(missing.to_str().unwrap()),
            "{stream} names the file:\n{}",
            out.describe()
        );
    }
}

#[test]
fn store_is_accepted_and_kept_nowhere() {
    let out = helper(
        &["store"],
        r#"{"ServerURL":"r.example.com","Username":"u","Secret":"s3cret"}"#,
        &[],
    );
    out.assert_success("store");
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("not storing"), "{}", out.stderr);
    assert!(!out.stderr.contains("s3cret"));
    let bad = helper(&["store"], "not json", &[]);
    assert!(!bad.success());
}
