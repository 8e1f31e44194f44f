//! `docker-credential-regauth doctor [HOST[/REPO]]`: one line per check,
//! all `ok` (exit 0) on a working setup with the grant shown, and a `FAIL`
//! line with a `fix:` line (exit 1) naming the first broken link.

use regauth_e2e::credential_helper::{HelperConfig, HelperEnv, Identity, RegistryEntry};
use regauth_e2e::oidc_issuer::claims::ServiceAccount;
use regauth_e2e::process::CmdOutput;

use crate::credential_helper_common::{
    AUDIENCE, DOWN_TOKEN_SERVER, HelperServer, service_account_identity, signature,
};

const HOST: &str = "registry.doctor.test";

/// The stdout line `ok    CHECK: …`; panics if absent.
fn ok_line<'a>(out: &'a CmdOutput, check: &str) -> &'a str {
    let prefix = format!("ok    {check}: ");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}…` line:\n{}", out.describe()))
}

/// Asserts exit 1 and a `FAIL  CHECK: …` line followed by `      fix: …`;
/// returns the FAIL line.
fn assert_fails_at<'a>(out: &'a CmdOutput, check: &str, what: &str) -> &'a str {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: doctor exits 1 on a failure:\n{}",
        out.describe()
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    let prefix = format!("FAIL  {check}: ");
    let i = lines
        .iter()
        .position(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{what}: no `{prefix}…` line:\n{}", out.describe()));
    let fix = lines.get(i + 1).copied().unwrap_or_default();
    assert!(
        fix.starts_with("      fix: ") && fix.len() > "      fix: ".len() + 5,
        "{what}: the FAIL line is followed by a fix:\n{}",
        out.describe()
    );
    lines[i]
}

#[test]
fn doctor_passes_a_working_setup_and_shows_the_grant() {
    let hs = HelperServer::start();
    let (identity, subject_token) = service_account_identity(&hs.k8s, &hs.new_dir("id"), "team-a");
    let helper = hs.helper(RegistryEntry::new(&[HOST], &hs.url(), identity));

    let out = helper.run(&["doctor", &format!("{HOST}/team-a/app")], "");
    assert!(
        out.success(),
        "doctor on a working setup:\n{}",
        out.describe()
    );
    assert!(!out.stdout.contains("FAIL"), "{}", out.describe());
    assert!(
        ok_line(&out, "config").contains(&*helper.config_path().to_string_lossy()),
        "{}",
        out.describe()
    );
    assert!(ok_line(&out, "registry").contains(HOST));
    assert!(
        ok_line(&out, "identity").contains("team-a/builder"),
        "the identity line names the service account:\n{}",
        out.describe()
    );
    ok_line(&out, "token server");
    ok_line(&out, "exchange");
    let scopes = ok_line(&out, "scopes");
    let (asked, granted) = scopes
        .trim_start_matches("ok    scopes: ")
        .split_once(" -> ")
        .unwrap_or_else(|| panic!("scopes line is `SCOPE -> GRANT`: {scopes}"));
    assert_eq!(asked, "repository:team-a/app:pull,push");
    let granted: serde_json::Value = serde_json::from_str(granted)
        .unwrap_or_else(|e| panic!("the grant is the token's JSON access list ({e}): {scopes}"));
    let entry = granted
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == "team-a/app"))
        .unwrap_or_else(|| panic!("no grant for team-a/app: {granted}"));
    let mut actions: Vec<&str> = entry["actions"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    actions.sort_unstable();
    assert_eq!(actions, ["pull", "push"], "{granted}");
    assert!(
        !out.stdout.contains(signature(&subject_token))
            && !out.stderr.contains(signature(&subject_token)),
        "doctor must not print the identity token:\n{}",
        out.describe()
    );

    // Without HOST it checks every entry and passes.
    let all = helper.run(&["doctor"], "");
    assert!(all.success(), "doctor without HOST:\n{}", all.describe());
    ok_line(&all, "exchange");

    // A repository the policy gives nothing: the scopes check fails.
    let denied = helper.run(&["doctor", &format!("{HOST}/team-b/app")], "");
    let line = assert_fails_at(&denied, "scopes", "team-b/app");
    assert!(line.contains("nothing granted"), "{}", denied.describe());
}

#[test]
fn doctor_names_the_failing_check_and_its_fix() {
    let hs = HelperServer::start();
    let dir = hs.new_dir("id");
    let (identity, _) = service_account_identity(&hs.k8s, &dir, "team-a");
    let target = format!("{HOST}/team-a/app");
    let doctor = |helper: &HelperEnv, target: &str| helper.run(&["doctor", target], "");

    let missing = dir.join("not-mounted");
    let helper = hs.helper(RegistryEntry::new(
        &[HOST],
        &hs.url(),
        Identity::Kubernetes {
            token_file: missing.clone(),
        },
    ));
    let out = doctor(&helper, &target);
    let line = assert_fails_at(&out, "identity", "identity file missing");
    assert!(
        line.contains(&*missing.to_string_lossy()),
        "{}",
        out.describe()
    );
    ok_line(&out, "config");
    assert!(
        !out.stdout.contains("exchange:"),
        "no exchange is tried without an identity:\n{}",
        out.describe()
    );

    let helper =
        hs.helper(RegistryEntry::new(&[HOST], DOWN_TOKEN_SERVER, identity.clone()).timeout("3s"));
    let out = doctor(&helper, &target);
    assert_fails_at(&out, "token server", "token server down");
    ok_line(&out, "identity");

    let forged = dir.join("forged");
    let claims = ServiceAccount::new("team-a", "builder").claims(
        &hs.k8s.url(),
        AUDIENCE,
        std::time::Duration::from_secs(600),
    );
    std::fs::write(&forged, hs.k8s.mint_unpublished(&claims)).expect("write forged token");
    let helper = hs.helper(RegistryEntry::new(
        &[HOST],
        &hs.url(),
        Identity::Kubernetes { token_file: forged },
    ));
    let out = doctor(&helper, &target);
    assert_fails_at(&out, "exchange", "identity the server refuses");
    ok_line(&out, "token server");

    let helper = hs.helper(RegistryEntry::new(&[HOST], &hs.url(), identity));
    let out = doctor(&helper, "registry.other.test/team-a/app");
    let line = assert_fails_at(&out, "registry", "unconfigured host");
    assert!(
        line.contains(HOST),
        "the line lists the patterns:\n{}",
        out.describe()
    );

    let nowhere = HelperEnv::new(&hs.new_dir("no-config"), &HelperConfig::new()).with_var(
        "REGAUTH_HELPER_CONFIG",
        &dir.join("missing.yaml").to_string_lossy(),
    );
    assert_fails_at(&doctor(&nowhere, &target), "config", "config file missing");
}
