//! The pull-secret controller, `regauth-pull-secrets`, against the
//! Kubernetes API stub, the real token server and a real registry: first
//! sync, refresh, namespaces coming and going, foreign `imagePullSecrets`,
//! a token-server outage, API conflicts, two replicas and failover,
//! `--cleanup` and `--once --dry-run`. The Secrets it writes are used by
//! skopeo and ctr as they are, and compared with kubectl's.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{LocalObjectReference, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use regauth_e2e::containerd::{Containerd, CtrAuth};
use regauth_e2e::kube_api::Fault;
use regauth_e2e::ops::{Signal, send_signal};
use regauth_e2e::process::run;
use regauth_e2e::skopeo::Auth;
use regauth_e2e::tools::require_tool;

use regauth_e2e::pull_secrets::{
    Cluster, OPT_IN, PREFIX, docker_config, docker_config_bytes, eventually, metric, password,
    selector_config,
};

fn team_namespaces(cluster: &Cluster, names: &[&str]) {
    for name in names {
        cluster.api.create_namespace(name, &[(OPT_IN, "enabled")]);
    }
}

/// Writes created, pulled by skopeo and ctr with the Secret as it is, for
/// their own namespace only; kubectl writes the same shape.
#[test]
fn first_sync_writes_a_secret_per_namespace_that_pulls_only_its_own_images() {
    let cluster = Cluster::start("1h");
    team_namespaces(&cluster, &["team-a", "team-b", "team-c"]);
    cluster.api.create_namespace("kube-system", &[]);
    let controller = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));

    let host = cluster.registry_host();
    let mut passwords = BTreeMap::new();
    for ns in ["team-a", "team-b", "team-c"] {
        let secret = cluster.wait_pull_secret(ns, "default");
        cluster.wait_attached(ns, "default");
        assert_eq!(
            secret.type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
        assert_eq!(
            secret
                .data
                .as_ref()
                .map(|d| d.keys().cloned().collect::<Vec<_>>()),
            Some(vec![".dockerconfigjson".to_owned()])
        );
        passwords.insert(ns, password(&secret, &host));
    }
    assert!(
        cluster.pull_secret("kube-system", "default").is_none(),
        "unselected namespaces get nothing"
    );
    let distinct: std::collections::BTreeSet<_> = passwords.values().collect();
    assert_eq!(distinct.len(), 3, "each namespace has its own credential");

    // Real clients with the Secret as the kubelet would hand it over.
    let (_, digest_a) = cluster.world.push_as("admin", "team-a/app");
    cluster.world.push_as("admin", "team-b/app");
    let secret_a = cluster.wait_pull_secret("team-a", "default");
    let authfile = cluster.write_authfile(&secret_a, "authfile-a");
    let dest = cluster.world.new_dir("pulled");
    cluster
        .world
        .skopeo
        .pull(
            &cluster.world.reference("team-a/app"),
            &dest,
            Auth::AuthFile(&authfile),
        )
        .assert_success("skopeo pull of team-a/app with team-a's Secret");
    let denied = cluster.world.skopeo.pull(
        &cluster.world.reference("team-b/app"),
        &cluster.world.new_dir("denied"),
        Auth::AuthFile(&authfile),
    );
    assert!(
        !denied.success(),
        "team-a's Secret must not pull team-b/app:\n{}",
        denied.describe()
    );

    let containerd = Containerd::start(cluster.world.dir());
    let password_a = &passwords["team-a"];
    containerd
        .pull(
            "a",
            &cluster.world.reference("team-a/app"),
            CtrAuth::User("regauth", password_a),
        )
        .assert_success("ctr pull of team-a/app with team-a's password");
    assert_eq!(
        containerd.image_digest("a", &cluster.world.reference("team-a/app")),
        Some(digest_a)
    );
    let out = containerd.pull(
        "b",
        &cluster.world.reference("team-b/app"),
        CtrAuth::User("regauth", password_a),
    );
    assert!(
        !out.success(),
        "ctr must not pull team-b/app with team-a's password:\n{}",
        out.describe()
    );

    // kubectl writes the same .dockerconfigjson for the same pair.
    let kubectl = require_tool("kubectl", "kubernetes-client");
    let mut cmd = Command::new(kubectl);
    cmd.args([
        "create",
        "secret",
        "docker-registry",
        "x",
        "--dry-run=client",
        "-o",
        "json",
    ])
    .arg(format!("--docker-server={host}"))
    .arg("--docker-username=regauth")
    .arg(format!("--docker-password={password_a}"))
    .env("KUBECONFIG", "/dev/null");
    let out = run(cmd, Duration::from_secs(60));
    out.assert_success("kubectl create secret docker-registry --dry-run=client");
    let made: Secret = serde_json::from_str(&out.stdout).expect("kubectl printed a Secret");
    assert_eq!(made.type_, secret_a.type_);
    assert_eq!(
        docker_config(&made),
        docker_config(&secret_a),
        "the same JSON as kubectl's"
    );

    let text = controller.metrics();
    assert_eq!(
        metric(&text, "regauth_pull_secrets_managed"),
        Some(3.0),
        "{text}"
    );
    assert!(metric(&text, "regauth_pull_secrets_refreshes_total").is_some_and(|n| n >= 3.0));
    assert_eq!(metric(&text, "regauth_pull_secrets_leader"), Some(1.0));
}

