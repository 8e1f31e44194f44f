//! The pull-secret controller against a hostile namespace owner and a
//! failing world: a Secret with our name that was there first, edits to
//! the Secret and the ServiceAccount, long and changing errors, retries
//! against a down token server, and a leader killed without warning. Every
//! test runs under the shipped RBAC (see `pull_secrets.rs` in the support
//! crate), and people act through real kubectl where they would.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use regauth_e2e::kube_api::{Fault, RequestRecord};
use regauth_e2e::ops::{Signal, send_signal};
use regauth_e2e::pull_secrets::{
    Cluster, OPT_IN, PREFIX, SYSTEM_NAMESPACE, credential_expiry, eventually, metric, now_seconds,
    password, selector_config,
};

/// The tests' `resync_interval` (see `Cluster::config`).
const RESYNC: Duration = Duration::from_secs(10);
/// What a loaded machine may add to "within one resync".
const SLACK: Duration = Duration::from_secs(10);
/// The field manager and User-Agent product of the controller.
const MANAGER: &str = "regauth-pull-secrets";

fn secret_name() -> String {
    format!("{PREFIX}-default")
}

/// Requests of the controller's replicas that wrote (or tried to write)
/// `resource` in `namespace`.
fn controller_writes(cluster: &Cluster, resource: &str, namespace: &str) -> Vec<RequestRecord> {
    cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.client.starts_with("replica-") && r.is_write())
        .filter(|r| r.resource == resource && r.namespace == namespace)
        .collect()
}

