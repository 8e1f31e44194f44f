//! Hostile checks of the pull-secret controller's stated guarantees that
//! its own suite does not cover: the `service_accounts: ["*"]` mode (which
//! watches its Secrets by a label anyone may remove), a lease duration that
//! is not a whole number of seconds, a Secret made immutable by its
//! namespace's owner, a `refresh_threshold` longer than the credential
//! lives, and a Lease record written with the controller's own (stolen)
//! credentials. Each test proves its setup with a control first.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use regauth_e2e::kube_api::{Fault, RequestRecord};
use regauth_e2e::pull_secrets::{
    Cluster, Controller, PREFIX, SYSTEM_NAMESPACE, credential_expiry, eventually, metric,
    now_seconds, password,
};

const OPT_IN: &str = "regauth.io/pull-secrets";

fn selector_config() -> String {
    format!("namespaces:\n  selector: \"{OPT_IN}=enabled\"\n")
}

fn opt_in(cluster: &Cluster, namespace: &str, enabled: bool) {
    let mut ns = cluster
        .api
        .get::<Namespace>("", namespace)
        .expect("the namespace exists");
    let labels = ns.metadata.labels.get_or_insert_with(Default::default);
    if enabled {
        labels.insert(OPT_IN.to_owned(), "enabled".to_owned());
    } else {
        labels.remove(OPT_IN);
    }
    cluster.api.update(&ns);
}

fn ours() -> String {
    format!("{PREFIX}-default")
}

fn metric_or_nan(controller: &Controller, series: &str) -> f64 {
    metric(&controller.metrics(), series).unwrap_or(f64::NAN)
}

/// The RBAC the README prescribes for `service_accounts: ["*"]`: the
/// shipped rules without `resourceNames` on Secrets, ServiceAccounts and
/// tokens ("drop those resourceNames").
fn grant_all_names(cluster: &Cluster) {
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "regauth-pull-secrets-all-names"},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
        ],
    });
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "regauth-pull-secrets-all-names"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "regauth-pull-secrets-all-names"},
        "subjects": [{"kind": "ServiceAccount", "name": "regauth-pull-secrets", "namespace": SYSTEM_NAMESPACE}],
    });
    cluster.api.enforce_rbac(&[role, binding], SYSTEM_NAMESPACE);
}

/// A namespace owner's own `kubernetes.io/dockerconfigjson` Secret named
/// like ours, created with real kubectl (as JSON; see pull_secrets_hostile).
fn foreign_secret(cluster: &Cluster, owner: &std::path::Path, namespace: &str) -> Secret {
    let made = cluster.kubectl(
        owner,
        &[
            "create",
            "secret",
            "docker-registry",
            &ours(),
            "-n",
            namespace,
            "--docker-server=registry.example.com",
            "--docker-username=theirs",
            "--docker-password=their-own-password",
            "--dry-run=client",
            "-o",
            "json",
        ],
    );
    made.assert_success("kubectl create secret docker-registry --dry-run=client");
    let manifest = owner.with_file_name(format!("their-secret-{namespace}.json"));
    std::fs::write(&manifest, &made.stdout).expect("write their Secret");
    cluster
        .kubectl(
            owner,
            &[
                "create",
                "--validate=false",
                "-f",
                manifest.to_str().unwrap(),
            ],
        )
        .assert_success("kubectl create -f of their Secret");
    cluster
        .api
        .get::<Secret>(namespace, &ours())
        .expect("their Secret exists")
}

