//! A cluster for the pull-secret controller's tests: the Kubernetes API
//! stub as the cluster and its token issuer, the real token server trusting
//! that issuer, a real registry, and `regauth-pull-secrets` processes.
//!
//! The stub enforces the RBAC the project ships in
//! `deploy/kubernetes/pull-secrets/` (cluster mode) or its `namespaced/`
//! variant, and every controller runs as the ServiceAccount those manifests
//! bind, so each test also proves the controller works with exactly the
//! rights it is given.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::World;
use crate::bins::{workspace_bin, workspace_root};
use crate::kube_api::KubeApi;
use crate::kube_api::rbac::{MASTERS, UserInfo};
use crate::net::free_port;
use crate::oidc_issuer::config::{IssuerConfig, issuers_yaml};
use crate::process::{ChildGuard, CmdOutput, PROXY_VARS, Readiness, run, wait_ready};
use crate::secrets::random_password;
use crate::token_client::{http_client, try_send};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use serde_json::Value;

/// The controller binary.
pub const BINARY: &str = "regauth-pull-secrets";
/// The audience the controller requests tokens for, which the token server accepts.
pub const AUDIENCE: &str = "regauth";
/// The namespace the controller runs in, and of its Lease: the one the
/// shipped bindings name.
pub const SYSTEM_NAMESPACE: &str = "regauth";
/// The controller's ServiceAccount, as the shipped bindings name it.
pub const CONTROLLER_ACCOUNT: &str = "regauth-pull-secrets";
/// A cluster administrator (`system:masters`), for kubectl as a person.
pub const ADMIN: &str = "cluster-admin";
/// The Secret name prefix in the tests' configs.
pub const PREFIX: &str = "regauth-pull";
/// Generous bound for anything the controller should do "within seconds"
/// on a loaded machine.
pub const SOON: Duration = Duration::from_secs(45);
/// The namespace label that opts a namespace in, in the tests that select
/// by label.
pub const OPT_IN: &str = "regauth.io/pull-secrets";

/// The `namespaces:` block selecting the namespaces labelled [`OPT_IN`].
pub fn selector_config() -> String {
    format!("namespaces:\n  selector: \"{OPT_IN}=enabled\"\n")
}

/// Each namespace owns its area; the `admin` account may push anywhere.
pub const POLICY: &str = r#"policy:
  - comment: every namespace pulls and pushes its own area
    kind: kubernetes
    resource: "${namespace}/**"
    actions: [pull, push]
  - comment: the test's admin seeds images
    kind: account
    name: admin
    resource: "**"
    actions: ["*"]
"#;

/// Which of the shipped RBAC variants the stub enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// `deploy/kubernetes/pull-secrets/*.yaml`: a ClusterRoleBinding.
    Cluster,
    /// `deploy/kubernetes/pull-secrets/namespaced/`: the role bound in each
    /// namespace passed to [`Cluster::bind_namespace`] only.
    Namespaced,
}

/// The shipped manifests directory of the controller.
pub fn manifests_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes/pull-secrets")
}

/// Every YAML document of the `.yaml` files directly in `dir`, sorted by file.
pub fn manifest_documents(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()));
        docs.extend(values);
    }
    docs
}

/// The API stub, a token server trusting it, and a registry.
pub struct Cluster {
    /// The world: drops the token server and registry before the directory.
    pub world: World,
    /// The Kubernetes API stub.
    pub api: KubeApi,
    /// The RBAC variant the stub enforces.
    pub install: Install,
}

impl Cluster {
    /// Starts a cluster whose exchanged credentials live `credential_ttl`,
    /// enforcing the shipped cluster-mode RBAC.
    pub fn start(credential_ttl: &str) -> Self {
        Self::start_with(credential_ttl, Install::Cluster)
    }

    /// Starts a cluster enforcing the RBAC of `install`.
    pub fn start_with(credential_ttl: &str, install: Install) -> Self {
        let api = KubeApi::start();
        let issuer = IssuerConfig::kubernetes("cluster", &api.url())
            .audiences(&[AUDIENCE])
            .credential_ttl(credential_ttl);
        let world = World::builder()
            .server(|s| {
                s.account("admin", &random_password(), &[])
                    .policy(POLICY)
                    .extra_config(&issuers_yaml(&[issuer]))
            })
            .start();
        api.create_namespace(SYSTEM_NAMESPACE, &[]);
        api.create_service_account(SYSTEM_NAMESPACE, CONTROLLER_ACCOUNT);
        let dir = match install {
            Install::Cluster => manifests_dir(),
            Install::Namespaced => manifests_dir().join("namespaced"),
        };
        // Only the roles and the controller's own bindings; the per-team
        // RoleBinding of the namespaced variant is bound per namespace.
        let docs: Vec<Value> = manifest_documents(&dir)
            .into_iter()
            .filter(|d| !(install == Install::Namespaced && is_team_binding(d)))
            .collect();
        assert!(
            docs.iter().any(|d| d["kind"] == "ClusterRole"),
            "no ClusterRole in {}",
            dir.display()
        );
        api.enforce_rbac(&docs, SYSTEM_NAMESPACE);
        Self {
            world,
            api,
            install,
        }
    }