/// Waits up to `bound` for `probe`, returning how long it took.
fn within<T>(what: &str, bound: Duration, mut probe: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return (value, start.elapsed());
        }
        assert!(
            start.elapsed() < bound,
            "timed out after {bound:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Secret of the same name that a namespace owner made first is theirs:
/// selection, resyncs and deselection leave it exactly as it was, and the
/// controller says why it does nothing there.
#[test]
fn a_foreign_secret_with_our_name_survives_selection_a_resync_and_deselection_byte_for_byte() {
    let cluster = Cluster::start("1h");
    cluster.api.create_namespace("victim", &[]);
    cluster
        .api
        .create_namespace("team-b", &[(OPT_IN, "enabled")]);
    let owner = cluster.namespace_user("victim", "victim-owner");
    let theirs = cluster.their_secret(&owner, "victim", &secret_name());
    cluster.opt_in("victim", true);
    let controller = cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    // Control: the controller works beside it.
    cluster.wait_pull_secret("team-b", "default");
    cluster.wait_attached("team-b", "default");

    // A resync later: still theirs, and not listed by us.
    std::thread::sleep(RESYNC + Duration::from_secs(2));
    assert_eq!(
        cluster.api.get::<Secret>("victim", &secret_name()).as_ref(),
        Some(&theirs),
        "their Secret changed"
    );
    assert!(cluster.pull_secret_names("victim", "default").is_empty());
    // Nothing is minted for a Secret that cannot be written: no TokenRequest
    // and no exchange for victim, while team-b (the control) had both.
    let minted = |ns: &str| {
        let exchanges = controller
            .logs()
            .lines()
            .filter(|l| l.contains("credential exchanged") && l.contains(&format!("\"{ns}\"")))
            .count();
        let token_requests = cluster
            .api
            .requests()
            .iter()
            .filter(|r| r.subresource == "token" && r.namespace == ns)
            .count();
        (exchanges, token_requests)
    };
    assert_eq!(minted("victim"), (0, 0), "minted for a foreign Secret");
    assert!(
        minted("team-b").0 >= 1 && minted("team-b").1 >= 1,
        "control"
    );

    let event = eventually("a SecretConflict Event on victim/default", || {
        cluster
            .events_on("victim", "default")
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SecretConflict"))
    });
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.contains(&format!("victim/{}", secret_name())) && note.contains("left as it is"),
        "{note}"
    );
    eventually("the conflicts metric", || {
        metric(&controller.metrics(), "regauth_pull_secrets_conflicts").filter(|n| *n == 1.0)
    });
    assert!(
        metric(
            &controller.metrics(),
            "regauth_pull_secrets_failures_total{reason=\"foreign_secret\"}"
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        controller.logs().contains("pull Secret name taken"),
        "{}",
        controller.logs()
    );

    // Deselected: the controller lets go of the namespace, and nothing of theirs.
    cluster.opt_in("victim", false);
    eventually("the conflict to be forgotten", || {
        metric(&controller.metrics(), "regauth_pull_secrets_conflicts").filter(|n| *n == 0.0)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster.api.get::<Secret>("victim", &secret_name()).as_ref(),
        Some(&theirs),
        "their Secret changed on deselection"
    );
    let writes = controller_writes(&cluster, "secrets", "victim");
    assert!(
        writes.is_empty(),
        "the controller wrote their Secret: {writes:?}"
    );

    // Selected again, and the owner deletes their Secret: ours takes its
    // place within a backoff (max_backoff is 2 s here).
    cluster.opt_in("victim", true);
    eventually("the conflict to be seen again", || {
        metric(&controller.metrics(), "regauth_pull_secrets_conflicts").filter(|n| *n == 1.0)
    });
    cluster
        .kubectl(
            &owner,
            &["delete", "-n", "victim", "secret", &secret_name()],
        )
        .assert_success("kubectl delete of their Secret");
    let ours = eventually("the controller's Secret in victim", || {
        cluster
            .pull_secret("victim", "default")
            .filter(|s| s.metadata.owner_references.is_some())
    });
    assert_ne!(ours.metadata.uid, theirs.metadata.uid);
    cluster.wait_attached("victim", "default");
    eventually("the conflict to clear", || {
        metric(&controller.metrics(), "regauth_pull_secrets_conflicts").filter(|n| *n == 0.0)
    });
}

/// Nothing a namespace user may edit decides freshness: an edited expiry
/// annotation, an edited `.dockerconfigjson`, a deleted Secret, a removed
/// `imagePullSecrets` entry and a removed label are each repaired within
/// one resync, and no sample ever holds an expired credential.
#[test]
fn edits_to_a_pull_secret_are_repaired_within_one_resync_and_no_expired_credential_is_served() {
    // Credentials live 20 s and are refreshed once 8 s remain.
    let cluster = Cluster::start("20s");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    let owner = cluster.namespace_user("team-a", "team-a-owner");
    let controller = cluster.start_controller(
        "replica-a",
        &cluster.config(&selector_config(), "refresh_threshold: 8s\n"),
    );
    let host = cluster.registry_host();
    let first = cluster.wait_pull_secret("team-a", "default");
    cluster.wait_attached("team-a", "default");
    let bound = RESYNC + SLACK;
    let expires = |s: &Secret| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("regauth.io/expires-at"))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        credential_expiry(&first, &host).is_some(),
        "the credential is a JWT"
    );

    // 1. The owner says the credential lasts until 2099.
    cluster
        .kubectl(
            &owner,
            &[
                "annotate",
                "--overwrite",
                "-n",
                "team-a",
                "secret",
                &secret_name(),
                "regauth.io/expires-at=2099-01-01T00:00:00Z",
            ],
        )
        .assert_success("kubectl annotate as the namespace owner");
    assert!(
        cluster
            .pull_secret("team-a", "default")
            .is_some_and(|s| expires(&s).starts_with("2099")),
        "the edit happened"
    );
    let (_, took) = within("the annotation to be repaired", bound, || {
        cluster
            .pull_secret("team-a", "default")
            .filter(|s| !expires(s).starts_with("2099"))
    });
    println!("annotation repaired in {took:?}");
    // Sample for longer than a credential lives: never an expired one, and
    // the metric never says more time is left than the Secret holds.
    let mut samples = 0;
    let mut passwords = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < until {
        // The metric first: a refresh between the two reads can then only
        // make the Secret's credential the later one.
        let scraped = now_seconds();
        let left = metric(
            &controller.metrics(),
            "regauth_pull_secrets_soonest_expiry_seconds",
        )
        .expect("the expiry metric");
        let secret = cluster
            .pull_secret("team-a", "default")
            .expect("the Secret stays");
        let exp = credential_expiry(&secret, &host).expect("a JWT credential");
        let now = now_seconds();
        assert!(
            exp > now,
            "sample {samples} holds a credential expired at {exp} (now {now})"
        );
        // Whole seconds on both sides: one second of rounding.
        assert!(
            scraped as f64 + left <= exp as f64 + 1.0,
            "the metric says the credential expires at {}, the Secret's expires at {exp}",
            scraped as f64 + left
        );
        passwords.insert(password(&secret, &host));
        samples += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(samples >= 20, "only {samples} samples");
    assert!(
        passwords.len() >= 2,
        "the credential was refreshed meanwhile"
    );

    // 2. The owner replaces the credential.
    let forged = serde_json::json!({"auths": {&host: {"username": "x", "password": "forged", "auth": "eDpmb3JnZWQ="}}});
    cluster
        .kubectl(
            &owner,
            &[
                "patch",
                "-n",
                "team-a",
                "secret",
                &secret_name(),
                "--type=merge",
                "-p",
                &serde_json::json!({"stringData": {".dockerconfigjson": forged.to_string()}})
                    .to_string(),
            ],
        )
        .assert_success("kubectl patch of .dockerconfigjson as the namespace owner");
    let (_, took) = within("the credential to be repaired", bound, || {
        cluster
            .pull_secret("team-a", "default")
            .filter(|s| password(s, &host) != "forged")
    });
    println!(".dockerconfigjson repaired in {took:?}");

    // 3. The owner deletes the Secret.
    cluster
        .kubectl(
            &owner,
            &["delete", "-n", "team-a", "secret", &secret_name()],
        )
        .assert_success("kubectl delete secret as the namespace owner");
    let (_, took) = within("the Secret to be recreated", bound, || {
        cluster.pull_secret("team-a", "default")
    });
    println!("deleted Secret recreated in {took:?}");

    // 4. The owner removes our imagePullSecrets entry.
    cluster
        .kubectl(
            &owner,
            &[
                "patch",
                "-n",
                "team-a",
                "serviceaccount",
                "default",
                "--type=merge",
                "-p",
                r#"{"imagePullSecrets": []}"#,
            ],
        )
        .assert_success("kubectl patch of imagePullSecrets as the namespace owner");
    let (_, took) = within("the entry to be listed again", bound, || {
        cluster
            .pull_secret_names("team-a", "default")
            .contains(&secret_name())
            .then_some(())
    });
    println!("imagePullSecrets entry restored in {took:?}");

    // 5. The owner removes our label (which proves nothing, but is ours).
    let labelled = |s: &Secret| {
        s.metadata.labels.as_ref().is_some_and(|l| {
            l.get("app.kubernetes.io/managed-by").map(String::as_str) == Some(MANAGER)
        })
    };
    cluster
        .kubectl(
            &owner,
            &[
                "label",
                "-n",
                "team-a",
                "secret",
                &secret_name(),
                "app.kubernetes.io/managed-by-",
            ],
        )
        .assert_success("kubectl label … managed-by- as the namespace owner");
    assert!(
        cluster
            .pull_secret("team-a", "default")
            .is_some_and(|s| !labelled(&s)),
        "the label is gone"
    );
    let (_, took) = within("the label to be restored", bound, || {
        cluster.pull_secret("team-a", "default").filter(labelled)
    });
    println!("managed-by label restored in {took:?}");
}

/// An error far longer than an Event note allows still becomes an
/// accepted Event, cut on a character boundary to 1024 bytes.
#[test]
fn an_error_longer_than_2000_bytes_still_records_an_event() {
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    // Multi-byte characters: a limit counted in characters overshoots.
    let message = "TokenRequest refusé: ünïcödé ".repeat(100);
    assert!(message.len() > 2000);
    cluster.api.inject(Fault {
        verb: "create".into(),
        resource: "serviceaccounts".into(),
        namespace: Some("team-a".into()),
        client: None,
        status: 500,
        times: 1000,
        message: Some(message),
    });
    let _controller =
        cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    let event = eventually("a RefreshFailed Event", || {
        cluster
            .events_on("team-a", "default")
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RefreshFailed"))
    });
    let note = event.note.unwrap_or_default();
    assert!(note.len() <= 1024, "{} bytes", note.len());
    assert!(
        note.len() > 1000,
        "the note was cut near the limit: {} bytes",
        note.len()
    );
    assert!(note.starts_with("token_request: "), "{note}");
    assert!(note.ends_with('…'), "{note}");
    // The fault was hit, and no Event write was refused.
    let requests = cluster.api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.subresource == "token" && r.status == 500)
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.resource == "events" && r.status == 422),
        "an Event was refused"
    );
}

