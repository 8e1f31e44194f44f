//! The pull-secret controller's manifests in `deploy/kubernetes/pull-secrets/`
//! (and the RBAC of its `namespaced/` variant), read by the same typed,
//! nothing-lost check as the server's: the Deployment runs two replicas
//! with probes on the configured port, the config comes from the ConfigMap
//! and passes `check-config`, and RBAC grants the least the controller
//! uses, with tokens and Secrets only by the names the config implies.
//! (What that RBAC allows is checked against the API stub in
//! `pull_secrets_rbac.rs`.) `check-config` refuses hostile values.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use regauth_e2e::bins::workspace_bin;
use regauth_e2e::process::run;
use serde_json::Value;

use crate::deploy_manifests::{PULL_SECRETS_DIR, documents_in, kubernetes_dir, typed};

#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    config_maps: Vec<ConfigMap>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
}

/// The documents of the cluster install (the top directory) or of the
/// namespaced variant's RBAC.
fn documents(namespaced: bool) -> Vec<crate::deploy_manifests::Doc> {
    documents_in(&kubernetes_dir().join(PULL_SECRETS_DIR))
        .into_iter()
        .filter(|d| d.origin.contains("/namespaced/") == namespaced)
        .collect()
}

fn manifests() -> Manifests {
    let m = typed_manifests(documents(false));
    for (kind, n) in [
        ("Deployment", m.deployments.len()),
        ("ConfigMap", m.config_maps.len()),
        ("ServiceAccount", m.service_accounts.len()),
        ("ClusterRole", m.cluster_roles.len()),
        ("ClusterRoleBinding", m.cluster_role_bindings.len()),
        ("Role", m.roles.len()),
        ("RoleBinding", m.role_bindings.len()),
    ] {
        assert_eq!(
            n, 1,
            "expected one {kind} in deploy/kubernetes/{PULL_SECRETS_DIR}"
        );
    }
    m
}

fn typed_manifests(docs: Vec<crate::deploy_manifests::Doc>) -> Manifests {
    let mut m = Manifests::default();
    for doc in docs {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
        let kind = doc.value["kind"].as_str().unwrap_or_default();
        match (api_version, kind) {
            ("apps/v1", "Deployment") => m.deployments.push(typed(&doc)),
            ("v1", "ConfigMap") => m.config_maps.push(typed(&doc)),
            ("v1", "ServiceAccount") => m.service_accounts.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.cluster_roles.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                m.cluster_role_bindings.push(typed(&doc));
            }
            ("rbac.authorization.k8s.io/v1", "Role") => m.roles.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => m.role_bindings.push(typed(&doc)),
            _ => panic!(
                "{}: {api_version} {kind} is not one this test knows",
                doc.origin
            ),
        }
    }
    m
}

/// The controller config (`config.yaml` of the ConfigMap) and the mount path
/// of the ConfigMap.
fn config(m: &Manifests) -> (String, Value, String) {
    let deployment = &m.deployments[0];
    let pod = deployment.spec.template.spec.as_ref().expect("a pod spec");
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let at = args.iter().position(|a| a == "--config").expect("--config");
    let path = args[at + 1].clone();
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| path.starts_with(&format!("{}/", v.mount_path)))
        .expect("--config is on a mounted volume");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mounted volume is defined");
    let cm_name = &volume.config_map.as_ref().expect("a ConfigMap volume").name;
    let cm = &m.config_maps[0];
    assert_eq!(cm.metadata.name.as_ref(), Some(cm_name));
    let key = &path[mount.mount_path.len() + 1..];
    let data = cm.data.clone().unwrap_or_default();
    let text = data
        .get(key)
        .unwrap_or_else(|| panic!("ConfigMap has no {key}"))
        .clone();
    let value: Value = serde_saphyr::from_str(&text).expect("the config is YAML");
    // Every file the config names is in the same ConfigMap.
    if let Some(ca) = value["token_server"]["ca_file"].as_str() {
        assert!(
            data.contains_key(ca),
            "token_server.ca_file {ca} is not a ConfigMap key"
        );
    }
    (text, value, mount.mount_path.clone())
}

