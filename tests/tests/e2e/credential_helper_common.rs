//! What the credential helper tests share: one policy for every identity
//! kind, worlds whose token server trusts a Kubernetes-style issuer and a
//! GitHub-Actions-style issuer, a standalone server for helper-only tests,
//! and the identities those issuers mint.

use std::path::{Path, PathBuf};

use regauth_e2e::World;
use regauth_e2e::credential_helper::skopeo::HelperSkopeo;
use regauth_e2e::credential_helper::{HelperConfig, HelperEnv, Identity, RegistryEntry};
use regauth_e2e::oidc_issuer::claims::{GithubWorkflow, ServiceAccount};
use regauth_e2e::oidc_issuer::config::{IssuerConfig, issuers_yaml};
use regauth_e2e::oidc_issuer::{KeyAlg, OidcIssuer};
use regauth_e2e::pki::TestPki;
use regauth_e2e::secrets::{random_password, write_secret_file};
use regauth_e2e::token_server::{TokenServer, TokenServerBuilder};

/// A token server URL where nothing listens: port 1 is privileged and no
/// fixture binds it, so connecting is refused at once, and no other test's
/// server can ever appear there (as one could on a freed ephemeral port).
pub const DOWN_TOKEN_SERVER: &str = "http://127.0.0.1:1";

/// The audience workloads request their tokens for (the issuers accept it).
pub const AUDIENCE: &str = "regauth";

