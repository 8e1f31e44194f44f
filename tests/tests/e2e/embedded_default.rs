//! `regauth-token-server` with no config: the embedded default the README's
//! first command starts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use regauth_e2e::bins::token_server_bin;
use regauth_e2e::jwt::{unverified_claims, unverified_header};
use regauth_e2e::net::free_port;
use regauth_e2e::process::{ChildGuard, Readiness, run, wait_ready};
use regauth_e2e::token_client::TokenClient;

struct Started {
    process: ChildGuard,
    client: TokenClient,
}

fn start(data: &Path, logs: &Path, name: &str, admin_password: Option<&str>) -> Started {
    start_with(data, logs, name, admin_password, &[])
}

fn start_with(
    data: &Path,
    logs: &Path,
    name: &str,
    admin_password: Option<&str>,
    extra: &[&str],
) -> Started {
    let port = free_port();
    let mut cmd = Command::new(token_server_bin());
    cmd.args(extra)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("REGAUTH_ADMIN_PASSWORD")
        .env_remove("REGAUTH_DATA_DIR");
    if let Some(p) = admin_password {
        cmd.env("REGAUTH_ADMIN_PASSWORD", p);
    }
    let mut process = ChildGuard::spawn(cmd, logs, name);
    let client = TokenClient::new(&format!("http://127.0.0.1:{port}"));
    match wait_ready(&mut process, Duration::from_secs(30), || {
        (client.healthz() == Some(200)).then_some(())
    }) {
        Readiness::Ready(()) => Started { process, client },
        other => panic!(
            "embedded default did not start: {other:?}\n{}",
            process.logs()
        ),
    }
}

/// The password printed on first start: the indented line after the notice.
fn printed_password(stdout: &str) -> Option<String> {
    let mut lines = stdout.lines().skip_while(|l| !l.contains("password below"));
    lines.next()?;
    lines
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("set "))
        .map(str::to_owned)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_creates_keys_prints_password_once_and_reuses_them() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");

    let first = start(&data, temp.path(), "first", None);
    let stdout = first.process.stdout();
    let password =
        printed_password(&stdout).unwrap_or_else(|| panic!("no password printed:\n{stdout}"));
    assert!(password.len() >= 20, "weak generated password {password:?}");
    assert!(
        stdout.contains("rootcertbundle:") && stdout.contains("service: registry.local"),
        "{stdout}"
    );
    assert!(
        !first.process.stderr().contains(&password),
        "the password must not go to the log"
    );
    for f in ["signing.key", "signing.crt", "refresh.secret", "htpasswd"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&data), 0o700);

    let admin = first.client.get_token(
        &[
            ("scope", "repository:admin/app:pull,push"),
            ("scope", "repository:other/app:pull"),
        ],
        Some(("admin", &password)),
    );
    assert_eq!(admin.status, 200, "{}", admin.body);
    let token = admin.json_str("token");
    let kid = unverified_header(&token)["kid"].clone();
    let claims = unverified_claims(&token);
    assert_eq!(claims["aud"], "registry.local");
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "admin/app", "actions": ["pull", "push"]}]),
        "the default policy gives each account its own namespace only"
    );
    let wrong = first
        .client
        .get_token(&[], Some(("admin", "not-the-password")));
    assert_eq!(wrong.status, 401);
    drop(first);

    let second = start(&data, temp.path(), "second", None);
    assert_eq!(
        printed_password(&second.process.stdout()),
        None,
        "printed only on first start"
    );
    let again = second.client.get_token(
        &[("scope", "repository:admin/app:pull")],
        Some(("admin", &password)),
    );
    assert_eq!(again.status, 200, "the stored password still works");
    assert_eq!(
        unverified_header(&again.json_str("token"))["kid"],
        kid,
        "the key is reused"
    );
    drop(second);

    let third = start(&data, temp.path(), "third", Some("chosen-by-env"));
    assert_eq!(printed_password(&third.process.stdout()), None);
    let env = third
        .client
        .get_token(&[], Some(("admin", "chosen-by-env")));
    assert_eq!(env.status, 200, "REGAUTH_ADMIN_PASSWORD sets the password");
    let old = third.client.get_token(&[], Some(("admin", &password)));
    assert_eq!(old.status, 401);
}

#[test]
fn registry_config_for_registry_3_writes_the_published_jwks() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let server = start(&data, temp.path(), "server", None);
    let out = temp.path().join("registry3");
    let mut cmd = Command::new(token_server_bin());
    cmd.args(["registry-config", "--registry", "3", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out);
    let result = run(cmd, Duration::from_secs(30));
    result.assert_success("registry-config --registry 3");
    assert!(result.stdout.contains(&format!(
        "jwks: {}",
        out.canonicalize().unwrap().join("jwks.json").display()
    )));
    assert!(result.stdout.contains("rootcertbundle: "));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("jwks.json")).unwrap()).unwrap();
    let published = regauth_e2e::token_client::send(regauth_e2e::token_client::http_client().get(
        format!("{}/.well-known/jwks.json", server.client.base_url()),
    ));
    assert_eq!(published.status, 200);
    assert_eq!(
        written,
        published.json(),
        "the file and the endpoint publish the same keys"
    );
    assert_eq!(written["keys"][0]["kty"], "EC");
    assert_eq!(written["keys"][0]["kid"].as_str().unwrap().len(), 59);
}

#[test]
fn json_log_format_writes_one_object_per_line_with_audit_fields() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let server = start_with(
        &data,
        temp.path(),
        "json",
        Some("json-pw"),
        &["--log-format", "json"],
    );
    let reply = server.client.get_token(
        &[("scope", "repository:admin/app:pull")],
        Some(("admin", "json-pw")),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let wrong = server.client.get_token(&[], Some(("admin", "nope")));
    assert_eq!(wrong.status, 401);
    // Give the log writer a moment, then read what it wrote.
    std::thread::sleep(Duration::from_millis(300));
    let log = server.process.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let issued = events
        .iter()
        .find(|e| e["target"] == "regauth::audit" && e["fields"]["outcome"] == "granted")
        .unwrap_or_else(|| panic!("no audit event for the issued token:\n{log}"));
    assert_eq!(issued["fields"]["sub"], "admin");
    assert_eq!(issued["fields"]["granted"], "repository:admin/app:pull");
    assert!(
        events.iter().any(|e| e["fields"]["outcome"] == "rejected"),
        "{log}"
    );
    assert!(!log.contains("json-pw"), "the password must not be logged");
}