/// With `service_accounts: ["*"]` the controller watches its Secrets by its
/// `managed-by` label. A namespace owner who removes that label from the
/// controller's own Secret hides it: the README says an edited label is
/// rewritten at once and no expired credential is served, that
/// deselection and `--cleanup` delete the Secret that carries the
/// controller reference, and that a Secret with its name that it did not
/// write is counted in `regauth_pull_secrets_conflicts`.
#[test]
fn attack_star_mode_a_removed_label_hides_the_secret_from_refresh_deselection_and_cleanup() {
    // Credentials live 30 s: refreshed at half-life.
    let cluster = Cluster::start("30s");
    grant_all_names(&cluster);
    for ns in ["team-a", "team-b", "team-c"] {
        cluster.api.create_namespace(ns, &[(OPT_IN, "enabled")]);
    }
    // team-d: the owner's own Secret with our name, without our label.
    cluster.api.create_namespace("team-d", &[]);
    let owner_a = cluster.namespace_user("team-a", "owner-a");
    let owner_d = cluster.namespace_user("team-d", "owner-d");
    let theirs = foreign_secret(&cluster, &owner_d, "team-d");
    opt_in(&cluster, "team-d", true);
    let config = cluster.config(&selector_config(), "service_accounts: [\"*\"]\n");
    let controller = cluster.start_controller("replica-a", &config);
    let host = cluster.registry_host();
    for ns in ["team-a", "team-b", "team-c"] {
        cluster.wait_pull_secret(ns, "default");
        cluster.wait_attached(ns, "default");
    }
    let first = cluster.pull_secret("team-a", "default").unwrap();
    let first_b = cluster.pull_secret("team-b", "default").unwrap();
    let stale = password(&first, &host);
    let stale_exp = credential_expiry(&first, &host).expect("a JWT credential");
    assert!(
        first.metadata.owner_references.is_some(),
        "control: ours carries its reference"
    );

    // The owner removes our label from our Secret (nothing else).
    cluster
        .kubectl(
            &owner_a,
            &[
                "label",
                "-n",
                "team-a",
                "secret",
                &ours(),
                "app.kubernetes.io/managed-by-",
            ],
        )
        .assert_success("kubectl label … managed-by- as the namespace owner");
    let unlabelled = cluster.pull_secret("team-a", "default").unwrap();
    assert!(
        unlabelled
            .metadata
            .labels
            .as_ref()
            .is_none_or(|l| !l.contains_key("app.kubernetes.io/managed-by")),
        "the label is gone"
    );
    assert_eq!(
        unlabelled.metadata.owner_references,
        first.metadata.owner_references
    );

    // Wait past the credential's expiry.
    let wait_until = stale_exp + 5;
    while now_seconds() < wait_until {
        std::thread::sleep(Duration::from_millis(500));
    }
    let now = now_seconds();
    // Control: team-b, untouched, was refreshed meanwhile.
    let b = cluster.pull_secret("team-b", "default").unwrap();
    assert_ne!(
        password(&b, &host),
        password(&first_b, &host),
        "control: team-b refreshed"
    );
    assert!(
        credential_expiry(&b, &host).unwrap() > now,
        "control: team-b is fresh"
    );
    let a = cluster.pull_secret("team-a", "default").unwrap();
    let names = cluster.pull_secret_names("team-a", "default");
    let metrics = controller.metrics();
    println!(
        "team-a after {}s: label={:?} same password={} exp={} now={} listed={:?}\n\
         soonest_expiry={:?} conflicts={:?} foreign_secret failures={:?}",
        now - (stale_exp - 30),
        a.metadata.labels,
        password(&a, &host) == stale,
        credential_expiry(&a, &host).unwrap(),
        now,
        names,
        metric(&metrics, "regauth_pull_secrets_soonest_expiry_seconds"),
        metric(&metrics, "regauth_pull_secrets_conflicts"),
        metric(
            &metrics,
            "regauth_pull_secrets_failures_total{reason=\"foreign_secret\"}"
        ),
    );
    let conflicts = metric(&metrics, "regauth_pull_secrets_conflicts").unwrap_or_default();
    let events: Vec<String> = cluster
        .events_on("team-d", "default")
        .into_iter()
        .chain(cluster.events_on("team-a", "default"))
        .map(|e| {
            format!(
                "{}/{:?}: {:?}",
                e.metadata.namespace.unwrap_or_default(),
                e.reason,
                e.note
            )
        })
        .collect();
    println!("events: {events:#?}");
    let exchanged = |ns: &str| {
        controller
            .logs()
            .lines()
            .filter(|l| l.contains("credential exchanged") && l.contains(&format!("\"{ns}\"")))
            .count()
    };
    println!(
        "exchanges in team-a: {}, team-d (foreign Secret, never written): {}, team-b: {}",
        exchanged("team-a"),
        exchanged("team-d"),
        exchanged("team-b")
    );
    let mut broken = Vec::new();
    if password(&a, &host) == stale && credential_expiry(&a, &host).unwrap() <= now {
        broken.push(format!(
            "team-a's Secret (listed in imagePullSecrets: {}) still serves the credential that expired at {stale_exp} (now {now})",
            names.contains(&ours())
        ));
    }
    // Their Secret in team-d is untouched (that part holds), but not counted.
    assert_eq!(
        cluster.api.get::<Secret>("team-d", &ours()).as_ref(),
        Some(&theirs)
    );
    if conflicts < 1.0 {
        broken.push(format!(
            "regauth_pull_secrets_conflicts is {conflicts} with team-d's foreign Secret in place"
        ));
    }

    // Deselection: team-a's Secret (ours, with our reference) should go;
    // control: team-b's does.
    opt_in(&cluster, "team-a", false);
    opt_in(&cluster, "team-b", false);
    eventually("control: team-b's Secret deleted on deselection", || {
        cluster
            .pull_secret("team-b", "default")
            .is_none()
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    if let Some(left) = cluster.pull_secret("team-a", "default") {
        broken.push(format!(
            "deselected team-a keeps our Secret (ownerReferences {:?})",
            left.metadata.owner_references.map(|o| o
                .into_iter()
                .map(|r| (r.kind, r.name, r.controller))
                .collect::<Vec<_>>())
        ));
    }

    // --cleanup with the same config: control team-c's Secret goes.
    drop(controller);
    let out = cluster.run_controller("cleanup", &config, &["--cleanup"]);
    println!("cleanup: {}", out.describe());
    assert!(
        cluster.pull_secret("team-c", "default").is_none(),
        "control: cleanup removed team-c's"
    );
    if let Some(left) = cluster.pull_secret("team-a", "default") {
        broken.push(format!(
            "--cleanup leaves team-a's Secret, which carries the controller reference {:?}",
            left.metadata.owner_references.map(|o| o
                .into_iter()
                .map(|r| (r.kind, r.uid, r.controller))
                .collect::<Vec<_>>())
        ));
    }
    assert!(
        broken.is_empty(),
        "broken guarantees:\n- {}",
        broken.join("\n- ")
    );
}

/// Runs two replicas with `lease_duration` and 1 s renewals over `spread`
/// namespaces, makes the leader's next `failed_renewals` renewals fail
/// (500: as many as it takes for the follower to see the record lapse), and
/// deletes one Secret after another so that whoever leads must write.
/// Returns the leader's Secret writes the API received after the follower
/// took the Lease, and the takeover gap after the last renewal.
fn overlap(
    lease_duration: &str,
    failed_renewals: usize,
    spread: usize,
) -> (Vec<RequestRecord>, Duration, Duration) {
    let cluster = Cluster::start("1h");
    let namespaces: Vec<String> = (0..spread).map(|i| format!("team-{i:02}")).collect();
    for ns in &namespaces {
        cluster.api.create_namespace(ns, &[(OPT_IN, "enabled")]);
    }
    let config = || {
        cluster.config(&selector_config(), "").replace(
            "lease_duration: 4s",
            &format!("lease_duration: {lease_duration}"),
        )
    };
    assert!(config().contains(&format!(
        "lease_duration: {lease_duration}\n  renew_interval: 1s"
    )));
    let holder = |prefix: &str| {
        cluster
            .lease_holder()
            .filter(|h| h.starts_with(&format!("{prefix}_")))
    };
    let leader = cluster.start_controller("replica-a", &config());
    eventually("replica-a to lead", || holder("replica-a"));
    for ns in &namespaces {
        cluster.wait_pull_secret(ns, "default");
    }
    let follower = cluster.start_controller("replica-b", &config());
    // Past the controller's 10 s watch-lag grace for its own writes, so a
    // deleted Secret is recreated at once; and the follower sees renewals.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        holder("replica-a").is_some(),
        "control: replica-a still leads"
    );
    cluster.api.inject(Fault {
        verb: "update".into(),
        resource: "leases".into(),
        namespace: Some(SYSTEM_NAMESPACE.into()),
        status: 500,
        times: failed_renewals,
        message: Some("etcd leader changed".into()),
    });
    // Wait for the leader's first failed renewal, then keep it busy.
    eventually("a failed renewal", || {
        cluster
            .api
            .requests()
            .iter()
            .any(|r| r.resource == "leases" && r.verb == "update" && r.status == 500)
            .then_some(())
    });
    let start = Instant::now();
    let mut next = namespaces.iter();
    while holder("replica-b").is_none() || start.elapsed() < Duration::from_secs(4) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replica-b never took over"
        );
        if let Some(ns) = next.next() {
            cluster.api.delete::<Secret>(ns, &ours());
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    std::thread::sleep(Duration::from_secs(2));
    let requests = cluster.api.requests();
    let lease_ok = |client: &str| {
        requests
            .iter()
            .filter(|r| {
                r.client == client
                    && r.resource == "leases"
                    && r.verb == "update"
                    && r.status == 200
            })
            .map(|r| r.at)
            .collect::<Vec<_>>()
    };
    let takeover = lease_ok("replica-b")
        .into_iter()
        .min()
        .expect("replica-b took the Lease");
    let last_renewal = lease_ok("replica-a")
        .into_iter()
        .filter(|t| *t < takeover)
        .max()
        .expect("replica-a renewed before");
    let late: Vec<RequestRecord> = requests
        .iter()
        .filter(|r| {
            r.client == "replica-a" && r.is_write() && r.resource == "secrets" && r.at > takeover
        })
        .cloned()
        .collect();
    let after_takeover = late
        .iter()
        .map(|r| r.at - takeover)
        .max()
        .unwrap_or_default();
    let b_writes = requests
        .iter()
        .filter(|r| r.client == "replica-b" && r.is_write() && r.resource == "secrets")
        .count();
    println!(
        "lease_duration {lease_duration}: taken over {:?} after the last renewal; replica-a wrote {} Secrets after that (last {after_takeover:?} after); replica-b wrote {b_writes}\n{:?}",
        takeover - last_renewal,
        late.len(),
        late.iter()
            .map(|r| format!(
                "{} {}/{} {} +{:?}",
                r.verb,
                r.namespace,
                r.name,
                r.status,
                r.at - takeover
            ))
            .collect::<Vec<_>>()
    );
    let stored = cluster
        .api
        .get::<k8s_openapi::api::coordination::v1::Lease>(SYSTEM_NAMESPACE, "regauth-pull-secrets")
        .and_then(|l| l.spec)
        .and_then(|s| s.lease_duration_seconds);
    println!("the Lease records leaseDurationSeconds {stored:?}");
    drop((leader, follower));
    (late, takeover - last_renewal, after_takeover)
}

/// The README: "The leader stops writing `lease_duration` after the start
/// of its last successful renewal, which is always before a follower can
/// take over." `check-config` accepts any duration from 1 s to 1 h, but the
/// Lease records whole seconds, and followers judge by the record. With
/// `lease_duration: 2999ms` followers take over after 2 s while the leader
/// keeps writing until 2.999 s: two writers at once. Control: `3s`.
#[test]
fn attack_a_lease_duration_of_fractional_seconds_lets_two_replicas_write_at_once() {
    let (control, gap, _) = overlap("3s", 3, 40);
    assert!(
        gap >= Duration::from_secs(3),
        "control: takeover after {gap:?}"
    );
    assert!(
        control.is_empty(),
        "control: with whole seconds the old leader wrote after the takeover: {control:?}"
    );
    let (late, gap, after) = overlap("2999ms", 2, 40);
    assert!(
        late.is_empty(),
        "with lease_duration 2999ms a follower took over {gap:?} after the last renewal, and \
         the old leader still wrote {} Secrets, up to {after:?} after that",
        late.len()
    );
}

/// A namespace owner sets `immutable: true` on the controller's Secret (a
/// metadata-level edit the API allows; afterwards `data` cannot change).
/// The README: a Secret that no longer holds what was written is rewritten,
/// and no expired credential is ever served; the controller may delete its
/// Secret, so it could recreate it.
#[test]
fn attack_an_immutable_pull_secret_is_never_refreshed() {
    let cluster = Cluster::start("20s");
    for ns in ["team-a", "team-b"] {
        cluster.api.create_namespace(ns, &[(OPT_IN, "enabled")]);
    }
    let owner = cluster.namespace_user("team-a", "owner-a");
    let controller = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    let host = cluster.registry_host();
    let first = cluster.wait_pull_secret("team-a", "default");
    let first_b = cluster.wait_pull_secret("team-b", "default");
    cluster.wait_attached("team-a", "default");
    let exp = credential_expiry(&first, &host).expect("a JWT credential");
    cluster
        .kubectl(
            &owner,
            &[
                "patch",
                "-n",
                "team-a",
                "secret",
                &ours(),
                "--type=merge",
                "-p",
                r#"{"immutable": true}"#,
            ],
        )
        .assert_success("kubectl patch immutable=true as the namespace owner");
    // Control: the API now refuses a change of data, as the real API does.
    let refused = cluster.kubectl(
        &owner,
        &[
            "patch",
            "-n",
            "team-a",
            "secret",
            &ours(),
            "--type=merge",
            "-p",
            r#"{"data": {"x": "eA=="}}"#,
        ],
    );
    assert!(
        !refused.success() && refused.stderr.contains("immutable"),
        "control: {}",
        refused.describe()
    );
    while now_seconds() < exp + 4 {
        std::thread::sleep(Duration::from_millis(500));
    }
    let now = now_seconds();
    let b = cluster.pull_secret("team-b", "default").unwrap();
    assert_ne!(
        password(&b, &host),
        password(&first_b, &host),
        "control: team-b refreshed"
    );
    let a = cluster
        .pull_secret("team-a", "default")
        .expect("team-a's Secret");
    let a_exp = credential_expiry(&a, &host).unwrap();
    let failures: Vec<String> = cluster
        .events_on("team-a", "default")
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    let exchanged = controller
        .logs()
        .lines()
        .filter(|l| l.contains("credential exchanged") && l.contains("\"team-a\""))
        .count();
    let refused = cluster
        .api
        .requests()
        .iter()
        .filter(|r| {
            r.client == "replica-a"
                && r.resource == "secrets"
                && r.namespace == "team-a"
                && r.status == 422
        })
        .count();
    println!("team-a: {exchanged} exchanges, {refused} Secret writes refused (422)");
    println!(
        "team-a: exp {a_exp}, now {now}, listed {:?}, soonest_expiry {:?}, events {failures:#?}",
        cluster.pull_secret_names("team-a", "default"),
        metric(
            &controller.metrics(),
            "regauth_pull_secrets_soonest_expiry_seconds"
        )
    );
    assert!(
        a_exp > now,
        "team-a's pull Secret serves a credential that expired at {a_exp} (now {now}); the controller only retried the patch"
    );
}

/// `refresh_threshold` may be up to 24 h, whatever lifetime the token
/// server gives its credentials, and the shipped config sets 20m. When a
/// credential lives no longer than the threshold (a token server whose
/// issuer's `credential_ttl` was shortened to 15m, say), every reconcile is
/// due at once: the controller exchanges and rewrites the Secret in a loop,
/// each write's watch event starting the next. Control: the shipped 20m
/// against the default 1h credentials.
#[test]
fn attack_a_refresh_threshold_longer_than_the_credential_spins_the_controller() {
    let run = |ttl: &str, threshold: &str| -> (f64, usize) {
        let cluster = Cluster::start(ttl);
        cluster
            .api
            .create_namespace("team-a", &[(OPT_IN, "enabled")]);
        let config = cluster.config(
            &selector_config(),
            &format!("refresh_threshold: {threshold}\n"),
        );
        cluster
            .check_config(&config)
            .assert_success("check-config accepts it");
        let controller = cluster.start_controller("replica-a", &config);
        cluster.wait_pull_secret("team-a", "default");
        let before = metric_or_nan(&controller, "regauth_pull_secrets_refreshes_total");
        let seen = cluster.api.requests().len();
        std::thread::sleep(Duration::from_secs(10));
        let after = metric_or_nan(&controller, "regauth_pull_secrets_refreshes_total");
        let requests = cluster.api.requests();
        let writes = requests[seen..]
            .iter()
            .filter(|r| r.client == "replica-a" && r.is_write() && r.resource == "secrets")
            .count();
        let token_requests = requests[seen..]
            .iter()
            .filter(|r| r.client == "replica-a" && r.subresource == "token")
            .count();
        println!(
            "credential_ttl {ttl}, refresh_threshold {threshold}: {} exchanges, {writes} Secret writes, {token_requests} TokenRequests in 10 s",
            after - before
        );
        (after - before, writes)
    };
    let (control, _) = run("1h", "20m");
    assert!(control <= 1.0, "control: {control} refreshes");
    let (refreshes, writes) = run("15m", "20m");
    assert!(
        refreshes <= 1.0,
        "refresh_threshold 20m (the shipped value) with 15m credentials: {refreshes} exchanges and {writes} Secret writes in 10 s for one ServiceAccount"
    );
}

/// With the controller's own credentials (stolen from its pod), one
/// `kubectl replace` of its Lease with a huge `leaseDurationSeconds` stops
/// every replica, fresh ones included, for as long as the record says
/// (68 years), although `lease_duration` is bounded to 1 h. Control: the
/// same write with 4 s is taken over within seconds.
#[test]
fn attack_one_lease_write_with_stolen_credentials_stops_every_replica() {
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    let holder = || cluster.lease_holder().unwrap_or_default();
    let hijack = |kubeconfig: &std::path::Path, seconds: i64| {
        let got = cluster.kubectl(
            kubeconfig,
            &[
                "get",
                "lease",
                "-n",
                SYSTEM_NAMESPACE,
                "regauth-pull-secrets",
                "-o",
                "json",
            ],
        );
        got.assert_success("kubectl get lease with the controller's credentials");
        let mut lease: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
        lease["spec"]["holderIdentity"] = "attacker".into();
        lease["spec"]["leaseDurationSeconds"] = seconds.into();
        lease["spec"]["renewTime"] =
            k8s_openapi::jiff::Timestamp::from_second(now_seconds() as i64)
                .unwrap()
                .to_string()
                .into();
        let file = kubeconfig.with_file_name(format!("lease-{seconds}.json"));
        std::fs::write(&file, lease.to_string()).unwrap();
        cluster
            .kubectl(
                kubeconfig,
                &["replace", "--validate=false", "-f", file.to_str().unwrap()],
            )
            .assert_success("kubectl replace lease with the controller's credentials");
    };
    let a = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    eventually("replica-a to lead", || {
        holder().starts_with("replica-a_").then_some(())
    });
    let stolen = a.kubeconfig.clone();
    // Control: a record with 4 s lapses and is taken back.
    hijack(&stolen, 4);
    assert_eq!(holder(), "attacker");
    let start = Instant::now();
    eventually("control: the Lease to be taken back", || {
        holder().starts_with("replica-").then_some(())
    });
    println!("control: taken back after {:?}", start.elapsed());
    // The attack.
    hijack(&stolen, i64::from(i32::MAX));
    drop(a);
    let b = cluster.start_controller("replica-b", &cluster.config(&selector_config(), ""));
    let c = cluster.start_controller("replica-c", &cluster.config(&selector_config(), ""));
    std::thread::sleep(Duration::from_secs(20));
    let leading = [&b, &c]
        .iter()
        .map(|r| metric_or_nan(r, "regauth_pull_secrets_leader"))
        .collect::<Vec<_>>();
    println!(
        "holder after 20 s: {:?}; leader metrics {leading:?}",
        holder()
    );
    assert!(
        holder() != "attacker",
        "one write with the controller's credentials keeps every replica (fresh ones included) \
         following a holder that never renews; the record says {} s",
        i32::MAX
    );
}

/// Puts `entries` into ServiceAccount `namespace/name`'s `imagePullSecrets`
/// as its owner would (a merge patch with real kubectl).
fn list_pull_secrets(
    cluster: &Cluster,
    owner: &std::path::Path,
    namespace: &str,
    name: &str,
    entries: &[&str],
) {
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|n| serde_json::json!({"name": n}))
        .collect();
    cluster
        .kubectl(
            owner,
            &[
                "patch",
                "-n",
                namespace,
                "serviceaccount",
                name,
                "--type=merge",
                "-p",
                &serde_json::json!({"imagePullSecrets": list}).to_string(),
            ],
        )
        .assert_success("kubectl patch imagePullSecrets as the namespace owner");
}

