//! The deployment artifacts in `deploy/`.
//!
//! - Every Kubernetes manifest parses into its k8s-openapi type, and nothing
//!   in it is lost on the way: k8s-openapi ignores unknown fields, so each
//!   document is read, written back, and compared with what was written. A
//!   key that does not survive is a field Kubernetes does not know, usually a
//!   typo that `kubectl apply` would reject or silently drop.
//! - The Deployment is production-shaped (replicas, probes, shutdown timing,
//!   security, spreading), its Service, PodDisruptionBudget, ServiceAccount,
//!   Secret and ConfigMap fit together, and every file the server config
//!   names is mounted from the object that should hold it.
//! - The server config in the ConfigMap passes `check-config` once real keys
//!   sit at the paths it names.
//! - The systemd unit carries the keys operations rely on, and passes
//!   `systemd-analyze verify` where that tool exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, Secret, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use regauth_e2e::bins::{token_server_bin, workspace_root};
use regauth_e2e::pki::Ca;
use regauth_e2e::process::run;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The server's default `limits.drain_timeout`, in seconds.
const DEFAULT_DRAIN_SECONDS: u64 = 30;
/// Where the pod's service-account volume is mounted when it is automounted.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The files the service-account volume holds.
const SERVICE_ACCOUNT_FILES: [&str; 3] = ["ca.crt", "namespace", "token"];
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Reading the manifests
// ---------------------------------------------------------------------------

/// One YAML document of one manifest file.
pub(crate) struct Doc {
    /// `file#N`, for messages.
    pub(crate) origin: String,
    pub(crate) value: Value,
}

pub(crate) fn kubernetes_dir() -> PathBuf {
    workspace_root().join("deploy").join("kubernetes")
}

/// The pull-secret controller's manifests, checked by `pull_secrets_deploy.rs`.
pub(crate) const PULL_SECRETS_DIR: &str = "pull-secrets";

/// The optional fleet additions (Redis, autoscaler), checked on their own.
const FLEET_DIR: &str = "fleet";

/// The Sentinel example under the fleet additions, checked on its own.
const SENTINEL_DIR: &str = "sentinel";

/// Every `.yaml`/`.yml` file under `dir`, recursively, sorted; the
/// controller's own directory is left to its own test.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path
            .file_name()
            .is_some_and(|n| n == PULL_SECRETS_DIR || n == FLEET_DIR || n == SENTINEL_DIR)
        {
            continue;
        }
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every document of every manifest file.
fn documents() -> Vec<Doc> {
    documents_in(&kubernetes_dir())
}

/// Every document of every manifest file under `dir`.
pub(crate) fn documents_in(dir: &Path) -> Vec<Doc> {
    let root = workspace_root();
    let mut docs = Vec::new();
    for file in yaml_files(dir) {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"));
        for (i, value) in values.into_iter().enumerate() {
            docs.push(Doc {
                origin: format!("{name}#{}", i + 1),
                value,
            });
        }
    }
    assert!(!docs.is_empty(), "no manifests under {}", dir.display());
    docs
}

/// Where a document and its read-back form disagree: keys of the original
/// that the typed object lost (unknown fields), list lengths, and scalar
/// values. Legitimate differences are not reported: an explicit `null` is
/// the same as an absent key, a number and a string with the same text are
/// the same (YAML writes `port: 5001`, an int-or-string may read it either
/// way), and keys the typed object adds (`apiVersion`, `kind`) are fine.
fn round_trip_differences(original: &Value, read_back: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare(original, read_back, "", &mut out);
    out
}

fn compare(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                match b.get(key) {
                    Some(b_value) => compare(value, b_value, &child(key), out),
                    None if value.is_null() => {}
                    None => out.push(format!("unknown field `{}`", child(key))),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            if o.len() != b.len() {
                out.push(format!(
                    "`{path}`: {} items read back as {}",
                    o.len(),
                    b.len()
                ));
            }
            for (i, (o_item, b_item)) in o.iter().zip(b).enumerate() {
                compare(o_item, b_item, &format!("{path}[{i}]"), out);
            }
        }
        (o, b) => match (scalar_text(o), scalar_text(b)) {
            (Some(x), Some(y)) if x == y => {}
            _ => out.push(format!("`{path}`: {o} reads back as {b}")),
        },
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads `doc` as a `T`, failing on anything k8s-openapi does not keep.
pub(crate) fn typed<T>(doc: &Doc) -> T
where
    T: k8s_openapi::Resource + DeserializeOwned + Serialize,
{
    let object: T = serde_json::from_value(doc.value.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: not a valid {} {}: {e}",
            doc.origin,
            T::API_VERSION,
            T::KIND
        )
    });
    let back = serde_json::to_value(&object).expect("serialize a k8s-openapi object");
    let differences = round_trip_differences(&doc.value, &back);
    assert!(
        differences.is_empty(),
        "{}: {} {} does not survive a round trip through k8s-openapi:\n  {}",
        doc.origin,
        T::API_VERSION,
        T::KIND,
        differences.join("\n  ")
    );
    object
}