#[test]
fn pull_secret_manifests_are_typed_and_consistent() {
    let m = manifests();
    let deployment = &m.deployments[0];
    let spec = &deployment.spec;
    assert!(
        spec.replicas.is_some_and(|r| r >= 2),
        "two or more replicas, one leads"
    );
    let pod = spec.template.spec.as_ref().expect("a pod spec");
    let sa = m.service_accounts[0].metadata.name.clone();
    assert_eq!(pod.service_account_name, sa);
    let container = &pod.containers[0];
    let (_, config, _) = config(&m);
    let port: i32 = config["listen"]
        .as_str()
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("listen has a port");
    let ports = container.ports.clone().unwrap_or_default();
    for (probe, path) in [
        (&container.readiness_probe, "/readyz"),
        (&container.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        let number = match get.port.clone() {
            IntOrString::Int(n) => n,
            IntOrString::String(name) => {
                ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .expect("a named port")
                    .container_port
            }
        };
        assert_eq!(number, port, "{path} probes the configured listen port");
    }
    let env: BTreeSet<String> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    assert!(
        env.contains("POD_NAME"),
        "the Lease holder is named after the pod"
    );
    let security = container
        .security_context
        .as_ref()
        .expect("a security context");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));

    // The bindings give the roles to the controller's ServiceAccount.
    let binding = &m.cluster_role_bindings[0];
    assert_eq!(
        binding.role_ref.name,
        m.cluster_roles[0].metadata.name.clone().unwrap()
    );
    assert!(
        binding
            .subjects
            .iter()
            .flatten()
            .any(|s| s.kind == "ServiceAccount" && Some(&s.name) == sa.as_ref())
    );
    let binding = &m.role_bindings[0];
    assert_eq!(
        binding.role_ref.name,
        m.roles[0].metadata.name.clone().unwrap()
    );
    assert!(
        binding
            .subjects
            .iter()
            .flatten()
            .any(|s| Some(&s.name) == sa.as_ref())
    );
}

/// One rule as (verbs, resourceNames), for comparing.
type Grant = (BTreeSet<String>, Option<BTreeSet<String>>);

/// Every rule for `group/resource`, as (verbs, resourceNames).
fn grants(rules: &[PolicyRule], group: &str, resource: &str) -> BTreeSet<Grant> {
    rules
        .iter()
        .filter(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
        })
        .map(|r| {
            (
                r.verbs.iter().cloned().collect(),
                r.resource_names
                    .as_ref()
                    .map(|n| n.iter().cloned().collect()),
            )
        })
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The rules the controller needs in each namespace it serves, for the
/// configured ServiceAccount names and their Secret names.
fn check_namespace_rules(rules: &[PolicyRule], service_accounts: &[&str], secrets: &[&str]) {
    for rule in rules {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "no wildcard verbs");
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "*"),
            "no wildcard resources"
        );
        // create cannot be confined by name: a rule with names must not
        // pretend to.
        if rule.resource_names.is_some()
            && !rule.resources.iter().flatten().any(|r| r.contains('/'))
        {
            assert!(!rule.verbs.iter().any(|v| v == "create"), "{rule:?}");
        }
    }
    assert_eq!(
        grants(rules, "", "serviceaccounts"),
        BTreeSet::from([
            (set(&["list", "watch"]), None),
            (set(&["get", "patch"]), Some(set(service_accounts))),
        ])
    );
    assert_eq!(
        grants(rules, "", "serviceaccounts/token"),
        BTreeSet::from([(set(&["create"]), Some(set(service_accounts)))]),
        "tokens only for the configured ServiceAccounts"
    );
    assert_eq!(
        grants(rules, "", "secrets"),
        BTreeSet::from([
            (
                set(&["list", "watch", "patch", "delete"]),
                Some(set(secrets))
            ),
            (set(&["create"]), None),
        ]),
        "Secrets only by their names (create cannot be confined)"
    );
    assert_eq!(
        grants(rules, "events.k8s.io", "events"),
        BTreeSet::from([(set(&["create", "patch"]), None)])
    );
}

/// The lease Role: its one Lease by name, and create.
fn check_lease_role(roles: &[Role], lease: &str) {
    assert_eq!(roles.len(), 1);
    let rules = roles[0].rules.clone().unwrap_or_default();
    assert_eq!(
        grants(&rules, "coordination.k8s.io", "leases"),
        BTreeSet::from([
            (set(&["get", "update"]), Some(set(&[lease]))),
            (set(&["create"]), None),
        ])
    );
}

/// The configured ServiceAccount names and the Secret names they imply.
fn configured_names(config: &Value) -> (Vec<String>, Vec<String>) {
    let service_accounts: Vec<String> = config["service_accounts"]
        .as_array()
        .expect("service_accounts is listed")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let prefix = config["secret_name"].as_str().unwrap_or("regauth-pull");
    let secrets = service_accounts
        .iter()
        .map(|sa| format!("{prefix}-{sa}"))
        .collect();
    (service_accounts, secrets)
}

#[test]
fn rbac_grants_the_least_the_controller_uses() {
    let m = manifests();
    let (_, config, _) = config(&m);
    let (service_accounts, secrets) = configured_names(&config);
    let sa_names: Vec<&str> = service_accounts.iter().map(String::as_str).collect();
    let secret_names: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let rules = m.cluster_roles[0].rules.clone().unwrap_or_default();
    check_namespace_rules(&rules, &sa_names, &secret_names);
    assert_eq!(
        grants(&rules, "", "namespaces"),
        BTreeSet::from([(set(&["list", "watch"]), None)])
    );
    let lease = config["leader_election"]["lease_name"]
        .as_str()
        .expect("lease_name");
    check_lease_role(&m.roles, lease);
}