#[test]
fn credentials_are_refreshed_in_place_before_they_expire() {
    // Credentials live 20 s; the controller refreshes once 8 s remain.
    let cluster = Cluster::start("20s");
    team_namespaces(&cluster, &["team-a"]);
    let _controller = cluster.start_controller(
        "replica-a",
        &cluster.config(&selector_config(), "refresh_threshold: 8s\n"),
    );
    let host = cluster.registry_host();
    let first = cluster.wait_pull_secret("team-a", "default");
    let first_password = password(&first, &host);
    let expires = |s: &Secret| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("regauth.io/expires-at"))
            .cloned()
    };
    let refreshed = eventually("a refreshed credential", || {
        cluster
            .pull_secret("team-a", "default")
            .filter(|s| password(s, &host) != first_password)
    });
    assert!(expires(&refreshed) > expires(&first), "the expiry moved on");
    assert_eq!(
        refreshed.metadata.uid, first.metadata.uid,
        "refreshed in place, not recreated"
    );
    assert_eq!(
        cluster.pull_secret_names("team-a", "default"),
        [format!("{PREFIX}-default")]
    );
}

#[test]
fn namespaces_are_picked_up_when_added_and_cleaned_when_they_leave() {
    let cluster = Cluster::start("1h");
    team_namespaces(&cluster, &["team-a"]);
    let controller = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    cluster.wait_pull_secret("team-a", "default");

    // Added later: picked up.
    team_namespaces(&cluster, &["team-new"]);
    cluster.wait_pull_secret("team-new", "default");
    cluster.wait_attached("team-new", "default");

    // Leaves the selection: Secret and entry go.
    let mut ns = cluster
        .api
        .get::<k8s_openapi::api::core::v1::Namespace>("", "team-new")
        .expect("namespace");
    ns.metadata.labels = None;
    cluster.api.update(&ns);
    eventually("team-new's Secret to be deleted", || {
        cluster
            .pull_secret("team-new", "default")
            .is_none()
            .then_some(())
    });
    eventually("team-new's entry to be removed", || {
        cluster
            .pull_secret_names("team-new", "default")
            .is_empty()
            .then_some(())
    });

    // Deleted: no more token requests for it.
    assert!(
        cluster
            .api
            .delete::<k8s_openapi::api::core::v1::Namespace>("", "team-a")
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = token_requests(&cluster, "team-a");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(token_requests(&cluster, "team-a"), before);
    // Nor is it counted any more (within a resync): its expiry would
    // otherwise pass and raise a false alarm.
    eventually("the deleted namespace to leave the metrics", || {
        metric(&controller.metrics(), "regauth_pull_secrets_managed").filter(|n| *n == 0.0)
    });

    // A watch that expires is listed again, and still sees new namespaces.
    cluster.api.expire_watches();
    team_namespaces(&cluster, &["team-late"]);
    cluster.wait_pull_secret("team-late", "default");
}

/// Someone else lists `name` in team-a's default ServiceAccount.
fn add_foreign_entry(cluster: &Cluster, name: &str) {
    let mut sa = cluster
        .api
        .get::<ServiceAccount>("team-a", "default")
        .expect("default SA");
    sa.image_pull_secrets
        .get_or_insert_with(Vec::new)
        .push(LocalObjectReference { name: name.into() });
    cluster.api.update(&sa);
}

fn token_requests(cluster: &Cluster, namespace: &str) -> usize {
    cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.subresource == "token" && r.namespace == namespace)
        .count()
}