/// All the manifests, typed.
#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    service_accounts: Vec<ServiceAccount>,
    budgets: Vec<PodDisruptionBudget>,
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for doc in documents() {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
        let kind = doc.value["kind"].as_str().unwrap_or_default();
        match (api_version, kind) {
            ("apps/v1", "Deployment") => m.deployments.push(typed(&doc)),
            ("v1", "Service") => m.services.push(typed(&doc)),
            ("v1", "ConfigMap") => m.config_maps.push(typed(&doc)),
            ("v1", "Secret") => m.secrets.push(typed(&doc)),
            ("v1", "ServiceAccount") => m.service_accounts.push(typed(&doc)),
            ("policy/v1", "PodDisruptionBudget") => m.budgets.push(typed(&doc)),
            _ => panic!(
                "{}: apiVersion {api_version:?} kind {kind:?} is not one this test knows; \
                 teach deploy_manifests.rs to check it",
                doc.origin
            ),
        }
    }
    m
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("<unnamed>")
}

// ---------------------------------------------------------------------------
// The deployment and what it refers to
// ---------------------------------------------------------------------------

impl Manifests {
    /// The one Deployment.
    fn deployment(&self) -> &Deployment {
        assert_eq!(self.deployments.len(), 1, "expected exactly one Deployment");
        &self.deployments[0]
    }

    fn pod_spec(&self) -> &PodSpec {
        self.deployment()
            .spec
            .template
            .spec
            .as_ref()
            .expect("the Deployment has a pod template spec")
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.deployment()
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("the pod template has labels")
    }

    /// The container that runs the token server (the one with `--config`).
    fn server_container(&self) -> &Container {
        let spec = self.pod_spec();
        let mut found = spec
            .containers
            .iter()
            .filter(|c| c.args.iter().flatten().any(|a| a == "--config"));
        let container = found
            .next()
            .expect("a container runs the server with --config");
        assert!(found.next().is_none(), "only one container runs the server");
        container
    }

    /// The `--config` argument of the server container.
    fn config_path(&self) -> String {
        let args = self.server_container().args.clone().unwrap_or_default();
        assert_eq!(
            args.first().map(String::as_str),
            Some("serve"),
            "the container runs `serve`: {args:?}"
        );
        let i = args
            .iter()
            .position(|a| a == "--config")
            .expect("--config is given");
        args.get(i + 1).expect("--config has a value").clone()
    }

    fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
    }

    /// The server config's text: the ConfigMap key that `--config` points at.
    fn server_config_text(&self) -> String {
        let path = self.config_path();
        match self.resolve(&path) {
            Source::ConfigMap { name, key } => self
                .config_map(&name)
                .and_then(|c| c.data.as_ref())
                .and_then(|d| d.get(&key))
                .cloned()
                .unwrap_or_else(|| panic!("ConfigMap {name} has no text key {key}")),
            other => panic!("--config {path} comes from {other:?}, not from a ConfigMap"),
        }
    }

    fn server_config(&self) -> Value {
        let text = self.server_config_text();
        serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("the ConfigMap's server config is not valid YAML: {e}"))
    }

    /// Where the file at the absolute in-container `path` comes from.
    fn resolve(&self, path: &str) -> Source {
        let container = self.server_container();
        let spec = self.pod_spec();
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| path.starts_with(&format!("{}/", m.mount_path.trim_end_matches('/'))))
            .max_by_key(|m| m.mount_path.len());
        let Some(mount) = mount else {
            let in_sa_dir = Path::new(path).parent() == Some(Path::new(SERVICE_ACCOUNT_DIR));
            let file = Path::new(path).file_name().and_then(|f| f.to_str());
            if in_sa_dir && file.is_some_and(|f| SERVICE_ACCOUNT_FILES.contains(&f)) {
                assert_ne!(
                    spec.automount_service_account_token,
                    Some(false),
                    "{path} needs the service-account volume, but the pod turns automounting off"
                );
                return Source::ServiceAccount;
            }
            return Source::Unmounted;
        };
        assert!(
            mount.sub_path.is_none() && mount.sub_path_expr.is_none(),
            "mount {} uses subPath, so its files never update in a running pod",
            mount.name
        );
        assert_eq!(
            mount.read_only,
            Some(true),
            "mount {} should be read-only",
            mount.name
        );
        let relative = &path[mount.mount_path.trim_end_matches('/').len() + 1..];
        let volume: &Volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volume {} is mounted but not defined", mount.name));
        let key_for = |items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>| match items {
            Some(items) => items
                .iter()
                .find(|i| i.path == relative)
                .map(|i| i.key.clone())
                .unwrap_or_else(|| panic!("volume {} projects no item at {relative}", volume.name)),
            None => relative.to_owned(),
        };
        if let Some(cm) = &volume.config_map {
            return Source::ConfigMap {
                name: cm.name.clone(),
                key: key_for(&cm.items),
            };
        }
        if let Some(secret) = &volume.secret {
            return Source::Secret {
                name: secret
                    .secret_name
                    .clone()
                    .expect("the secret volume names its Secret"),
                key: key_for(&secret.items),
            };
        }
        panic!(
            "{path} is on volume {}, which is neither a ConfigMap nor a Secret",
            volume.name
        );
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Source {
    ConfigMap { name: String, key: String },
    Secret { name: String, key: String },
    ServiceAccount,
    Unmounted,
}

