//! The pull-secret controller's Lease against what its record can be made
//! to say: a `lease_duration` that is not whole seconds (the record holds
//! whole seconds), and a record written with the controller's own stolen
//! credentials claiming a holder that never renews for 68 years. Only one
//! replica may write at a time, and no record may stop the replicas for
//! longer than their own `lease_duration`.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use regauth_e2e::kube_api::{Fault, RequestRecord};
use regauth_e2e::pull_secrets::{
    Cluster, OPT_IN, PREFIX, SYSTEM_NAMESPACE, eventually, metric, now_seconds, selector_config,
};

/// The Lease's name (the default `lease_name`).
const LEASE: &str = "regauth-pull-secrets";

/// The Lease's `leaseDurationSeconds` as stored.
fn recorded_duration(cluster: &Cluster) -> Option<i32> {
    cluster
        .api
        .get::<Lease>(SYSTEM_NAMESPACE, LEASE)
        .and_then(|l| l.spec)
        .and_then(|s| s.lease_duration_seconds)
}

/// The Lease's holder, if it starts with `prefix_` (replicas are named
/// `POD_NAME_suffix`).
fn held_by(cluster: &Cluster, prefix: &str) -> Option<String> {
    cluster
        .lease_holder()
        .filter(|h| h.starts_with(&format!("{prefix}_")))
}

/// With `lease_duration: 2999ms` the record holds whole seconds; followers
/// used to judge by it (2 s) and took over while the leader still wrote
/// until 2.999 s. The leader's renewals fail from some point on (500, for
/// its requests only) while Secrets are deleted one after another, so
/// whoever leads must write: the old leader writes nothing after the
/// follower took over.
#[test]
fn a_lease_duration_of_fractional_seconds_never_lets_two_replicas_write_at_once() {
    const SPREAD: usize = 40;
    let cluster = Cluster::start("1h");
    let namespaces: Vec<String> = (0..SPREAD).map(|i| format!("team-{i:02}")).collect();
    for ns in &namespaces {
        cluster.api.create_namespace(ns, &[(OPT_IN, "enabled")]);
    }
    let config = || {
        cluster
            .config(&selector_config(), "")
            .replace("lease_duration: 4s", "lease_duration: 2999ms")
    };
    assert!(config().contains("lease_duration: 2999ms\n  renew_interval: 1s"));
    let leader = cluster.start_controller("replica-a", &config());
    eventually("replica-a to lead", || held_by(&cluster, "replica-a"));
    for ns in &namespaces {
        cluster.wait_pull_secret(ns, "default");
    }
    let follower = cluster.start_controller("replica-b", &config());
    // Past the controller's 10 s watch-lag grace for its own writes, so a
    // deleted Secret is recreated at once; and the follower sees renewals.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        held_by(&cluster, "replica-a").is_some(),
        "control: replica-a still leads"
    );
    // From now on every renewal of replica-a fails.
    cluster.api.inject(Fault {
        verb: "update".into(),
        resource: "leases".into(),
        namespace: Some(SYSTEM_NAMESPACE.into()),
        client: Some("replica-a".into()),
        status: 500,
        times: 1000,
        message: Some("etcd leader changed".into()),
    });
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
    while held_by(&cluster, "replica-b").is_none() || start.elapsed() < Duration::from_secs(4) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replica-b never took over"
        );
        if let Some(ns) = next.next() {
            cluster
                .api
                .delete::<Secret>(ns, &format!("{PREFIX}-default"));
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    std::thread::sleep(Duration::from_secs(2));
    let requests = cluster.api.requests();
    let renewals = |client: &str| -> Vec<Instant> {
        requests
            .iter()
            .filter(|r| {
                r.client == client
                    && r.resource == "leases"
                    && r.verb == "update"
                    && r.status == 200
            })
            .map(|r| r.at)
            .collect()
    };
    let takeover = renewals("replica-b")
        .into_iter()
        .min()
        .expect("replica-b took the Lease");
    let last_renewal = renewals("replica-a")
        .into_iter()
        .filter(|t| *t < takeover)
        .max()
        .expect("replica-a renewed before");
    let first_failure = requests
        .iter()
        .filter(|r| r.client == "replica-a" && r.resource == "leases" && r.status == 500)
        .map(|r| r.at)
        .min()
        .expect("replica-a's renewal failed");
    let secret_writes = |client: &str| -> Vec<&RequestRecord> {
        requests
            .iter()
            .filter(|r| r.client == client && r.is_write() && r.resource == "secrets")
            .collect()
    };
    // Control: replica-a kept writing while its renewals failed, so a
    // write after the takeover would have been seen.
    let busy = secret_writes("replica-a")
        .iter()
        .filter(|r| r.at > first_failure && r.at < takeover)
        .count();
    assert!(
        busy >= 1,
        "control: replica-a wrote nothing while its renewals failed"
    );
    let late: Vec<String> = secret_writes("replica-a")
        .iter()
        .filter(|r| r.at >= takeover)
        .map(|r| {
            format!(
                "{} {}/{} {} +{:?}",
                r.verb,
                r.namespace,
                r.name,
                r.status,
                r.at - takeover
            )
        })
        .collect();
    let gap = takeover - last_renewal;
    println!(
        "taken over {gap:?} after the last renewal; replica-a wrote {busy} Secrets while failing \
         to renew, {} after the takeover; replica-b wrote {}",
        late.len(),
        secret_writes("replica-b").len()
    );
    assert!(
        gap >= Duration::from_millis(2999),
        "taken over {gap:?} after the last renewal, before the lease lapsed"
    );
    assert!(
        late.is_empty(),
        "replica-a still wrote after replica-b took over: {late:?}"
    );
    assert_eq!(
        recorded_duration(&cluster),
        Some(3),
        "the record rounds 2.999 s up, for anyone who judges by it"
    );
    drop((leader, follower));
}