#[test]
fn foreign_image_pull_secrets_entries_are_kept() {
    let cluster = Cluster::start("1h");
    team_namespaces(&cluster, &["team-a"]);
    add_foreign_entry(&cluster, "vendor-creds");
    let _controller =
        cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    cluster.wait_attached("team-a", "default");
    assert_eq!(
        cluster.pull_secret_names("team-a", "default"),
        ["vendor-creds".to_owned(), format!("{PREFIX}-default")]
    );
    // Someone else adds another entry later; ours and theirs stay.
    add_foreign_entry(&cluster, "late");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster.pull_secret_names("team-a", "default"),
        [
            "vendor-creds".to_owned(),
            format!("{PREFIX}-default"),
            "late".to_owned()
        ]
    );
}

#[test]
fn a_token_server_outage_backs_off_records_an_event_and_keeps_the_old_secret() {
    // Refreshed at half-life (20 s), valid for 40 s: the outage below
    // starts before the refresh point, and the edit lands past it, well
    // before the credential expires.
    let mut cluster = Cluster::start("40s");
    team_namespaces(&cluster, &["team-a"]);
    let controller = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    let host = cluster.registry_host();
    let before = cluster.wait_pull_secret("team-a", "default");
    let old_password = password(&before, &host);

    send_signal(cluster.world.server.pid(), Signal::Term);
    assert!(
        cluster
            .world
            .server
            .wait_exit(Duration::from_secs(30))
            .is_some(),
        "the token server stops"
    );

    let failures = eventually("a failure metric", || {
        metric(
            &controller.metrics(),
            "regauth_pull_secrets_failures_total{reason=\"token_server_unavailable\"}",
        )
        .filter(|n| *n >= 2.0)
    });
    let event = eventually("a RefreshFailed Event", || {
        cluster
            .api
            .list::<Event>()
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RefreshFailed"))
    });
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("default")
    );
    assert!(
        !event
            .note
            .clone()
            .unwrap_or_default()
            .contains(&old_password)
    );
    let kept = cluster
        .pull_secret("team-a", "default")
        .expect("the old Secret is kept");
    assert_eq!(password(&kept, &host), old_password);
    // An edit during the outage is still repaired, with the credential that
    // was written (valid for a while yet, though past its refresh point).
    let mut edited = kept.clone();
    edited
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "regauth.io/expires-at".into(),
            "2099-01-01T00:00:00Z".into(),
        );
    edited.data.get_or_insert_with(Default::default).insert(
        ".dockerconfigjson".into(),
        k8s_openapi::ByteString(br#"{"auths":{}}"#.to_vec()),
    );
    cluster.api.update(&edited);
    let repaired = eventually("the Secret repaired during the outage", || {
        cluster.pull_secret("team-a", "default").filter(|s| {
            docker_config(s)["auths"]
                .as_object()
                .is_some_and(|a| !a.is_empty())
        })
    });
    assert_eq!(password(&repaired, &host), old_password);
    assert!(
        cluster
            .world
            .server
            .wait_exit(Duration::from_millis(1))
            .is_some(),
        "the token server is still down"
    );
    // Backing off: a handful of attempts in a few seconds, not hundreds.
    std::thread::sleep(Duration::from_secs(3));
    let later = metric(
        &controller.metrics(),
        "regauth_pull_secrets_failures_total{reason=\"token_server_unavailable\"}",
    )
    .unwrap_or_default();
    assert!(
        later - failures < 20.0,
        "{failures} then {later} failures in 3 s"
    );

    cluster.world.server.restart();
    eventually("a fresh credential after the outage", || {
        cluster
            .pull_secret("team-a", "default")
            .filter(|s| password(s, &host) != old_password)
    });
}

#[test]
fn conflicts_on_the_service_account_are_retried() {
    let cluster = Cluster::start("1h");
    team_namespaces(&cluster, &["team-a"]);
    cluster.api.inject(Fault {
        verb: "patch".into(),
        resource: "serviceaccounts".into(),
        namespace: Some("team-a".into()),
        client: None,
        status: 409,
        times: 2,
        message: None,
    });
    let controller = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    cluster.wait_attached("team-a", "default");
    assert_eq!(cluster.api.pending_faults(), 0);
    let conflicts = cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "serviceaccounts" && r.status == 409)
        .count();
    assert_eq!(conflicts, 2);
    assert!(
        metric(
            &controller.metrics(),
            "regauth_pull_secrets_failures_total{reason=\"conflict\"}"
        )
        .is_some_and(|n| n >= 2.0)
    );
}