/// Every file the server config names, as (config key, path).
fn config_files(config: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |key: String, v: &Value| {
        if let Some(p) = v.as_str() {
            out.push((key, p.to_owned()));
        }
    };
    for (i, k) in config["signing_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        add(format!("signing_keys[{i}].key"), &k["key"]);
        add(format!("signing_keys[{i}].cert"), &k["cert"]);
    }
    add("refresh_secret_file".into(), &config["refresh_secret_file"]);
    for field in ["cert", "key", "client_ca"] {
        add(format!("tls.{field}"), &config["tls"][field]);
    }
    for (i, f) in config["htpasswd_files"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        add(format!("htpasswd_files[{i}]"), f);
    }
    for (i, issuer) in config["issuers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        add(format!("issuers[{i}].ca_file"), &issuer["ca_file"]);
        add(format!("issuers[{i}].jwks_file"), &issuer["jwks_file"]);
    }
    out
}

/// Resolves a config path the way the server does: relative to the config
/// file's directory.
fn absolute(config_path: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        let dir = Path::new(config_path)
            .parent()
            .expect("config has a directory");
        dir.join(path).display().to_string()
    }
}

/// Seconds of a humantime duration made of `h`, `m` and `s` parts (`1m30s`).
fn seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"));
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => panic!("bad duration {text:?}: use h, m and s"),
        };
    }
    if !number.is_empty() {
        // systemd reads a bare number as seconds.
        total += number.parse::<u64>().expect("digits");
    }
    total
}

fn drain_seconds(config: &Value) -> u64 {
    config["limits"]["drain_timeout"]
        .as_str()
        .map_or(DEFAULT_DRAIN_SECONDS, seconds)
}

fn listen_port(config: &Value) -> i32 {
    let listen = config["listen"].as_str().expect("the config sets listen");
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("listen {listen:?} has no port"))
}

fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    assert!(
        selector.match_expressions.is_none(),
        "this test only understands matchLabels selectors"
    );
    let wanted = selector.match_labels.clone().unwrap_or_default();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container port a probe or Service names, by number or by name.