/// One policy for every identity kind the helper supports. First match wins.
pub const POLICY: &str = r#"policy:
  - comment: alice publishes public/
    kind: account
    name: alice
    resource: "public/**"
    actions: ["*"]
  - comment: anyone pulls public/
    kind: anonymous
    resource: "public/**"
    actions: [pull]
  - comment: team namespaces pull and push their own area
    kind: kubernetes
    attributes: {namespace: "team-*"}
    resource: "${namespace}/**"
    actions: [pull, push]
  - comment: CI of org/* pushes ci/<repository>
    kind: oidc
    attributes: {claims.repository: "org/*"}
    resource: "ci/${claim:repository}"
    actions: [pull, push]
  - comment: kubelet-style nodes pull shared/
    kind: node
    attributes: {organization: "system:nodes"}
    resource: "shared/**"
    actions: [pull]
  - comment: a node pushes its own area
    kind: node
    resource: "nodes/${node}/**"
    actions: [pull, push]
  - comment: each account owns its namespace
    kind: account
    resource: "${name}/**"
    actions: ["*"]
"#;

/// The issuers' `issuers:` entries: `cluster` (kind kubernetes) and `ci`
/// (kind oidc, GitHub-shaped tokens).
fn issuers(k8s: &OidcIssuer, ci: &OidcIssuer) -> String {
    issuers_yaml(&[
        IssuerConfig::kubernetes("cluster", &k8s.url()),
        IssuerConfig::oidc("ci", &ci.url()).name_claim("sub"),
    ])
}

/// A world (token server + registry) trusting both issuers, with [`POLICY`].
/// Fields drop in order: processes first, then the issuers.
pub struct HelperWorld {
    /// Token server, registry, skopeo.
    pub world: World,
    /// The Kubernetes service-account issuer.
    pub k8s: OidcIssuer,
    /// The GitHub-Actions-style OIDC issuer.
    pub ci: OidcIssuer,
}

impl HelperWorld {
    /// Starts the world with a plain HTTP token server.
    pub fn start() -> Self {
        Self::start_with(|b| b)
    }

    /// Starts the world with an HTTPS token server that verifies client
    /// certificates from `pki`'s client CA (node identity).
    pub fn start_tls(pki: &TestPki) -> Self {
        let tls = pki.server_tls(true);
        Self::start_with(move |b| b.tls(tls))
    }

    fn start_with(configure: impl FnOnce(TokenServerBuilder) -> TokenServerBuilder) -> Self {
        let k8s = OidcIssuer::start();
        let ci = OidcIssuer::start_with(KeyAlg::Rs256);
        let yaml = issuers(&k8s, &ci);
        let world = World::builder()
            .server(|b| configure(b.policy(POLICY).extra_config(&yaml)))
            .start();
        Self { world, k8s, ci }
    }

    /// The registry's `host:port`.
    pub fn host(&self) -> String {
        self.world.registry.host()
    }

    /// A helper setup in a new directory with `entry` as its only registry.
    pub fn helper(&self, entry: RegistryEntry) -> HelperEnv {
        HelperEnv::new(
            &self.world.new_dir("helper"),
            &HelperConfig::new().registry(entry),
        )
    }

    /// skopeo using `helper` for this world's registry.
    pub fn skopeo(&self, helper: &HelperEnv) -> HelperSkopeo {
        HelperSkopeo::new(&self.world.new_dir("skopeo-helper"), &self.host(), helper)
    }
}

/// A token server without a registry, trusting the Kubernetes issuer, with
/// account `alice`; for tests of the helper alone. The server can be
/// stopped; the directory outlives it.
pub struct HelperServer {
    server: Option<TokenServer>,
    /// The Kubernetes service-account issuer.
    pub k8s: OidcIssuer,
    /// The GitHub-Actions-style OIDC issuer.
    pub ci: OidcIssuer,
    /// alice's password.
    pub alice_password: String,
    dir: tempfile::TempDir,
    subdirs: std::sync::atomic::AtomicUsize,
}

impl HelperServer {
    /// Starts the server.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("regauth-e2e-")
            .tempdir()
            .expect("create temp dir");
        let k8s = OidcIssuer::start();
        let ci = OidcIssuer::start_with(KeyAlg::Rs256);
        let alice_password = random_password();
        let server = TokenServerBuilder::new()
            .account("alice", &alice_password, &[("team", "a")])
            .policy(POLICY)
            .extra_config(&issuers(&k8s, &ci))
            .start(dir.path());
        Self {
            server: Some(server),
            k8s,
            ci,
            alice_password,
            dir,
            subdirs: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The running server; panics once stopped.
    pub fn server(&self) -> &TokenServer {
        self.server.as_ref().expect("the token server was stopped")
    }

    /// The server's base URL (still known after it stopped).
    pub fn url(&self) -> String {
        self.server().url()
    }

    /// Kills the server process.
    pub fn stop(&mut self) {
        drop(self.server.take());
    }

    /// A new, uniquely named directory.
    pub fn new_dir(&self, label: &str) -> PathBuf {
        let n = self
            .subdirs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.path().join(format!("{label}-{n}"));
        std::fs::create_dir_all(&dir).expect("create test subdirectory");
        dir
    }

    /// A helper setup in a new directory with `entry` as its only registry.
    pub fn helper(&self, entry: RegistryEntry) -> HelperEnv {
        HelperEnv::new(
            &self.new_dir("helper"),
            &HelperConfig::new().registry(entry),
        )
    }
}

/// Writes a projected-style service-account token for `NAMESPACE/builder`
/// into `dir/sa-token-NAMESPACE`; returns the identity and the token.
pub fn service_account_identity(
    k8s: &OidcIssuer,
    dir: &Path,
    namespace: &str,
) -> (Identity, String) {
    let token = k8s.service_account_token(&ServiceAccount::new(namespace, "builder"), AUDIENCE);
    let token_file = dir.join(format!("sa-token-{namespace}"));
    std::fs::write(&token_file, format!("{token}\n")).expect("write the service-account token");
    (Identity::Kubernetes { token_file }, token)
}

/// An ID token of `repository`'s release workflow (GitHub-shaped claims).
pub fn workflow_token(ci: &OidcIssuer, repository: &str) -> String {
    ci.github_token(&GithubWorkflow::new(repository), AUDIENCE)
}

/// Writes `password` to `dir/NAME.password` (mode 0600); returns the identity.
pub fn account_identity(dir: &Path, name: &str, password: &str) -> Identity {
    let password_file = dir.join(format!("{name}.password"));
    write_secret_file(&password_file, format!("{password}\n").as_bytes());
    Identity::Account {
        username: name.to_owned(),
        password_file,
    }
}

/// Strings that must never appear in the helper's stderr, with labels.
pub fn leaks<'a>(stderr: &str, secrets: &[(&'a str, &str)]) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|(_, value)| !value.is_empty() && stderr.contains(value))
        .map(|(label, _)| *label)
        .collect()
}

/// The last dot-separated part of a JWT: enough of it to spot a leak even
/// when a log prints the token in pieces.
pub fn signature(jwt: &str) -> &str {
    jwt.rsplit('.').next().unwrap_or_default()
}