    /// Binds the namespaced variant's role in `namespace`, as an operator
    /// applies the shipped team RoleBinding there.
    pub fn bind_namespace(&self, namespace: &str) {
        let binding = manifest_documents(&manifests_dir().join("namespaced"))
            .into_iter()
            .find(is_team_binding)
            .expect("the namespaced variant ships a team RoleBinding");
        let mut binding = binding;
        binding["metadata"]["namespace"] = namespace.into();
        self.api.enforce_rbac(&[binding], namespace);
    }

    /// A person who may do anything with Secrets and ServiceAccounts in
    /// `namespace` and nothing elsewhere (a Role and RoleBinding there), as
    /// a namespace owner is. Returns their kubeconfig.
    pub fn namespace_user(&self, namespace: &str, name: &str) -> PathBuf {
        let role = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": format!("{name}-edit"), "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["secrets", "serviceaccounts"], "verbs": ["*"]},
                      {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["get", "list", "watch"]}],
        });
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("{name}-edit"), "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{name}-edit")},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}],
        });
        self.api.enforce_rbac(&[role, binding], namespace);
        let path = self.world.new_dir(name).join("kubeconfig");
        self.api.write_kubeconfig(&path, name);
        path
    }

    /// Labels `namespace` with [`OPT_IN`] (or removes the label).
    pub fn opt_in(&self, namespace: &str, enabled: bool) {
        let mut ns = self
            .api
            .get::<k8s_openapi::api::core::v1::Namespace>("", namespace)
            .expect("the namespace exists");
        let labels = ns.metadata.labels.get_or_insert_with(Default::default);
        if enabled {
            labels.insert(OPT_IN.to_owned(), "enabled".to_owned());
        } else {
            labels.remove(OPT_IN);
        }
        self.api.update(&ns);
    }

    /// A namespace owner's own `kubernetes.io/dockerconfigjson` Secret
    /// `name` in `namespace`, made with real kubectl as `owner` (a
    /// kubeconfig from [`Cluster::namespace_user`]); returns it as stored.
    pub fn their_secret(&self, owner: &Path, namespace: &str, name: &str) -> Secret {
        // kubectl's typed create sends protobuf, which the stub does not
        // decode: the same Secret goes through `kubectl create -f` as JSON.
        let made = self.kubectl(
            owner,
            &[
                "create",
                "secret",
                "docker-registry",
                name,
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
        let manifest = owner.with_file_name(format!("their-secret-{namespace}-{name}.json"));
        std::fs::write(&manifest, &made.stdout).expect("write their Secret");
        let path = manifest.to_str().expect("a UTF-8 path");
        self.kubectl(owner, &["create", "--validate=false", "-f", path])
            .assert_success("kubectl create -f of their Secret as the namespace owner");
        self.api
            .get::<Secret>(namespace, name)
            .expect("their Secret exists")
    }

    /// Sets ServiceAccount `namespace/name`'s `imagePullSecrets` to
    /// `entries`, as its owner would: a merge patch with real kubectl.
    pub fn set_pull_secret_entries(
        &self,
        owner: &Path,
        namespace: &str,
        name: &str,
        entries: &[&str],
    ) {
        let list: Vec<Value> = entries
            .iter()
            .map(|n| serde_json::json!({"name": n}))
            .collect();
        let patch = serde_json::json!({"imagePullSecrets": list}).to_string();
        self.kubectl(
            owner,
            &[
                "patch",
                "-n",
                namespace,
                "serviceaccount",
                name,
                "--type=merge",
                "-p",
                &patch,
            ],
        )
        .assert_success("kubectl patch imagePullSecrets as the namespace owner");
    }

    /// The Events regarding ServiceAccount `namespace/sa`, oldest first.
    pub fn events_on(&self, namespace: &str, sa: &str) -> Vec<Event> {
        self.api
            .list::<Event>()
            .into_iter()
            .filter(|e| e.metadata.namespace.as_deref() == Some(namespace))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(sa))
            .collect()
    }

    /// A kubeconfig at `path` for a cluster administrator (`system:masters`).
    pub fn write_admin_kubeconfig(&self, path: &Path) {
        self.api.write_kubeconfig_for(
            path,
            ADMIN,
            UserInfo {
                name: ADMIN.to_owned(),
                groups: vec![MASTERS.to_owned()],
            },
        );
    }

    /// Runs real kubectl with `kubeconfig` (over HTTPS, with its token).
    pub fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> CmdOutput {
        let dir = kubeconfig.parent().expect("a kubeconfig in a directory");
        let mut cmd = Command::new(crate::tools::require_tool("kubectl", "kubernetes-client"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(dir.join("kubectl-cache"))
            .args(args)
            .env("HOME", dir);
        for proxy in PROXY_VARS {
            cmd.env_remove(proxy);
        }
        run(cmd, Duration::from_secs(60))
    }

    /// The registry host, the `.dockerconfigjson` key.
    pub fn registry_host(&self) -> String {
        self.world.registry.host()
    }

    /// A controller config: `namespaces_yaml` is the `namespaces:` block
    /// (or empty), `extra` more top-level keys.
    pub fn config(&self, namespaces_yaml: &str, extra: &str) -> String {
        format!(
            "token_server:\n  url: {url}\n  timeout: 5s\n\
             registries:\n  - hosts: [\"{host}\"]\n    service: {service}\n\
             audience: {AUDIENCE}\n\
             secret_name: {PREFIX}\n\
             max_backoff: 2s\n\
             resync_interval: 10s\n\
             leader_election:\n  namespace: {SYSTEM_NAMESPACE}\n  lease_duration: 4s\n  renew_interval: 1s\n\
             listen: 127.0.0.1:{port}\n\
             {namespaces_yaml}{extra}",
            url = self.world.server.url(),
            host = self.registry_host(),
            service = crate::token_server::SERVICE,
            port = free_port(),
        )
    }

    /// Writes `config` and a kubeconfig for the controller's
    /// ServiceAccount, recorded as client `name`, under a new directory;
    /// returns the directory.
    fn prepare(&self, name: &str, config: &str) -> PathBuf {
        let dir = self.world.new_dir(name);
        std::fs::write(dir.join("config.yaml"), config).expect("write controller config");
        self.api.write_kubeconfig_for(
            &dir.join("kubeconfig"),
            name,
            UserInfo::service_account(SYSTEM_NAMESPACE, CONTROLLER_ACCOUNT),
        );
        dir
    }

    /// Starts a controller replica named `name` (its API user and pod name).
    pub fn start_controller(&self, name: &str, config: &str) -> Controller {
        let dir = self.prepare(name, config);
        let mut cmd = command(&dir, name);
        cmd.args(["--log-format", "json"]);
        let process = ChildGuard::spawn(cmd, &dir, name);
        let listen = config
            .lines()
            .find_map(|l| l.strip_prefix("listen: "))
            .expect("the config sets listen")
            .to_owned();
        let mut controller = Controller {
            process,
            url: format!("http://{listen}"),
            name: name.to_owned(),
            kubeconfig: dir.join("kubeconfig"),
        };
        let url = controller.url.clone();
        match wait_ready(&mut controller.process, SOON, || {
            try_send(http_client().get(format!("{url}/healthz")))
                .ok()
                .filter(|r| r.status == 200)
        }) {
            Readiness::Ready(_) => controller,
            Readiness::Exited(status) => panic!(
                "{name} exited early ({status})\n{}",
                controller.process.logs()
            ),
            Readiness::TimedOut => panic!(
                "{name} did not serve /healthz within {SOON:?}\n{}",
                controller.process.logs()
            ),
        }
    }

    /// Runs `regauth-pull-secrets check-config` on `config`.
    pub fn check_config(&self, config: &str) -> CmdOutput {
        let dir = self.world.new_dir("check-config");
        std::fs::write(dir.join("config.yaml"), config).expect("write config");
        let mut cmd = Command::new(workspace_bin(BINARY));
        cmd.args(["check-config", "--config"])
            .arg(dir.join("config.yaml"));
        run(cmd, Duration::from_secs(60))
    }

    /// Runs the controller with `args` (`--once`, `--cleanup`…) to the end.
    pub fn run_controller(&self, name: &str, config: &str, args: &[&str]) -> CmdOutput {
        let dir = self.prepare(name, config);
        let mut cmd = command(&dir, name);
        cmd.args(args);
        run(cmd, Duration::from_secs(120))
    }

    /// Our Secret for ServiceAccount `sa` in `namespace`, if it exists.
    pub fn pull_secret(&self, namespace: &str, sa: &str) -> Option<Secret> {
        self.api.get::<Secret>(namespace, &format!("{PREFIX}-{sa}"))
    }

    /// Waits for our Secret, returning it.
    pub fn wait_pull_secret(&self, namespace: &str, sa: &str) -> Secret {
        eventually(&format!("a pull Secret in {namespace} for {sa}"), || {
            self.pull_secret(namespace, sa)
        })
    }

    /// The names in a ServiceAccount's `imagePullSecrets`.
    pub fn pull_secret_names(&self, namespace: &str, sa: &str) -> Vec<String> {
        self.api
            .get::<ServiceAccount>(namespace, sa)
            .and_then(|s| s.image_pull_secrets)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    /// Waits until the ServiceAccount lists our Secret.
    pub fn wait_attached(&self, namespace: &str, sa: &str) {
        let ours = format!("{PREFIX}-{sa}");
        eventually(&format!("{namespace}/{sa} to list {ours}"), || {
            self.pull_secret_names(namespace, sa)
                .contains(&ours)
                .then_some(())
        });
    }

    /// The holder of the controller's Lease.
    pub fn lease_holder(&self) -> Option<String> {
        self.api
            .get::<Lease>(SYSTEM_NAMESPACE, "regauth-pull-secrets")
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }

    /// Writes `secret`'s `.dockerconfigjson` as an auth file and returns its path.
    pub fn write_authfile(&self, secret: &Secret, label: &str) -> PathBuf {
        let path = self.world.new_dir(label).join("auth.json");
        std::fs::write(&path, docker_config_bytes(secret)).expect("write auth file");
        path
    }
}

fn command(dir: &Path, name: &str) -> Command {
    let mut cmd = Command::new(workspace_bin(BINARY));
    cmd.arg("--config")
        .arg(dir.join("config.yaml"))
        .current_dir(dir)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("POD_NAME", name)
        .env("REGAUTH_LOG", "info,regauth_pull_secrets=debug")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("REGAUTH_PULL_SECRETS_CONFIG");
    for proxy in PROXY_VARS {
        cmd.env_remove(proxy);
    }
    cmd
}

/// A running controller replica; killed (SIGKILL) on drop.
pub struct Controller {
    process: ChildGuard,
    url: String,
    /// Its name: API client label and pod name.
    pub name: String,
    /// Its kubeconfig: the controller's ServiceAccount token.
    pub kubeconfig: PathBuf,
}

impl Controller {
    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        let reply = try_send(http_client().get(format!("{}/metrics", self.url)))
            .unwrap_or_else(|e| panic!("GET /metrics of {}: {e}\n{}", self.name, self.logs()));
        assert_eq!(reply.status, 200);
        reply.body
    }

    /// Both output streams.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

fn is_team_binding(doc: &Value) -> bool {
    doc["kind"] == "RoleBinding"
        && doc["metadata"]["namespace"].as_str().is_some()
        && doc["roleRef"]["kind"] == "ClusterRole"
}

/// Polls `probe` every 100 ms until it yields a value; panics naming
/// `what` after [`SOON`].
pub fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {SOON:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The raw `.dockerconfigjson` of a Secret.
pub fn docker_config_bytes(secret: &Secret) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .map(|b| b.0.clone())
        .expect("the Secret has .dockerconfigjson")
}

/// The parsed `.dockerconfigjson`.
pub fn docker_config(secret: &Secret) -> Value {
    serde_json::from_slice(&docker_config_bytes(secret)).expect(".dockerconfigjson is JSON")
}

/// The password written for `host`.
pub fn password(secret: &Secret, host: &str) -> String {
    let config = docker_config(secret);
    let entry = &config["auths"][host];
    let password = entry["password"].as_str().expect("a password").to_owned();
    let username = entry["username"].as_str().expect("a username");
    assert_eq!(
        entry["auth"].as_str(),
        Some(STANDARD.encode(format!("{username}:{password}")).as_str()),
        "auth is base64(username:password)"
    );
    password
}

/// When the credential written for `host` expires: the `exp` claim of the
/// refresh token in the Secret, read without verifying it (the test's own
/// look at what a pull would present).
pub fn credential_expiry(secret: &Secret, host: &str) -> Option<u64> {
    let config = docker_config(secret);
    let token = config["auths"][host]["password"].as_str()?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_u64()
}

/// Seconds since the epoch, now.
pub fn now_seconds() -> u64 {
    crate::oidc_issuer::claims::now()
        .try_into()
        .unwrap_or_default()
}

/// The value of one sample in a metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    crate::ops::metric(text, series)
}