fn port_number(container: &Container, port: &IntOrString) -> Option<i32> {
    let ports = container.ports.as_deref().unwrap_or_default();
    match port {
        IntOrString::Int(n) => ports.iter().any(|p| p.container_port == *n).then_some(*n),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port),
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn kubernetes_manifests_have_no_unknown_fields() {
    let m = manifests();
    let counts = [
        ("Deployment", m.deployments.len()),
        ("Service", m.services.len()),
        ("ConfigMap", m.config_maps.len()),
        ("Secret", m.secrets.len()),
        ("ServiceAccount", m.service_accounts.len()),
        ("PodDisruptionBudget", m.budgets.len()),
    ];
    for (kind, n) in counts {
        assert_eq!(
            n, 1,
            "expected exactly one {kind} in deploy/kubernetes, found {n}"
        );
    }
}

#[test]
fn the_unknown_field_check_names_a_misspelled_field() {
    // The check itself must catch what k8s-openapi silently drops.
    let doc = documents()
        .into_iter()
        .find(|d| d.value["kind"] == "Deployment")
        .expect("a Deployment document");
    let mut value = doc.value.clone();
    value["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        .as_object_mut()
        .expect("the first container has an httpGet readiness probe")
        .insert("pathh".into(), Value::from("/readyz"));
    value["spec"]["replica"] = Value::from(3);
    let object: Deployment = serde_json::from_value(value.clone()).expect("still deserializes");
    let back = serde_json::to_value(&object).unwrap();
    let differences = round_trip_differences(&value, &back);
    assert_eq!(
        differences,
        [
            "unknown field `spec.replica`",
            "unknown field `spec.template.spec.containers[0].readinessProbe.httpGet.pathh`",
        ],
    );
    // And the real document has none.
    let back = serde_json::to_value(typed::<Deployment>(&doc)).unwrap();
    assert!(round_trip_differences(&doc.value, &back).is_empty());
}

#[test]
fn deployment_is_production_shaped() {
    let m = manifests();
    let deployment = m.deployment();
    let name = name_of(&deployment.metadata);
    let spec = &deployment.spec;
    let pod = m.pod_spec();
    let labels = m.pod_labels();
    let container = m.server_container();
    let config = m.server_config();

    let replicas = spec.replicas.unwrap_or(1);
    assert!(
        replicas >= 2,
        "{name}: replicas is {replicas}; run at least 2"
    );
    assert!(
        selects(Some(&spec.selector), &labels),
        "{name}: the selector does not match the pod template's labels"
    );

    // Probes: /readyz and /healthz on the port the server listens on, over
    // HTTPS when the config serves TLS.
    let port = listen_port(&config);
    let scheme = if config["tls"].is_object() {
        "HTTPS"
    } else {
        "HTTP"
    };
    for (probe, wanted_path) in [
        (&container.readiness_probe, "/readyz"),
        (&container.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{name}: no httpGet probe for {wanted_path}"));
        assert_eq!(get.path.as_deref(), Some(wanted_path), "{name}: probe path");
        assert_eq!(
            port_number(container, &get.port),
            Some(port),
            "{name}: the {wanted_path} probe's port {:?} is not the container port {port}",
            get.port
        );
        assert_eq!(
            get.scheme.as_deref().unwrap_or("HTTP"),
            scheme,
            "{name}: the {wanted_path} probe's scheme"
        );
    }

    // Shutdown: the grace period covers the preStop pause plus the drain.
    let pre_stop = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| u64::try_from(s.seconds).expect("non-negative sleep"));
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    let drain = drain_seconds(&config);
    assert!(
        u64::try_from(grace).unwrap_or(0) > pre_stop + drain,
        "{name}: terminationGracePeriodSeconds {grace} must exceed the preStop pause \
         ({pre_stop}s) plus limits.drain_timeout ({drain}s)"
    );

    // Security: non-root, read-only root, no privilege escalation, no capabilities.
    let pod_security = pod.security_context.as_ref();
    let sc = container
        .security_context
        .as_ref()
        .expect("the container has a securityContext");
    let non_root = sc
        .run_as_non_root
        .or_else(|| pod_security.and_then(|p| p.run_as_non_root));
    assert_eq!(non_root, Some(true), "{name}: runAsNonRoot");
    let user = sc
        .run_as_user
        .or_else(|| pod_security.and_then(|p| p.run_as_user));
    assert_ne!(user, Some(0), "{name}: runAsUser 0 is root");
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{name}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{name}: allowPrivilegeEscalation"
    );
    assert!(
        sc.capabilities
            .as_ref()
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c == "ALL")),
        "{name}: drop ALL capabilities"
    );
    assert!(
        sc.capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .is_none_or(Vec::is_empty),
        "{name}: adds capabilities"
    );

    // Resources: requests for scheduling, a memory limit.
    let resources = container.resources.as_ref().expect("resources are set");
    let requests = resources.requests.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    for key in ["cpu", "memory"] {
        assert!(requests.contains_key(key), "{name}: no {key} request");
    }
    assert!(limits.contains_key("memory"), "{name}: no memory limit");

    // Replicas land on different nodes.
    let spread = pod.topology_spread_constraints.iter().flatten().any(|t| {
        t.topology_key == "kubernetes.io/hostname"
            && t.when_unsatisfiable == "DoNotSchedule"
            && selects(t.label_selector.as_ref(), &labels)
    });
    let anti_affinity = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .is_some_and(|a| {
            a.required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .any(|t| {
                    t.topology_key == "kubernetes.io/hostname"
                        && selects(t.label_selector.as_ref(), &labels)
                })
        });
    assert!(
        spread || anti_affinity,
        "{name}: replicas are not kept on different nodes (topologySpreadConstraints or podAntiAffinity on kubernetes.io/hostname)"
    );

    // The service account exists.
    let account = pod
        .service_account_name
        .as_deref()
        .expect("the pod names its service account");
    assert!(
        m.service_accounts
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(account)),
        "ServiceAccount {account} is not in the manifests"
    );

    // The Service: ClusterIP, 443 to the server's port, selecting these pods.
    for service in &m.services {
        let sname = name_of(&service.metadata);
        let sspec = service.spec.as_ref().expect("the Service has a spec");
        assert_eq!(sspec.type_.as_deref().unwrap_or("ClusterIP"), "ClusterIP");
        let selector = sspec.selector.clone().unwrap_or_default();
        assert!(
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "Service {sname} does not select the Deployment's pods"
        );
        let ports = sspec.ports.as_deref().unwrap_or_default();
        let https = ports
            .iter()
            .find(|p| p.port == 443)
            .unwrap_or_else(|| panic!("Service {sname} has no port 443"));
        let target = https
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(https.port));
        assert_eq!(
            port_number(container, &target),
            Some(port),
            "Service {sname}: port 443 targets {target:?}, not the server's port {port}"
        );
    }

    // The PodDisruptionBudget keeps one replica up.
    for budget in &m.budgets {
        let bname = name_of(&budget.metadata);
        let bspec = budget
            .spec
            .as_ref()
            .expect("the PodDisruptionBudget has a spec");
        assert_eq!(
            bspec.min_available,
            Some(IntOrString::Int(1)),
            "PDB {bname}: minAvailable"
        );
        assert!(
            selects(bspec.selector.as_ref(), &labels),
            "PDB {bname} does not select the Deployment's pods"
        );
        assert!(
            replicas > 1,
            "PDB {bname}: with minAvailable 1, one replica would block every drain"
        );
    }
}

