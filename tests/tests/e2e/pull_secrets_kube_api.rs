//! The Kubernetes API stub checked with real clients: kubectl reads it, a
//! raw watch stream carries changes, bookmarks and 410s, server-side apply
//! keeps another manager's fields, and the real token server trusts the
//! tokens it mints.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use regauth_e2e::kube_api::{KubeApi, Options};
use regauth_e2e::oidc_issuer::config::IssuerConfig;
use regauth_e2e::process::run;
use regauth_e2e::token_client::{http_client, send};
use regauth_e2e::tools::require_tool;
use serde_json::{Value, json};

use crate::workload_identity::{IdentityServer, POLICY};

fn kubectl(api: &KubeApi, dir: &std::path::Path, args: &[&str]) -> regauth_e2e::process::CmdOutput {
    let kubeconfig = dir.join("kubeconfig");
    if !kubeconfig.exists() {
        api.write_kubeconfig(&kubeconfig, "kubectl-user");
    }
    let mut cmd = Command::new(require_tool("kubectl", "kubernetes-client"));
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args)
        .env("HOME", dir);
    run(cmd, Duration::from_secs(60))
}

#[test]
fn kubectl_reads_namespaces_and_secrets_from_the_stub() {
    let api = KubeApi::start();
    api.create_namespace("team-a", &[("env", "prod")]);
    let mut secret = Secret::default();
    secret.metadata.name = Some("creds".into());
    secret.metadata.namespace = Some("team-a".into());
    secret.string_data = Some([("user".to_owned(), "alice".to_owned())].into());
    api.create(&secret);
    let dir = tempfile::tempdir().expect("temp dir");

    // Over HTTPS kubectl sends its bearer token (over plain HTTP it sends none).
    let out = kubectl(&api, dir.path(), &["get", "namespaces"]);
    out.assert_success("kubectl get namespaces");
    assert!(out.stdout.contains("team-a"), "{}", out.describe());

    let out = kubectl(
        &api,
        dir.path(),
        &["get", "secret", "creds", "-n", "team-a", "-o", "json"],
    );
    out.assert_success("kubectl get secret -o json");
    let read: Secret = serde_json::from_str(&out.stdout).expect("kubectl printed a Secret");
    assert_eq!(
        read.data.unwrap()["user"].0,
        b"alice",
        "stringData was folded into data"
    );
    assert_eq!(read.type_.as_deref(), Some("Opaque"));

    let out = kubectl(
        &api,
        dir.path(),
        &["get", "namespaces", "-l", "env=prod", "-o", "name"],
    );
    out.assert_success("kubectl get namespaces -l");
    assert_eq!(out.stdout.trim(), "namespace/team-a");
    assert!(
        api.requests()
            .iter()
            .any(|r| r.user == "kubectl-user" && r.verb == "list"),
        "kubectl's requests are recorded under its user"
    );
}

/// The next watch event.
fn next_event(reader: &mut impl BufRead) -> Value {
    let mut line = String::new();
    let read = reader.read_line(&mut line).expect("read a watch event");
    assert!(read > 0, "the watch ended");
    serde_json::from_str(&line).expect("a watch event is JSON")
}

/// The next event that is not a bookmark.
fn next_change(reader: &mut impl BufRead) -> Value {
    loop {
        let event = next_event(reader);
        if event["type"] != "BOOKMARK" {
            return event;
        }
    }
}

#[test]
fn watches_stream_changes_bookmarks_and_expire_old_versions() {
    let api = KubeApi::start_with(Options {
        history: 4,
        bookmark_interval: Duration::from_millis(200),
    });
    let token = api.add_user("watcher");
    api.create_namespace("team-a", &[]);
    let start = api.resource_version();
    let url = format!(
        "{}/api/v1/namespaces/team-a/serviceaccounts?watch=1&resourceVersion={start}&allowWatchBookmarks=true&labelSelector=app%3Dx",
        api.url()
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .expect("start a watch");
    assert_eq!(response.status(), 200);
    let mut reader = BufReader::new(response);

    let mut sa = api.create_service_account("team-a", "builder");
    sa.metadata.labels = Some([("app".to_owned(), "x".to_owned())].into());
    let sa = api.update(&sa);
    // Entering the selection is an ADDED.
    let added = next_change(&mut reader);
    assert_eq!(added["type"], "ADDED");
    assert_eq!(added["object"]["metadata"]["name"], "builder");
    let mut sa_unlabelled = sa.clone();
    sa_unlabelled.metadata.labels = None;
    api.update(&sa_unlabelled);
    // Leaving it is a DELETED; then bookmarks carry the latest version.
    assert_eq!(next_change(&mut reader)["type"], "DELETED");
    let bookmark = next_event(&mut reader);
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );

    // The history holds 4 changes: the start version is gone now.
    for i in 0..6 {
        api.create_service_account("team-a", &format!("sa-{i}"));
    }
    let expired = client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .expect("watch again");
    let event = next_event(&mut BufReader::new(expired));
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
}

#[test]
fn server_side_apply_keeps_other_managers_fields() {
    let api = KubeApi::start();
    let token = api.add_user("applier");
    api.create_namespace("team-a", &[]);
    let url = format!("{}/api/v1/namespaces/team-a/secrets/s", api.url());
    let apply = |manager: &str, body: Value, force: bool| {
        send(
            http_client()
                .patch(format!("{url}?fieldManager={manager}&force={force}"))
                .bearer_auth(&token)
                .header("content-type", "application/apply-patch+yaml")
                .body(body.to_string()),
        )
    };
    let secret = |data: Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": data});
    let first = apply("ours", secret(json!({"a": "MQ=="})), false);
    assert_eq!(first.status, 201, "{}", first.body);
    let theirs = apply("theirs", secret(json!({"b": "Mg=="})), false);
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    // Re-applying ours without "a" removes only what we owned.
    let again = apply("ours", secret(json!({"c": "Mw=="})), false);
    assert_eq!(again.json()["data"], json!({"b": "Mg==", "c": "Mw=="}));
    // Setting their field needs force.
    let conflict = apply("ours", secret(json!({"b": "OQ=="})), false);
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(
        conflict.body.contains("conflict with \\\"theirs\\\""),
        "{}",
        conflict.body
    );
    let forced = apply("ours", secret(json!({"b": "OQ=="})), true);
    assert_eq!(forced.status, 200);
    let managers: Vec<String> = forced.json()["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(managers, ["ours"], "forcing took the field from them");
}

#[test]
fn the_token_server_trusts_tokens_the_stub_mints() {
    let api = KubeApi::start();
    let token = api.add_user("minter");
    api.create_namespace("team-a", &[]);
    let server = IdentityServer::start(
        &[IssuerConfig::kubernetes("cluster", &api.url())],
        POLICY,
        |b| b,
        |_| {},
    );
    let mint = |expiration: i64| {
        send(
            http_client()
                .post(format!(
                    "{}/api/v1/namespaces/team-a/serviceaccounts/default/token",
                    api.url()
                ))
                .bearer_auth(&token)
                .json(
                    &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": ["regauth"], "expirationSeconds": expiration}}),
                ),
        )
    };
    assert_eq!(mint(599).status, 422, "the API's minimum is 10 minutes");
    let reply = mint(600);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let sa_token = reply.json()["status"]["token"].as_str().unwrap().to_owned();
    let exchanged = server.tokens().post_token(&[
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("subject_token", &sa_token),
        ("audience", regauth_e2e::token_server::SERVICE),
    ]);
    assert_eq!(exchanged.status, 200, "{}", exchanged.body);
    assert!(!exchanged.json_str("access_token").is_empty());
}