#[test]
fn the_namespaced_variant_grants_the_same_per_namespace_and_nothing_cluster_wide() {
    let cluster_install = manifests();
    let (_, config, _) = config(&cluster_install);
    let (service_accounts, secrets) = configured_names(&config);
    let sa_names: Vec<&str> = service_accounts.iter().map(String::as_str).collect();
    let secret_names: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let m = typed_manifests(documents(true));
    assert!(
        m.cluster_role_bindings.is_empty(),
        "nothing is bound cluster-wide"
    );
    assert!(m.deployments.is_empty() && m.config_maps.is_empty());
    assert_eq!(m.cluster_roles.len(), 1);
    let rules = m.cluster_roles[0].rules.clone().unwrap_or_default();
    check_namespace_rules(&rules, &sa_names, &secret_names);
    assert!(
        grants(&rules, "", "namespaces").is_empty(),
        "no namespace reads"
    );
    let lease = config["leader_election"]["lease_name"]
        .as_str()
        .expect("lease_name");
    check_lease_role(&m.roles, lease);
    // The lease binding and one team binding of the namespaced ClusterRole.
    let sa = cluster_install.service_accounts[0].metadata.name.clone();
    let team: Vec<&RoleBinding> = m
        .role_bindings
        .iter()
        .filter(|b| b.role_ref.kind == "ClusterRole")
        .collect();
    assert_eq!(team.len(), 1);
    assert_eq!(
        Some(&team[0].role_ref.name),
        m.cluster_roles[0].metadata.name.as_ref()
    );
    assert!(
        team[0].metadata.namespace.is_some(),
        "the example names its namespace"
    );
    for binding in &m.role_bindings {
        assert!(
            binding
                .subjects
                .iter()
                .flatten()
                .any(|s| s.kind == "ServiceAccount" && Some(&s.name) == sa.as_ref())
        );
    }
}

#[test]
fn configmap_config_passes_check_config() {
    let m = manifests();
    let (text, _, _) = config(&m);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    let mut cmd = Command::new(workspace_bin("regauth-pull-secrets"));
    cmd.args(["check-config", "--config"]).arg(&path);
    let out = run(cmd, Duration::from_secs(60));
    out.assert_success("regauth-pull-secrets check-config on the ConfigMap's config.yaml");
    assert!(out.stdout.contains(": ok"), "{}", out.describe());

    // And check-config does fail, naming the line, on a broken one.
    std::fs::write(&path, "token_server:\n  url: ftp://x\nregistries: []\n").expect("write config");
    let mut cmd = Command::new(workspace_bin("regauth-pull-secrets"));
    cmd.args(["check-config", "--config"]).arg(&path);
    let out = run(cmd, Duration::from_secs(60));
    assert!(!out.success());
    assert!(
        out.stderr.contains("line 2: token_server.url"),
        "{}",
        out.describe()
    );
}

/// `check-config` refuses durations and names that would overflow the
/// controller's arithmetic or reach an API path, naming each with its line.
#[test]
fn check_config_refuses_hostile_durations_and_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    let check = |text: &str| {
        std::fs::write(&path, text).expect("write config");
        let mut cmd = Command::new(workspace_bin("regauth-pull-secrets"));
        cmd.args(["check-config", "--config"]).arg(&path);
        run(cmd, Duration::from_secs(60))
    };
    let base = "token_server:\n  url: https://auth.example.com\nregistries:\n  - hosts: [registry.example.com]\n    service: registry.example.com\n";
    // Control: the base config passes.
    let out = check(base);
    out.assert_success("check-config on a good config");
    for (extra, line, key) in [
        (
            "leader_election:\n  lease_duration: 500000000000y\n",
            7,
            "leader_election.lease_duration",
        ),
        (
            "leader_election:\n  lease_duration: 2h\n",
            7,
            "leader_election.lease_duration",
        ),
        ("resync_interval: 100ms\n", 6, "resync_interval"),
        (
            "leader_election:\n  renew_interval: 500000000000y\n",
            7,
            "leader_election.renew_interval",
        ),
        (
            "leader_election:\n  lease_name: ../../../../api/v1/namespaces/kube-system/secrets\n",
            7,
            "leader_election.lease_name",
        ),
        (
            "leader_election:\n  namespace: \"kube-system/x\"\n",
            7,
            "leader_election.namespace",
        ),
        ("service_accounts: [\"../admin\"]\n", 6, "service_accounts"),
        (
            "namespaces:\n  names: [\"team a\"]\n",
            7,
            "namespaces.names",
        ),
    ] {
        let out = check(&format!("{base}{extra}"));
        assert!(
            !out.success(),
            "{extra:?} passed check-config:\n{}",
            out.describe()
        );
        assert!(
            out.stderr.contains(&format!("line {line}: {key}")),
            "{extra:?}: {}",
            out.describe()
        );
    }
}