/// Every write of the controller names its field manager (the
/// ServiceAccount's patch, the Secret, the Lease, Events) and every request
/// its program and version, so a person's server-side apply of the
/// ServiceAccount meets a named owner, never `""`.
#[test]
fn every_write_names_the_controller_and_a_users_server_side_apply_meets_no_empty_manager() {
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    cluster.api.inject(Fault {
        verb: "create".into(),
        resource: "serviceaccounts".into(),
        namespace: Some("team-a".into()),
        client: None,
        status: 500,
        times: 1,
        message: None,
    });
    let _controller =
        cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    cluster.wait_attached("team-a", "default");
    eventually("an Event from the injected failure", || {
        cluster.events_on("team-a", "default").into_iter().next()
    });
    let managers = |fields: Option<
        Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>,
    >|
     -> Vec<String> {
        fields
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.manager.unwrap_or_default())
            .collect()
    };
    let sa = cluster
        .api
        .get::<ServiceAccount>("team-a", "default")
        .expect("the ServiceAccount");
    let sa_managers = managers(sa.metadata.managed_fields.clone());
    assert!(sa_managers.iter().any(|m| m == MANAGER), "{sa_managers:?}");
    assert!(!sa_managers.iter().any(String::is_empty), "{sa_managers:?}");
    let secret = cluster.wait_pull_secret("team-a", "default");
    assert_eq!(managers(secret.metadata.managed_fields), [MANAGER]);
    let lease = cluster
        .api
        .get::<k8s_openapi::api::coordination::v1::Lease>(SYSTEM_NAMESPACE, MANAGER)
        .expect("the Lease");
    assert_eq!(managers(lease.metadata.managed_fields), [MANAGER]);
    for event in cluster.events_on("team-a", "default") {
        assert_eq!(managers(event.metadata.managed_fields), [MANAGER]);
    }
    let requests: Vec<RequestRecord> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.client == "replica-a")
        .collect();
    assert!(requests.len() > 5);
    for r in &requests {
        assert!(
            r.user_agent.starts_with("regauth-pull-secrets/"),
            "{} {} {} sent User-Agent {:?}",
            r.verb,
            r.resource,
            r.name,
            r.user_agent
        );
    }

    // A person applies the ServiceAccount server-side with real kubectl.
    let dir = cluster.world.new_dir("admin");
    let admin = dir.join("kubeconfig");
    cluster.write_admin_kubeconfig(&admin);
    let manifest = dir.join("sa.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: team-a\n  labels:\n    team: a\n",
    )
    .unwrap();
    cluster
        .kubectl(
            &admin,
            &[
                "apply",
                "--server-side",
                "--validate=false",
                "-f",
                manifest.to_str().unwrap(),
            ],
        )
        .assert_success("kubectl apply --server-side of the ServiceAccount's labels");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: team-a\nimagePullSecrets:\n  - name: vendor-creds\n",
    )
    .unwrap();
    let out = cluster.kubectl(
        &admin,
        &[
            "apply",
            "--server-side",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
    assert!(
        !out.success(),
        "replacing our entry must conflict:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains(&format!("conflict with \"{MANAGER}\"")),
        "{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("conflict with \"\""),
        "{}",
        out.describe()
    );
}