#[test]
fn two_replicas_elect_one_writer_and_fail_over_when_its_lease_lapses() {
    let cluster = Cluster::start("1h");
    team_namespaces(&cluster, &["team-a"]);
    let a = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    eventually("replica-a to lead", || {
        cluster
            .lease_holder()
            .filter(|h| h.starts_with("replica-a_"))
    });
    let b = cluster.start_controller("replica-b", &cluster.config(&selector_config(), ""));
    cluster.wait_pull_secret("team-a", "default");
    team_namespaces(&cluster, &["team-b"]);
    cluster.wait_pull_secret("team-b", "default");
    // Both replicas are the controller's ServiceAccount; their tokens tell
    // them apart.
    let writes_by = |client: &str| {
        cluster
            .api
            .requests()
            .iter()
            .filter(|r| r.client == client && r.is_write() && r.resource != "leases")
            .count()
    };
    assert!(writes_by("replica-a") > 0);
    assert_eq!(writes_by("replica-b"), 0, "the follower writes nothing");
    assert_eq!(
        metric(&b.metrics(), "regauth_pull_secrets_leader"),
        Some(0.0)
    );

    // The leader dies without releasing its lease: b takes over once it lapses.
    drop(a);
    eventually("replica-b to lead", || {
        cluster
            .lease_holder()
            .filter(|h| h.starts_with("replica-b_"))
    });
    team_namespaces(&cluster, &["team-c"]);
    cluster.wait_pull_secret("team-c", "default");
    assert!(writes_by("replica-b") > 0);
    assert_eq!(
        metric(&b.metrics(), "regauth_pull_secrets_leader"),
        Some(1.0)
    );
}

#[test]
fn cleanup_removes_what_the_controller_wrote_and_nothing_else() {
    let cluster = Cluster::start("1h");
    team_namespaces(&cluster, &["team-a", "team-b"]);
    add_foreign_entry(&cluster, "vendor-creds");
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("vendor-creds".into());
    foreign.metadata.namespace = Some("team-a".into());
    cluster.api.create(&foreign);
    let config = cluster.config(&selector_config(), "");
    {
        let _controller = cluster.start_controller("replica-a", &config);
        cluster.wait_attached("team-a", "default");
        cluster.wait_attached("team-b", "default");
    }
    let out = cluster.run_controller("uninstaller", &config, &["--cleanup"]);
    out.assert_success("regauth-pull-secrets --cleanup");
    for ns in ["team-a", "team-b"] {
        assert!(
            cluster.pull_secret(ns, "default").is_none(),
            "{ns}: our Secret is deleted"
        );
    }
    assert_eq!(
        cluster.pull_secret_names("team-a", "default"),
        ["vendor-creds"]
    );
    assert!(cluster.pull_secret_names("team-b", "default").is_empty());
    assert!(
        cluster
            .api
            .get::<Secret>("team-a", "vendor-creds")
            .is_some(),
        "a foreign Secret stays"
    );
}

#[test]
fn once_with_dry_run_prints_the_secrets_and_writes_nothing() {
    let cluster = Cluster::start("1h");
    team_namespaces(&cluster, &["team-a", "team-b"]);
    let config = cluster.config(&selector_config(), "");
    let writes_before = cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .count();
    let out = cluster.run_controller("cronjob", &config, &["--once", "--dry-run"]);
    out.assert_success("regauth-pull-secrets --once --dry-run");
    let printed: Vec<Secret> = serde_saphyr::from_multiple(&out.stdout)
        .unwrap_or_else(|e| panic!("--dry-run prints YAML Secrets: {e}\n{}", out.stdout));
    let names: Vec<_> = printed
        .iter()
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("team-a".to_owned(), format!("{PREFIX}-default")),
            ("team-b".to_owned(), format!("{PREFIX}-default"))
        ]
    );
    assert!(docker_config_bytes(&printed[0]).starts_with(b"{\"auths\""));
    assert!(
        cluster.pull_secret("team-a", "default").is_none(),
        "nothing is written"
    );
    let writes_after = cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .count();
    assert_eq!(writes_before, writes_after);

    // Without --dry-run, one pass writes them and exits.
    let out = cluster.run_controller("cronjob", &config, &["--once"]);
    out.assert_success("regauth-pull-secrets --once");
    cluster.wait_attached("team-b", "default");
}