#[test]
fn volumes_hold_every_file_the_config_names() {
    let m = manifests();
    let pod = m.pod_spec();
    // Every volume refers to an object in the manifests.
    for volume in pod.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            assert!(
                m.config_map(&cm.name).is_some(),
                "volume {} mounts ConfigMap {}, which is not in the manifests",
                volume.name,
                cm.name
            );
        }
        if let Some(s) = &volume.secret {
            let secret_name = s.secret_name.as_deref().expect("secretName is set");
            let secret = m.secret(secret_name).unwrap_or_else(|| {
                panic!(
                    "volume {} mounts Secret {secret_name}, which is not in the manifests",
                    volume.name
                )
            });
            assert_eq!(
                secret.type_.as_deref(),
                Some("Opaque"),
                "Secret {secret_name} type"
            );
        }
    }
    // The config file itself, and every file it names.
    let config_path = m.config_path();
    assert!(
        config_path.starts_with('/'),
        "--config {config_path} is not absolute"
    );
    m.server_config_text();
    let config = m.server_config();
    let files = config_files(&config);
    assert!(!files.is_empty(), "the server config names no files");
    let mut secret_keys_used = Vec::new();
    for (key, path) in files {
        let path = absolute(&config_path, &path);
        match m.resolve(&path) {
            Source::Secret { name, key: item } => {
                let secret = m.secret(&name).expect("checked above");
                let has = secret.data.as_ref().is_some_and(|d| d.contains_key(&item))
                    || secret
                        .string_data
                        .as_ref()
                        .is_some_and(|d| d.contains_key(&item));
                assert!(
                    has,
                    "config {key} = {path}: Secret {name} has no key {item}"
                );
                secret_keys_used.push(item);
            }
            Source::ConfigMap { name, key: item } => {
                let cm = m.config_map(&name).expect("checked above");
                let has = cm.data.as_ref().is_some_and(|d| d.contains_key(&item))
                    || cm
                        .binary_data
                        .as_ref()
                        .is_some_and(|d| d.contains_key(&item));
                assert!(
                    has,
                    "config {key} = {path}: ConfigMap {name} has no key {item}"
                );
            }
            Source::ServiceAccount => {}
            Source::Unmounted => panic!("config {key} = {path} is on no mounted volume"),
        }
    }
    // The secret material the server needs is in the Secret, not the ConfigMap.
    for wanted in ["signing_keys[0].key", "refresh_secret_file", "tls.key"] {
        let (_, path) = config_files(&config)
            .into_iter()
            .find(|(k, _)| k == wanted)
            .unwrap_or_else(|| panic!("the config sets no {wanted}"));
        assert!(
            matches!(
                m.resolve(&absolute(&config_path, &path)),
                Source::Secret { .. }
            ),
            "{wanted} ({path}) must come from a Secret"
        );
    }
    // An in-cluster issuer trusts the cluster CA from the service account.
    let cluster = config["issuers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["issuer"] == "https://kubernetes.default.svc.cluster.local")
        .expect("an issuers entry for the in-cluster Kubernetes issuer");
    assert_eq!(cluster["kind"], "kubernetes");
    assert_eq!(
        cluster["ca_file"],
        format!("{SERVICE_ACCOUNT_DIR}/ca.crt").as_str()
    );
}

#[test]
fn configmap_config_passes_check_config() {
    let m = manifests();
    let config_path = m.config_path();
    let text = m.server_config_text();
    let config = m.server_config();
    let bin = token_server_bin();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let in_temp = |path: &str| root.join(path.trim_start_matches('/'));

    // Real files at every path the config names, moved under the temp dir.
    let ca = Ca::new("regauth deploy-manifests test CA");
    let server = ca.issue_server();
    let generated = root.join("generated");
    let out = run(
        {
            let mut c = Command::new(&bin);
            c.args(["keys", "generate", "--out"]).arg(&generated);
            c
        },
        COMMAND_TIMEOUT,
    );
    out.assert_success("regauth-token-server keys generate");
    let mut rewritten = text.clone();
    let mut files = config_files(&config);
    // Longest first, so no path is rewritten inside a longer one.
    files.sort_by_key(|(_, p)| std::cmp::Reverse(p.len()));
    for (key, path) in &files {
        let target = in_temp(&absolute(&config_path, path));
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("create dirs");
        let copy = |from: PathBuf| {
            std::fs::copy(&from, &target)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), target.display()));
        };
        let write = |contents: &str| std::fs::write(&target, contents).expect("write file");
        match key.as_str() {
            k if k.starts_with("signing_keys[") && k.ends_with(".key") => {
                copy(generated.join("signing.key"));
            }
            k if k.starts_with("signing_keys[") && k.ends_with(".cert") => {
                copy(generated.join("signing.crt"));
            }
            "refresh_secret_file" => {
                let mut c = Command::new(&bin);
                c.args(["keys", "secret", "--out"]).arg(&target);
                run(c, COMMAND_TIMEOUT).assert_success("regauth-token-server keys secret");
            }
            "tls.cert" => write(&server.cert_pem),
            "tls.key" => write(&server.key_pem),
            "tls.client_ca" => write(ca.cert_pem()),
            k if k.ends_with(".ca_file") => write(ca.cert_pem()),
            other => panic!("config key {other} names a file this test cannot make yet"),
        }
        assert!(
            rewritten.contains(path.as_str()),
            "the config text does not spell {key} as {path}"
        );
        rewritten = rewritten.replace(path.as_str(), &target.display().to_string());
    }
    let config_file = in_temp(&config_path);
    std::fs::create_dir_all(config_file.parent().expect("a parent")).expect("create dirs");
    std::fs::write(&config_file, &rewritten).expect("write config");

    let mut c = Command::new(&bin);
    c.args(["check-config", "--config"]).arg(&config_file);
    let out = run(c, COMMAND_TIMEOUT);
    out.assert_success("check-config on the ConfigMap's server.yaml");
    assert!(out.stdout.contains(": ok"), "{}", out.describe());

    // The fleet variant: the commented shared_state line, switched on.
    let fleet = rewritten.replace(&format!("# {FLEET_SHARED_STATE}"), FLEET_SHARED_STATE);
    assert_ne!(
        fleet, rewritten,
        "the ConfigMap offers `# {FLEET_SHARED_STATE}`"
    );
    std::fs::write(&config_file, &fleet).expect("write config");
    let mut c = Command::new(&bin);
    c.args(["check-config", "--config"]).arg(&config_file);
    run(c, COMMAND_TIMEOUT).assert_success("check-config with shared_state");

    // And its Sentinel variant.
    let sentinel = rewritten.replace(
        &format!("# {}", sentinel_shared_state()),
        &sentinel_shared_state(),
    );
    assert_ne!(
        sentinel,
        rewritten,
        "the ConfigMap offers `# {}`",
        sentinel_shared_state()
    );
    std::fs::write(&config_file, &sentinel).expect("write config");
    let mut c = Command::new(&bin);
    c.args(["check-config", "--config"]).arg(&config_file);
    run(c, COMMAND_TIMEOUT).assert_success("check-config with a sentinel shared_state");

    // The placeholder Secret must not pass for real keys: the server refuses it.
    let placeholder = &m.secrets[0];
    let data = placeholder
        .data
        .as_ref()
        .expect("the example Secret has data");
    for (key, value) in data {
        assert!(
            String::from_utf8_lossy(&value.0).contains("REPLACE"),
            "example Secret key {key} holds something other than a placeholder"
        );
    }
}

