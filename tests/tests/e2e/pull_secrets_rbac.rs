//! The controller's identity under the RBAC the project ships, checked
//! with real kubectl holding the controller's own kubeconfig against the
//! Kubernetes API stub, which enforces those manifests: it can read no
//! Secret but its own, and request tokens only for the configured
//! ServiceAccount names (cluster install), and only in the bound
//! namespaces (namespaced install), where the controller still does its
//! whole job.

use k8s_openapi::api::core::v1::Secret;
use regauth_e2e::process::CmdOutput;
use regauth_e2e::pull_secrets::{Cluster, Install, OPT_IN, PREFIX, eventually, selector_config};
use regauth_e2e::token_client::{http_client_builder, send};

fn forbidden(out: &CmdOutput, what: &str) {
    assert!(
        !out.success(),
        "{what} must be refused:\n{}",
        out.describe()
    );
    // kubectl words it "Error from server (Forbidden): …" or, for create
    // token, "failed to create token: …"; the API's message is in both.
    assert!(
        out.stderr
            .contains("is forbidden: User \"system:serviceaccount:regauth:regauth-pull-secrets\""),
        "{what} must be Forbidden:\n{}",
        out.describe()
    );
}

fn a_secret(cluster: &Cluster, namespace: &str, name: &str) {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(namespace.into());
    secret.string_data = Some([("password".to_owned(), "hunter2".to_owned())].into());
    cluster.api.create(&secret);
}

/// `kubectl create token`, as JSON: kubectl's typed create sends protobuf,
/// which the stub does not decode, so the same TokenRequest goes through
/// `kubectl create --raw`. (Refusals are decided before the body is read,
/// so the tests that expect Forbidden use `kubectl create token` itself.)
fn create_token(
    cluster: &Cluster,
    kubeconfig: &std::path::Path,
    namespace: &str,
    name: &str,
) -> CmdOutput {
    let body = kubeconfig.with_file_name(format!("token-request-{namespace}-{name}.json"));
    std::fs::write(
        &body,
        r#"{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["regauth"], "expirationSeconds": 600}}"#,
    )
    .expect("write a TokenRequest");
    cluster.kubectl(
        kubeconfig,
        &[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
            "-f",
            body.to_str().unwrap(),
        ],
    )
}

/// A request the controller made (kubectl shares its kubeconfig here).
fn is_controller(r: &regauth_e2e::kube_api::RequestRecord) -> bool {
    r.user_agent.starts_with("regauth-pull-secrets/")
}

/// The token of the controller's kubeconfig.
fn token_of(kubeconfig: &std::path::Path) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kubeconfig).expect("read kubeconfig"))
            .expect("the stub writes JSON kubeconfigs");
    config["users"][0]["user"]["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

#[test]
fn with_the_shipped_rbac_the_controller_reads_no_other_secret_and_mints_no_other_token() {
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[("regauth.io/pull-secrets", "enabled")]);
    cluster.api.create_namespace("plain", &[]);
    cluster.api.create_namespace("kube-system", &[]);
    cluster.api.create_service_account("team-a", "admin");
    a_secret(&cluster, "team-a", "database");
    a_secret(&cluster, "kube-system", "bootstrap-token-abcdef");
    let controller = cluster.start_controller(
        "replica-a",
        &cluster.config(
            "namespaces:\n  selector: \"regauth.io/pull-secrets=enabled\"\n",
            "",
        ),
    );
    // Control: the controller does its job with these rights.
    cluster.wait_pull_secret("team-a", "default");
    cluster.wait_attached("team-a", "default");
    let kubeconfig = &controller.kubeconfig;
    let ours = format!("{PREFIX}-default");

    // Its own Secrets, listed by name, across the cluster: allowed.
    let out = cluster.kubectl(
        kubeconfig,
        &[
            "get",
            "secrets",
            "-A",
            "--field-selector",
            &format!("metadata.name={ours}"),
            "-o",
            "name",
        ],
    );
    out.assert_success("listing its own Secrets by name");
    assert_eq!(out.stdout.trim(), format!("secret/{ours}"));

    forbidden(
        &cluster.kubectl(kubeconfig, &["get", "secrets", "-A"]),
        "kubectl get secrets -A",
    );
    forbidden(
        &cluster.kubectl(kubeconfig, &["get", "secrets", "-n", "team-a"]),
        "listing Secrets in a selected namespace",
    );
    forbidden(
        &cluster.kubectl(kubeconfig, &["get", "secret", "database", "-n", "team-a"]),
        "getting another Secret",
    );
    forbidden(
        &cluster.kubectl(
            kubeconfig,
            &[
                "get",
                "secrets",
                "-A",
                "--field-selector",
                "metadata.name=database",
            ],
        ),
        "listing another Secret by name",
    );
    forbidden(
        &cluster.kubectl(
            kubeconfig,
            &[
                "get",
                "secret",
                "bootstrap-token-abcdef",
                "-n",
                "kube-system",
            ],
        ),
        "getting a kube-system Secret",
    );
    // A watch of Secrets, raw: refused without our name, whatever else it selects.
    let http = http_client_builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cluster.api.ca_pem().as_bytes()).expect("the stub's CA"),
        )
        .build()
        .expect("an HTTPS client");
    let token = token_of(kubeconfig);
    for query in [
        "watch=1",
        "watch=1&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dregauth-pull-secrets",
        "watch=1&fieldSelector=metadata.name%3Ddatabase",
    ] {
        let reply = send(
            http.get(format!(
                "{}/api/v1/namespaces/team-a/secrets?{query}",
                cluster.api.https_url()
            ))
            .bearer_auth(&token),
        );
        assert_eq!(reply.status, 403, "watch with {query}: {}", reply.body);
    }

    // Tokens: only for the configured ServiceAccount names.
    forbidden(
        &cluster.kubectl(kubeconfig, &["create", "token", "admin", "-n", "team-a"]),
        "a token for a ServiceAccount that is not configured",
    );
    let out = create_token(&cluster, kubeconfig, "team-a", "default");
    out.assert_success("a token for a configured ServiceAccount");
    assert!(out.stdout.contains("\"token\""), "{}", out.describe());
    // The documented limit of the cluster install: the configured names
    // in every namespace, selected or not (the namespaced install closes it).
    create_token(&cluster, kubeconfig, "plain", "default")
        .assert_success("the cluster install's documented limit");

    // No other write: it cannot patch a ServiceAccount it does not manage.
    forbidden(
        &cluster.kubectl(
            kubeconfig,
            &[
                "patch",
                "serviceaccount",
                "admin",
                "-n",
                "team-a",
                "--type=merge",
                "-p",
                r#"{"automountServiceAccountToken": true}"#,
            ],
        ),
        "patching another ServiceAccount",
    );
    // And the controller itself never met a refusal doing its job.
    let refused: Vec<_> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.client == "replica-a" && is_controller(r) && r.status == 403)
        .collect();
    assert!(
        refused.is_empty(),
        "the controller was refused: {refused:?}"
    );
}