/// A failure of another kind than the last gets an Event of its own that
/// names it; the first Event keeps its note. The same failure again is
/// counted on its Event, or written anew once that Event is gone.
#[test]
fn a_failure_of_a_new_kind_gets_an_event_that_names_it() {
    let mut cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    send_signal(cluster.world.server.pid(), Signal::Term);
    assert!(
        cluster
            .world
            .server
            .wait_exit(Duration::from_secs(30))
            .is_some(),
        "the token server stops"
    );
    let _controller =
        cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    let naming_the_token_server = |e: &k8s_openapi::api::events::v1::Event| {
        e.note
            .as_deref()
            .unwrap_or_default()
            .contains("token server")
    };
    let gone = eventually("an Event naming the token server", || {
        cluster
            .events_on("team-a", "default")
            .into_iter()
            .find(naming_the_token_server)
    });
    // The same failure again raises the count of that Event; once it is
    // gone (Events expire), the next one is written anew.
    eventually("the same failure counted on it", || {
        cluster
            .events_on("team-a", "default")
            .into_iter()
            .find(|e| e.metadata.name == gone.metadata.name)
            .filter(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
    });
    assert!(cluster.api.delete::<k8s_openapi::api::events::v1::Event>(
        "team-a",
        gone.metadata.name.as_deref().unwrap_or_default()
    ));
    let first = eventually("a new Event for the same failure", || {
        cluster
            .events_on("team-a", "default")
            .into_iter()
            .find(|e| naming_the_token_server(e) && e.metadata.name != gone.metadata.name)
    });
    // Now the token server answers, but writing the Secret fails.
    for verb in ["create", "apply"] {
        cluster.api.inject(Fault {
            verb: verb.into(),
            resource: "secrets".into(),
            namespace: Some("team-a".into()),
            client: None,
            status: 500,
            times: 1000,
            message: Some("etcd is having a bad day".into()),
        });
    }
    cluster.world.server.restart();
    let second = eventually("an Event naming the failed write", || {
        cluster
            .events_on("team-a", "default")
            .into_iter()
            .find(|e| {
                e.note
                    .as_deref()
                    .unwrap_or_default()
                    .contains("etcd is having a bad day")
            })
    });
    assert!(
        second
            .note
            .as_deref()
            .unwrap_or_default()
            .starts_with("api_write: "),
        "the note names the kind of failure: {second:?}"
    );
    assert_ne!(first.metadata.name, second.metadata.name);
    let kept = cluster
        .events_on("team-a", "default")
        .into_iter()
        .find(|e| e.metadata.name == first.metadata.name)
        .expect("the first Event stays");
    assert_eq!(kept.note, first.note);
}

/// Retries against a down token server reuse the ServiceAccount token
/// while more than half its life is left, instead of asking the API for a
/// new one each time.
#[test]
fn failing_retries_against_a_down_token_server_reuse_one_service_account_token() {
    let mut cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    send_signal(cluster.world.server.pid(), Signal::Term);
    assert!(
        cluster
            .world
            .server
            .wait_exit(Duration::from_secs(30))
            .is_some(),
        "the token server stops"
    );
    let controller = cluster.start_controller(
        "replica-a",
        &cluster
            .config(&selector_config(), "")
            .replace("max_backoff: 2s", "max_backoff: 1s"),
    );
    let failures = |c: &regauth_e2e::pull_secrets::Controller| {
        metric(
            &c.metrics(),
            "regauth_pull_secrets_failures_total{reason=\"token_server_unavailable\"}",
        )
        .unwrap_or_default()
    };
    within("28 failed retries", Duration::from_secs(180), || {
        (failures(&controller) >= 28.0).then_some(())
    });
    let token_requests = cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.subresource == "token" && r.namespace == "team-a")
        .count();
    assert!(
        (1..=2).contains(&token_requests),
        "{token_requests} TokenRequests for {} failed retries",
        failures(&controller)
    );
    // And the token is used: once the server is back, the Secret is written.
    cluster.world.server.restart();
    cluster.wait_pull_secret("team-a", "default");
}