/// Replaces the Lease, with real kubectl and `kubeconfig`, by one held by
/// `attacker` for `seconds`, renewed now: unconditionally (no
/// `resourceVersion`, which the API allows for Leases), so the leader's
/// renewals cannot make it a conflict.
fn hijack(cluster: &Cluster, kubeconfig: &Path, seconds: i64) {
    let got = cluster.kubectl(
        kubeconfig,
        &["get", "lease", "-n", SYSTEM_NAMESPACE, LEASE, "-o", "json"],
    );
    got.assert_success("kubectl get lease with the controller's credentials");
    let mut lease: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
    if let Some(meta) = lease["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    lease["spec"]["holderIdentity"] = "attacker".into();
    lease["spec"]["leaseDurationSeconds"] = seconds.into();
    lease["spec"]["renewTime"] = k8s_openapi::jiff::Timestamp::from_second(now_seconds() as i64)
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
    assert_eq!(
        cluster.lease_holder().as_deref(),
        Some("attacker"),
        "the hijack happened"
    );
}

/// One write of the Lease with the controller's own (stolen) credentials,
/// claiming a holder for `i32::MAX` seconds, used to stop every replica,
/// fresh ones included, for 68 years. Replicas judge a record's expiry by
/// their own `lease_duration` (4 s here): the running leader and a fresh
/// replica each take the Lease back within that plus a renewal.
#[test]
fn a_lease_record_written_with_stolen_credentials_holds_the_replicas_off_for_one_lease_duration_at_most()
 {
    // lease_duration 4 s and renew_interval 1 s, plus a loaded machine.
    const BOUND: Duration = Duration::from_secs(15);
    let cluster = Cluster::start("1h");
    cluster
        .api
        .create_namespace("team-a", &[(OPT_IN, "enabled")]);
    let config = || cluster.config(&selector_config(), "");
    assert!(config().contains("lease_duration: 4s\n  renew_interval: 1s"));
    let a = cluster.start_controller("replica-a", &config());
    eventually("replica-a to lead", || held_by(&cluster, "replica-a"));
    let stolen = a.kubeconfig.clone();
    let taken_back = |who: &str| {
        let start = Instant::now();
        loop {
            if let Some(holder) = held_by(&cluster, who) {
                return (holder, start.elapsed());
            }
            assert!(
                start.elapsed() < BOUND,
                "after {BOUND:?} the Lease is still held by {:?}, whose record says {:?} s",
                cluster.lease_holder(),
                recorded_duration(&cluster)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Control: a record of 4 s is taken back.
    hijack(&cluster, &stolen, 4);
    let (_, took) = taken_back("replica-a");
    println!("control: a 4 s record taken back after {took:?}");

    // The running leader.
    hijack(&cluster, &stolen, i64::from(i32::MAX));
    let (_, took) = taken_back("replica-a");
    println!("a 68-year record taken back by the running replica after {took:?}");

    // A fresh replica, with no earlier sight of the Lease.
    drop(a);
    hijack(&cluster, &stolen, i64::from(i32::MAX));
    let b = cluster.start_controller("replica-b", &config());
    let (_, took) = taken_back("replica-b");
    println!("a 68-year record taken back by a fresh replica after {took:?}");
    eventually("replica-b to say it leads", || {
        metric(&b.metrics(), "regauth_pull_secrets_leader").filter(|n| *n == 1.0)
    });
}