/// The line the ConfigMap offers for a fleet, naming the Redis Service.
const FLEET_SHARED_STATE: &str = "shared_state: redis://regauth-redis:6379/0";

/// The fleet additions: a Redis Service that selects the Redis pods on the
/// port the ConfigMap's `shared_state` names, and an autoscaler that scales
/// the token-server Deployment without going under the disruption budget.
#[test]
fn fleet_manifests_fit_the_deployment() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

    let base = manifests();
    let mut redis_services = Vec::new();
    let mut statefulsets = Vec::new();
    let mut autoscalers = Vec::new();
    for doc in documents_in(&kubernetes_dir().join(FLEET_DIR)) {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
        match (api_version, doc.value["kind"].as_str().unwrap_or_default()) {
            ("v1", "Service") => redis_services.push(typed::<Service>(&doc)),
            ("apps/v1", "StatefulSet") => statefulsets.push(typed::<StatefulSet>(&doc)),
            ("autoscaling/v2", "HorizontalPodAutoscaler") => {
                autoscalers.push(typed::<HorizontalPodAutoscaler>(&doc));
            }
            (v, k) => panic!("{}: {v} {k} is not one this test knows", doc.origin),
        }
    }
    assert_eq!(
        (redis_services.len(), statefulsets.len(), autoscalers.len()),
        (1, 1, 1)
    );
    let (service, redis, hpa) = (&redis_services[0], &statefulsets[0], &autoscalers[0]);

    // shared_state: redis://NAME:PORT/0 reaches the Service, which reaches Redis.
    let url = FLEET_SHARED_STATE.trim_start_matches("shared_state: redis://");
    let (host, port) = url
        .trim_end_matches("/0")
        .split_once(':')
        .expect("host:port");
    assert_eq!(name_of(&service.metadata), host);
    let spec = service.spec.as_ref().expect("Service spec");
    let port: i32 = port.parse().expect("a port number");
    let service_port = spec
        .ports
        .as_ref()
        .and_then(|p| p.iter().find(|p| p.port == port))
        .expect("the Service exposes the shared_state port");
    let redis_spec = &redis.spec;
    let pod_labels = redis_spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the Redis Service selects the Redis pods"
    );
    let container = &redis_spec
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0];
    let target = service_port.target_port.clone().expect("targetPort");
    assert_eq!(port_number(container, &target), Some(port));
    let args = container.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--appendonly yes"),
        "revocations survive a restart: {args}"
    );
    assert!(
        args.contains("--maxmemory 64mb") && args.contains("--maxmemory-policy volatile-ttl"),
        "bounded memory, and a policy that evicts only keys with a TTL (never a revocation): {args}"
    );
    assert!(
        redis_spec.volume_claim_templates.is_some(),
        "the append-only file lives on a volume"
    );

    // The autoscaler scales the Deployment and never under the budget.
    let hpa_spec = &hpa.spec;
    let deployment = &base.deployments[0];
    assert_eq!(hpa_spec.scale_target_ref.kind, "Deployment");
    assert_eq!(
        hpa_spec.scale_target_ref.name,
        name_of(&deployment.metadata)
    );
    let min = hpa_spec.min_replicas.unwrap_or(1);
    let budget = base.budgets[0]
        .spec
        .as_ref()
        .and_then(|s| s.min_available.clone());
    assert!(
        matches!(budget, Some(IntOrString::Int(n)) if min > n),
        "minReplicas {min} must exceed the budget's minAvailable {budget:?}, or drains stall"
    );
    assert!(hpa_spec.max_replicas > min);
}

/// The master name and sentinels of the Sentinel example.
const SENTINEL_MASTER: &str = "regauth";