/// In a namespace that never opted in, a team keeps its own docker Secret
/// that happens to be called `regauth-pull-default` (no label, no
/// reference) and lists it on its `default` ServiceAccount. With
/// `service_accounts: ["*"]` the controller cannot see that Secret (it
/// watches by label), takes the entry for its own, and removes it: the
/// team's pods lose their pull credentials. The README: "From
/// ServiceAccounts, they remove only our entry"; "A Secret with its name
/// that it did not write … is left exactly as it is, through selection,
/// every resync, deselection"; "does not list it". Control: the same
/// namespace under the names mode keeps the entry.
#[test]
fn attack_star_mode_strips_a_teams_own_entry_in_a_namespace_that_never_opted_in() {
    let run = |star: bool| -> Vec<String> {
        let cluster = Cluster::start("1h");
        if star {
            grant_all_names(&cluster);
        }
        cluster
            .api
            .create_namespace("team-a", &[(OPT_IN, "enabled")]);
        cluster.api.create_namespace("other", &[]);
        let owner = cluster.namespace_user("other", "other-owner");
        foreign_secret(&cluster, &owner, "other");
        list_pull_secrets(
            &cluster,
            &owner,
            "other",
            "default",
            &["vendor-creds", &ours()],
        );
        let extra = if star {
            "service_accounts: [\"*\"]\n"
        } else {
            ""
        };
        let _controller =
            cluster.start_controller("replica-a", &cluster.config(&selector_config(), extra));
        // Control: the controller serves the selected namespace.
        cluster.wait_pull_secret("team-a", "default");
        cluster.wait_attached("team-a", "default");
        std::thread::sleep(Duration::from_secs(5));
        let names = cluster.pull_secret_names("other", "default");
        let writes: Vec<String> = cluster
            .api
            .requests()
            .into_iter()
            .filter(|r| r.client == "replica-a" && r.is_write() && r.namespace == "other")
            .map(|r| format!("{} {}/{} {}", r.verb, r.resource, r.name, r.status))
            .collect();
        println!(
            "star={star}: other/default lists {names:?}; controller writes in other: {writes:?}"
        );
        assert!(
            cluster.api.get::<Secret>("other", &ours()).is_some(),
            "their Secret stays"
        );
        names
    };
    let control = run(false);
    assert!(
        control.contains(&ours()),
        "control: the names mode keeps their entry: {control:?}"
    );
    let names = run(true);
    assert!(
        names.contains(&ours()),
        "with service_accounts [\"*\"] the controller removed the team's own entry {} from a \
         ServiceAccount in a namespace that never opted in (left: {names:?})",
        ours()
    );
}