/// The leader is killed without releasing its Lease: a follower takes over
/// no sooner than `lease_duration` after the leader's last renewal, and
/// within one `renew_interval` (plus the API's latency) after that.
#[test]
fn a_killed_leader_is_replaced_between_lease_duration_and_one_renew_interval_after_its_last_renewal()
 {
    const LEASE: Duration = Duration::from_secs(4);
    const RENEW: Duration = Duration::from_secs(1);
    // The API's latency on a loaded machine.
    const LATENCY: Duration = Duration::from_millis(750);
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    // Each replica gets its own config: its own operations port.
    let config = || cluster.config(&selector_config(), "");
    assert!(config().contains("lease_duration: 4s\n  renew_interval: 1s"));
    let holder = |prefix: &str| {
        cluster
            .lease_holder()
            .filter(|h| h.starts_with(&format!("{prefix}_")))
    };
    let mut leader = cluster.start_controller("replica-0", &config());
    eventually("replica-0 to lead", || holder("replica-0"));
    let mut gaps = Vec::new();
    for round in 1..=3 {
        let follower = cluster.start_controller(&format!("replica-{round}"), &config());
        // Let the follower see a few renewals.
        std::thread::sleep(Duration::from_secs(3));
        let killed = leader.name.clone();
        drop(leader);
        let successor = format!("replica-{round}");
        eventually(&format!("{successor} to lead"), || holder(&successor));
        let lease_writes: Vec<RequestRecord> = cluster
            .api
            .requests()
            .into_iter()
            .filter(|r| r.resource == "leases" && r.verb == "update" && r.status == 200)
            .collect();
        let last_renewal = lease_writes
            .iter()
            .filter(|r| r.client == killed)
            .map(|r| r.at)
            .max()
            .expect("the leader renewed");
        let takeover = lease_writes
            .iter()
            .filter(|r| r.client == successor && r.at > last_renewal)
            .map(|r| r.at)
            .min()
            .expect("the follower took the Lease");
        let gap = takeover - last_renewal;
        println!("round {round}: taken over {gap:?} after the last renewal");
        gaps.push(gap);
        assert!(
            gap >= LEASE,
            "round {round}: taken over after {gap:?}, before the lease lapsed"
        );
        assert!(
            gap <= LEASE + RENEW + LATENCY,
            "round {round}: taken over after {gap:?}, more than lease + renew"
        );
        leader = follower;
    }
    println!("hand-over after the last renewal: {gaps:?}");
}