/// The Sentinel line the ConfigMap offers: the three sentinel pods by
/// their stable names.
fn sentinel_shared_state() -> String {
    let hosts: Vec<String> = (0..3)
        .map(|i| format!("regauth-sentinel-{i}.regauth-sentinel-nodes:26379"))
        .collect();
    format!(
        "shared_state: redis+sentinel://{}/{SENTINEL_MASTER}",
        hosts.join(",")
    )
}

/// The Sentinel example: its Services give the pods the names the
/// ConfigMap's `shared_state` and the sentinels' config use, the sentinels
/// monitor the master name the URL names with a quorum their budget keeps,
/// and the Redis config bounds memory with a policy that cannot evict a
/// revocation. Its redis.conf and sentinel.conf run in Debian's Redis.
#[test]
fn the_sentinel_example_fits_together_and_its_configs_run() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let mut services = Vec::new();
    let mut sets = Vec::new();
    let mut maps = Vec::new();
    let mut budgets = Vec::new();
    for doc in documents_in(&kubernetes_dir().join(FLEET_DIR).join(SENTINEL_DIR)) {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
        match (api_version, doc.value["kind"].as_str().unwrap_or_default()) {
            ("v1", "Service") => services.push(typed::<Service>(&doc)),
            ("v1", "ConfigMap") => maps.push(typed::<ConfigMap>(&doc)),
            ("apps/v1", "StatefulSet") => sets.push(typed::<StatefulSet>(&doc)),
            ("policy/v1", "PodDisruptionBudget") => {
                budgets.push(typed::<PodDisruptionBudget>(&doc));
            }
            (v, k) => panic!("{}: {v} {k} is not one this test knows", doc.origin),
        }
    }
    assert_eq!(
        (services.len(), sets.len(), maps.len(), budgets.len()),
        (2, 2, 1, 1)
    );
    let data = maps[0].data.clone().unwrap_or_default();
    let file = |name: &str| {
        data.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("the ConfigMap has no {name}"))
    };
    let set = |name: &str| {
        sets.iter()
            .find(|s| name_of(&s.metadata) == name)
            .unwrap_or_else(|| panic!("no StatefulSet {name}"))
    };
    for (set_name, service_name, port, replicas) in [
        ("regauth-redis", "regauth-redis-nodes", 6379, 2),
        ("regauth-sentinel", "regauth-sentinel-nodes", 26379, 3),
    ] {
        let s = &set(set_name).spec;
        assert_eq!(s.service_name.as_deref(), Some(service_name));
        assert_eq!(s.replicas, Some(replicas), "{set_name}");
        let service = services
            .iter()
            .find(|v| name_of(&v.metadata) == service_name)
            .unwrap_or_else(|| panic!("no Service {service_name}"));
        let spec = service.spec.as_ref().expect("Service spec");
        assert_eq!(
            spec.cluster_ip.as_deref(),
            Some("None"),
            "{service_name} is headless"
        );
        let labels = s
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        assert!(
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{service_name} selects the {set_name} pods"
        );
        let container = &s.template.spec.as_ref().expect("pod spec").containers[0];
        let service_port = spec.ports.as_ref().and_then(|p| p.first()).expect("a port");
        assert_eq!(service_port.port, port);
        let target = service_port.target_port.clone().expect("targetPort");
        assert_eq!(port_number(container, &target), Some(port));
        let mounts = container.volume_mounts.clone().unwrap_or_default();
        assert!(
            mounts.iter().any(|m| m.mount_path == "/data"),
            "{set_name} keeps its state on a volume"
        );
    }
    // The URL the ConfigMap offers names these pods and this master.
    let url = sentinel_shared_state();
    let sentinel_conf = file("sentinel.conf");
    assert!(
        sentinel_conf.contains(&format!(
            "sentinel monitor {SENTINEL_MASTER} regauth-redis-0.regauth-redis-nodes 6379 2"
        )),
        "{sentinel_conf}"
    );
    assert!(url.ends_with(&format!("/{SENTINEL_MASTER}")));
    let quorum_kept = budgets[0]
        .spec
        .as_ref()
        .and_then(|s| s.min_available.clone());
    assert_eq!(
        quorum_kept,
        Some(IntOrString::Int(2)),
        "a drain keeps the quorum"
    );
    let redis_conf = file("redis.conf");
    for line in [
        "appendonly yes",
        "maxmemory 64mb",
        "maxmemory-policy volatile-ttl",
    ] {
        assert!(
            redis_conf.lines().any(|l| l.trim() == line),
            "redis.conf: {line}"
        );
    }

    // The configs run in Debian's Redis, on loopback ports.
    let d = tempfile::tempdir().expect("temp dir");
    let redis_port = regauth_e2e::net::free_port();
    let conf = d.path().join("redis.conf");
    let local = redis_conf
        .replace("port 6379", &format!("port {redis_port}"))
        .replace("dir /data", &format!("dir {}", d.path().display()));
    assert_ne!(local, redis_conf, "redis.conf sets port 6379 and dir /data");
    std::fs::write(&conf, format!("{local}bind 127.0.0.1\n")).expect("write redis.conf");
    let bin = regauth_e2e::tools::require_tool("redis-server", "redis-server");
    let mut cmd = Command::new(bin);
    cmd.arg(&conf);
    let _redis = regauth_e2e::process::ChildGuard::spawn(cmd, d.path(), "redis");
    let got = wait_for_reply(redis_port, &["CONFIG", "GET", "maxmemory-policy"]);
    assert_eq!(
        got.items()
            .get(1)
            .and_then(regauth_e2e::redis::Resp::text)
            .as_deref(),
        Some("volatile-ttl")
    );
    let sentinel_port = regauth_e2e::net::free_port();
    let sconf = d.path().join("sentinel.conf");
    let local = sentinel_conf
        .replace(
            "regauth-redis-0.regauth-redis-nodes 6379",
            &format!("127.0.0.1 {redis_port}"),
        )
        .replace("port 26379", &format!("port {sentinel_port}"))
        .replace("dir /data", &format!("dir {}", d.path().display()));
    std::fs::write(&sconf, format!("{local}bind 127.0.0.1\n")).expect("write sentinel.conf");
    let sbin = regauth_e2e::tools::require_tool("redis-sentinel", "redis-sentinel");
    let mut cmd = Command::new(sbin);
    cmd.arg(&sconf);
    let _sentinel = regauth_e2e::process::ChildGuard::spawn(cmd, d.path(), "sentinel");
    let got = wait_for_reply(
        sentinel_port,
        &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
    );
    assert_eq!(
        got.items().get(1).and_then(regauth_e2e::redis::Resp::text),
        Some(redis_port.to_string()),
        "the shipped sentinel.conf monitors the master: {got:?}"
    );
}