/// Any namespace owner, in any namespace (selected or not), can make the
/// controller act on ServiceAccounts it does not manage: an entry named
/// `regauth-pull-<that ServiceAccount>` is taken for the controller's own
/// and "removed". With the shipped RBAC (`patch` only on `default`) each
/// attempt is Forbidden; the controller retries forever and writes Warning
/// Events into that namespace. One owner with 50 such ServiceAccounts.
#[test]
fn attack_entries_named_like_ours_make_the_controller_retry_forbidden_patches_forever() {
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    cluster.api.create_namespace("plain", &[]);
    let owner = cluster.namespace_user("plain", "plain-owner");
    const COUNT: usize = 50;
    for i in 0..COUNT {
        let name = format!("bot-{i}");
        cluster.api.create_service_account("plain", &name);
        let entry = format!("{PREFIX}-{name}");
        list_pull_secrets(&cluster, &owner, "plain", &name, &[&entry]);
    }
    let controller = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    // Control: the controller serves the selected namespace.
    cluster.wait_pull_secret("team-a", "default");
    cluster.wait_attached("team-a", "default");
    std::thread::sleep(Duration::from_secs(15));
    let requests = cluster.api.requests();
    let forbidden = requests
        .iter()
        .filter(|r| {
            r.client == "replica-a"
                && r.namespace == "plain"
                && r.resource == "serviceaccounts"
                && r.verb == "patch"
        })
        .filter(|r| r.status == 403)
        .count();
    let events = cluster
        .api
        .list::<k8s_openapi::api::events::v1::Event>()
        .into_iter()
        .filter(|e| e.metadata.namespace.as_deref() == Some("plain"))
        .collect::<Vec<_>>();
    let sample = events
        .first()
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    println!(
        "in 15 s: {forbidden} Forbidden patches of unmanaged ServiceAccounts in an unselected namespace, {} Events there; api_write failures {:?}\nsample: {sample}",
        events.len(),
        metric(
            &controller.metrics(),
            "regauth_pull_secrets_failures_total{reason=\"api_write\"}"
        )
    );
    assert!(
        forbidden == 0 && events.is_empty(),
        "the controller tried {forbidden} patches of ServiceAccounts it does not manage, in a namespace \
         that is not selected, and wrote {} Warning Events there",
        events.len()
    );
}