/// A namespace owner sets `immutable: true` on the controller's Secret (a
/// metadata-level edit the API allows; afterwards its `data` cannot
/// change). It used to be patched in vain until its credential expired,
/// with a new exchange per refused patch. It is deleted (with its uid and
/// `resourceVersion` as preconditions) and created anew instead, with one
/// exchange per refresh.
#[test]
fn an_immutable_pull_secret_is_recreated_with_a_fresh_credential_not_left_to_expire() {
    // Credentials live 20 s: refreshed at half-life.
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
                &secret_name(),
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
            &secret_name(),
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
    let started = Instant::now();
    while now_seconds() < exp + 4 {
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
    let a = cluster
        .pull_secret("team-a", "default")
        .expect("team-a's Secret");
    let a_exp = credential_expiry(&a, &host).expect("a JWT credential");
    let exchanged = controller
        .logs()
        .lines()
        .filter(|l| l.contains("credential exchanged") && l.contains("\"team-a\""))
        .count();
    let refused = controller_writes(&cluster, "secrets", "team-a")
        .into_iter()
        .filter(|r| r.status == 422)
        .count();
    println!(
        "team-a after {:?}: exp {a_exp} (now {now}), {exchanged} exchanges, {refused} refused \
         writes, uid {:?} (first {:?})",
        started.elapsed(),
        a.metadata.uid,
        first.metadata.uid
    );
    assert!(
        a_exp > now,
        "team-a's pull Secret serves a credential that expired at {a_exp} (now {now})"
    );
    assert_ne!(a.metadata.uid, first.metadata.uid, "recreated");
    assert_ne!(
        a.immutable,
        Some(true),
        "the new Secret is the controller's own"
    );
    assert!(
        a.metadata.owner_references.is_some(),
        "it carries the controller reference"
    );
    assert_eq!(
        refused, 0,
        "no write was refused as a change of immutable data"
    );
    // One at the start, then one per half-life (10 s) over about 25 s.
    assert!(
        exchanged <= 4,
        "{exchanged} exchanges for team-a: one per failed write, not per refresh"
    );
    cluster.wait_attached("team-a", "default");
}

/// ServiceAccounts and `imagePullSecrets` entries the controller does not
/// manage, in namespaces it never selected:
/// - 50 ServiceAccounts `bot-N` (not configured) each listing
///   `regauth-pull-bot-N`, which used to be taken for the controller's own
///   entries and "removed": a Forbidden patch retried forever each, and a
///   Warning Event each in a namespace that never opted in;
/// - a team's `default` ServiceAccount listing `regauth-pull-default`, the
///   name of a Secret the team has not made yet, whose entry used to be
///   stripped;
/// - the same with the team's own Secret of that name (held before too).
///
/// An entry is removed only where the controller can prove it was its own
/// (it holds its Secret, or this replica wrote it): here nothing is
/// written, no Event is recorded, and every entry stays.
#[test]
fn entries_named_like_ours_that_the_controller_never_wrote_are_never_touched() {
    const BOTS: usize = 50;
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    for ns in ["plain", "later", "theirs"] {
        cluster.api.create_namespace(ns, &[]);
    }
    let plain = cluster.namespace_user("plain", "plain-owner");
    for i in 0..BOTS {
        let name = format!("bot-{i}");
        cluster.api.create_service_account("plain", &name);
        let entry = format!("{PREFIX}-{name}");
        cluster.set_pull_secret_entries(&plain, "plain", &name, &[&entry]);
    }
    let later = cluster.namespace_user("later", "later-owner");
    cluster.set_pull_secret_entries(
        &later,
        "later",
        "default",
        &["vendor-creds", &secret_name()],
    );
    let theirs_owner = cluster.namespace_user("theirs", "theirs-owner");
    let theirs = cluster.their_secret(&theirs_owner, "theirs", &secret_name());
    cluster.set_pull_secret_entries(
        &theirs_owner,
        "theirs",
        "default",
        &["vendor-creds", &secret_name()],
    );
    let _controller =
        cluster.start_controller("replica-a", &cluster.config(&selector_config(), ""));
    // Control: the controller serves the selected namespace, and has
    // reconciled every ServiceAccount it watches at least once since.
    cluster.wait_pull_secret("team-a", "default");
    cluster.wait_attached("team-a", "default");
    std::thread::sleep(RESYNC + Duration::from_secs(5));

    let requests = cluster.api.requests();
    let mut broken = Vec::new();
    for ns in ["plain", "later", "theirs"] {
        let writes: Vec<String> = requests
            .iter()
            .filter(|r| r.client == "replica-a" && r.is_write() && r.namespace == ns)
            .map(|r| format!("{} {}/{} {}", r.verb, r.resource, r.name, r.status))
            .collect();
        if !writes.is_empty() {
            broken.push(format!(
                "{} writes in {ns}, e.g. {:?}",
                writes.len(),
                &writes[..writes.len().min(3)]
            ));
        }
        let events = cluster
            .api
            .list::<k8s_openapi::api::events::v1::Event>()
            .into_iter()
            .filter(|e| e.metadata.namespace.as_deref() == Some(ns))
            .count();
        if events > 0 {
            broken.push(format!("{events} Events in {ns}"));
        }
    }
    for i in 0..BOTS {
        let name = format!("bot-{i}");
        if cluster.pull_secret_names("plain", &name) != [format!("{PREFIX}-{name}")] {
            broken.push(format!("plain/{name}'s entry was changed"));
        }
    }
    for ns in ["later", "theirs"] {
        let names = cluster.pull_secret_names(ns, "default");
        if names != ["vendor-creds".to_owned(), secret_name()] {
            broken.push(format!("{ns}/default now lists {names:?}"));
        }
    }
    assert_eq!(
        cluster.api.get::<Secret>("theirs", &secret_name()).as_ref(),
        Some(&theirs),
        "their Secret stays"
    );
    assert!(
        broken.is_empty(),
        "the controller acted where it manages nothing:\n- {}",
        broken.join("\n- ")
    );
}