/// The reply to `args` from the Redis or sentinel on `port`, once it
/// answers (within 20 s).
fn wait_for_reply(port: u16, args: &[&str]) -> regauth_e2e::redis::Resp {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(reply) = regauth_e2e::redis::try_call(port, args) {
            return reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing answers {args:?} on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

fn unit_path() -> PathBuf {
    workspace_root()
        .join("deploy")
        .join("systemd")
        .join("regauth-token-server.service")
}

/// `[Section] -> key -> values` (keys may repeat), with comments dropped and
/// continuation lines joined.
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut pending = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line {}: not KEY=VALUE: {raw}", n + 1));
        let section = current
            .clone()
            .unwrap_or_else(|| panic!("unit line {}: key outside a section", n + 1));
        sections
            .entry(section)
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

#[test]
fn systemd_unit_has_the_operational_keys() {
    let path = unit_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let unit = parse_unit(&text);
    let service = unit.get("Service").expect("a [Service] section");
    assert!(unit.contains_key("Unit") && unit.contains_key("Install"));
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] has no {key}="));
        values.last().expect("at least one value")
    };
    let all = |key: &str| service.get(key).cloned().unwrap_or_default();

    assert_eq!(
        one("ExecStart"),
        "/usr/bin/regauth-token-server serve --config /etc/regauth/server.yaml --log-format json"
    );
    assert!(
        all("ExecReload")
            .iter()
            .any(|v| v == "/bin/kill -HUP $MAINPID"),
        "ExecReload sends SIGHUP: {:?}",
        all("ExecReload")
    );
    assert_eq!(one("KillSignal"), "SIGTERM");
    let stop = seconds(one("TimeoutStopSec"));
    assert!(
        stop > DEFAULT_DRAIN_SECONDS,
        "TimeoutStopSec ({stop}s) must exceed the drain timeout ({DEFAULT_DRAIN_SECONDS}s)"
    );
    assert_eq!(one("Restart"), "on-failure");
    let user = one("User");
    assert!(!user.is_empty() && user != "root", "User={user}");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "", "no capabilities at all");
    assert!(
        all("ReadOnlyPaths")
            .iter()
            .any(|v| v.split_whitespace().any(|p| p == "/etc/regauth")),
        "ReadOnlyPaths covers /etc/regauth"
    );
    assert!(one("LimitNOFILE").parse::<u64>().is_ok_and(|n| n >= 8192));

    // The flags the unit passes are ones the binary has.
    let bin = token_server_bin();
    let mut c = Command::new(&bin);
    c.args(["serve", "--help"]);
    let help = run(c, COMMAND_TIMEOUT);
    help.assert_success("regauth-token-server serve --help");
    for flag in ["--config", "--log-format"] {
        assert!(
            help.stdout.contains(flag),
            "serve has no {flag}:\n{}",
            help.stdout
        );
    }

    // systemd's own check, where systemd is installed: against the built binary.
    let Some(analyze) = find_in_path("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed; skipping `systemd-analyze verify`");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("regauth-token-server.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/regauth-token-server", &bin.display().to_string()),
    )
    .expect("write unit copy");
    let mut c = Command::new(analyze);
    // Documentation= names a man page that the Debian package installs;
    // the package test verifies the installed unit with it in place.
    c.args(["verify", "--man=no"]).arg(&copy);
    let out = run(c, COMMAND_TIMEOUT);
    // Unknown keys are only warnings to systemd, so read its stderr too.
    let complaints: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("regauth-token-server.service"))
        .collect();
    assert!(
        out.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        out.describe()
    );
}