/// A token server (or the load balancer in front of it) that answers 429
/// with `Retry-After`. The README: retries are "never sooner than the token
/// server's `Retry-After` (up to `max_backoff`)". RFC 9110 allows the
/// value as seconds or as an HTTP-date. Returns the exchange attempts in
/// `window`.
fn attempts_under_retry_after(
    http_date: bool,
    resync: &str,
    window: Duration,
    poke: bool,
) -> Vec<Duration> {
    use axum::http::{HeaderMap, StatusCode, header};
    use std::sync::{Arc, Mutex};
    const ASKED: u64 = 8;
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    let hits: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = Arc::clone(&hits);
    let router = axum::Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(Instant::now());
            let value = if http_date {
                k8s_openapi::jiff::Timestamp::from_second((now_seconds() + ASKED) as i64)
                    .unwrap()
                    .strftime("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string()
            } else {
                ASKED.to_string()
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, value.parse().unwrap());
            headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            (
                StatusCode::TOO_MANY_REQUESTS,
                headers,
                r#"{"error":"slow_down","error_description":"busy"}"#,
            )
        }
    });
    let stub = regauth_e2e::http_stub::HttpStub::start("busy-token-server", router);
    let config = cluster
        .config(&selector_config(), "")
        .replace(&cluster.world.server.url(), &stub.url())
        .replace("max_backoff: 2s", "max_backoff: 60s")
        .replace(
            "resync_interval: 10s",
            &format!("resync_interval: {resync}"),
        );
    assert!(config.contains(&stub.url()) && config.contains("max_backoff: 60s"));
    assert!(config.contains(&format!("resync_interval: {resync}\n")));
    let controller = cluster.start_controller("replica-a", &config);
    eventually("a first exchange attempt", || {
        (!hits.lock().unwrap().is_empty()).then_some(())
    });
    let first = hits.lock().unwrap()[0];
    if poke {
        // The namespace owner edits an annotation of the ServiceAccount
        // once a second.
        let owner = cluster.namespace_user("team-a", "owner-a");
        let mut i = 0;
        while first.elapsed() + Duration::from_secs(1) < window {
            i += 1;
            cluster
                .kubectl(
                    &owner,
                    &[
                        "annotate",
                        "--overwrite",
                        "-n",
                        "team-a",
                        "serviceaccount",
                        "default",
                        &format!("poke={i}"),
                    ],
                )
                .assert_success("kubectl annotate serviceaccount as the namespace owner");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    std::thread::sleep(window.saturating_sub(first.elapsed()));
    let at: Vec<Duration> = hits
        .lock()
        .unwrap()
        .iter()
        .map(|t| *t - first)
        .filter(|d| *d <= window)
        .collect();
    println!(
        "Retry-After as {}, resync_interval {resync}, owner pokes {poke}: {} attempts in {window:?} at {at:?}; failures {:?}",
        if http_date { "an HTTP-date" } else { "seconds" },
        at.len(),
        metric(
            &controller.metrics(),
            "regauth_pull_secrets_failures_total{reason=\"token_server_unavailable\"}"
        )
    );
    at
}

/// Two ways around the token server's `Retry-After: 8`: the HTTP-date form
/// is ignored, and every `resync_interval` reconciles the ServiceAccount
/// whatever its backoff. Control: seconds, with no resync in the window,
/// are honoured.
#[test]
fn attack_retry_after_is_cut_short_by_an_http_date_and_by_the_resync() {
    let window = Duration::from_secs(17);
    let gaps = |at: &[Duration]| at.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>();
    let short = |at: &[Duration]| {
        gaps(at)
            .into_iter()
            .filter(|g| *g < Duration::from_millis(7900))
            .count()
    };
    let control = attempts_under_retry_after(false, "1h", window, false);
    assert!(
        control.len() >= 2 && short(&control) == 0,
        "control: Retry-After 8 spaces the attempts: {control:?}"
    );
    let mut broken = Vec::new();
    let resync = attempts_under_retry_after(false, "10s", window, false);
    if short(&resync) > 0 {
        broken.push(format!(
            "with resync_interval 10s, attempts at {resync:?} despite Retry-After: 8"
        ));
    }
    let date = attempts_under_retry_after(true, "1h", window, false);
    if short(&date) > 0 {
        broken.push(format!(
            "with Retry-After as an HTTP-date 8 s ahead, attempts at {date:?}"
        ));
    }
    assert!(
        broken.is_empty(),
        "Retry-After not honoured:\n- {}",
        broken.join("\n- ")
    );
}

/// A namespace owner who edits their ServiceAccount once a second makes
/// the controller retry the exchange at that rate, whatever `Retry-After`
/// the token server asked for (here 8 s). Control: without the edits, the
/// attempts are 8 s apart (see the test above).
#[test]
fn attack_a_namespace_owner_drives_exchanges_past_retry_after() {
    let window = Duration::from_secs(17);
    let at = attempts_under_retry_after(false, "1h", window, true);
    assert!(
        at.len() <= 3,
        "Retry-After: 8, yet {} exchange attempts in {window:?} while a namespace owner edited \
         their ServiceAccount once a second: {at:?}",
        at.len()
    );
}