/// Bound by RoleBinding in team-a only, the controller serves team-a, can
/// request no token elsewhere, reads nothing cluster-wide, and says clearly
/// that a configured namespace without a binding cannot be read.
#[test]
fn the_namespaced_install_confines_the_controller_to_the_bound_namespaces() {
    let cluster = Cluster::start_with("1h", Install::Namespaced);
    for ns in ["team-a", "team-b", "plain"] {
        cluster.api.create_namespace(ns, &[]);
    }
    cluster.bind_namespace("team-a");
    let config = cluster.config(
        "scope: namespaced\nnamespaces:\n  names: [team-a, team-b]\n",
        "",
    );
    let controller = cluster.start_controller("replica-a", &config);
    cluster.wait_pull_secret("team-a", "default");
    cluster.wait_attached("team-a", "default");
    let kubeconfig = &controller.kubeconfig;

    forbidden(
        &cluster.kubectl(kubeconfig, &["create", "token", "default", "-n", "plain"]),
        "a token in a namespace that is not bound",
    );
    forbidden(
        &cluster.kubectl(kubeconfig, &["create", "token", "default", "-n", "team-b"]),
        "a token in a configured namespace that is not bound",
    );
    forbidden(
        &cluster.kubectl(kubeconfig, &["get", "namespaces"]),
        "listing namespaces",
    );
    forbidden(
        &cluster.kubectl(
            kubeconfig,
            &[
                "get",
                "secrets",
                "-A",
                "--field-selector",
                &format!("metadata.name={PREFIX}-default"),
            ],
        ),
        "listing its Secrets across the cluster",
    );
    create_token(&cluster, kubeconfig, "team-a", "default")
        .assert_success("a token in the bound namespace");
    // team-b is configured but not bound: said loudly, and nothing there.
    let logs = eventually("a warning about team-b", || {
        let logs = controller.logs();
        logs.lines()
            .any(|l| {
                l.contains("listing or watching failed")
                    && l.contains("team-b")
                    && l.contains("forbidden")
            })
            .then_some(logs)
    });
    assert!(cluster.pull_secret("team-b", "default").is_none(), "{logs}");
    // The controller read nothing cluster-wide.
    let cluster_wide: Vec<_> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.client == "replica-a" && is_controller(r) && r.namespace.is_empty())
        .collect();
    assert!(cluster_wide.is_empty(), "{cluster_wide:?}");

    // A namespace bound later is served after a restart with it in the list.
    drop(controller);
    cluster.bind_namespace("team-b");
    let _controller = cluster.start_controller("replica-b", &config);
    cluster.wait_pull_secret("team-b", "default");
}

/// `service_accounts: ["*"]` cannot be confined by RBAC: the Secret names
/// are not known in advance, so the controller would need to read every
/// Secret in the cluster, and tokens for every ServiceAccount; it watched
/// its Secrets by a label any namespace owner may remove, hiding the
/// controller's own Secret from it. It is refused, by `check-config` with
/// its line and at start, before anything is read or written. Control: the
/// same config naming the ServiceAccount passes and runs.
#[test]
fn service_accounts_star_is_refused_since_no_rbac_could_confine_it() {
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    let base = cluster.config(&selector_config(), "");
    let named = format!("{base}service_accounts: [default]\n");
    cluster
        .check_config(&named)
        .assert_success("control: check-config on a named list");
    for list in [r#"["*"]"#, r#"[default, "*"]"#] {
        let config = format!("{base}service_accounts: {list}\n");
        let line = config.lines().count();
        let out = cluster.check_config(&config);
        assert!(
            !out.success(),
            "service_accounts: {list} passed check-config:\n{}",
            out.describe()
        );
        assert!(
            out.stderr
                .contains(&format!("line {line}: service_accounts"))
                && out.stderr.contains("\"*\""),
            "{list}: {}",
            out.describe()
        );
        let run = cluster.run_controller("star", &config, &["--once"]);
        assert!(
            !run.success() && run.stderr.contains("service_accounts"),
            "the controller started with service_accounts: {list}:\n{}",
            run.describe()
        );
    }
    let star_requests = cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.client == "star")
        .count();
    assert_eq!(star_requests, 0, "a refused config reaches no API");
    // Control: the named list runs and serves team-a.
    cluster
        .run_controller("named", &named, &["--once"])
        .assert_success("regauth-pull-secrets --once with service_accounts: [default]");
    assert!(cluster.pull_secret("team-a", "default").is_some());
}
