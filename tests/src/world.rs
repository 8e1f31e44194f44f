//! A complete test world: token server, registry and skopeo in one temp dir.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

use crate::jwt::{AccessClaims, verify_access_token};
use crate::oci::{OciImage, build_oci_image};
use crate::registry::Registry;
use crate::secrets::random_password;
use crate::skopeo::{Auth, Pushed, Skopeo};
use crate::token_client::TokenClient;
use crate::token_server::{ISSUER, SERVICE, TokenServer, TokenServerBuilder};

/// Set this environment variable to keep test directories for inspection.
pub const KEEP_ENV: &str = "REGAUTH_E2E_KEEP";

/// Configures a [`World`] before starting it.
#[derive(Debug, Clone)]
pub struct WorldBuilder {
    server: TokenServerBuilder,
}

impl WorldBuilder {
    /// Changes the token server configuration (accounts, htpasswd, env, policy).
    pub fn server(mut self, f: impl FnOnce(TokenServerBuilder) -> TokenServerBuilder) -> Self {
        self.server = f(self.server);
        self
    }

    /// Starts token server and registry in a fresh temp directory.
    pub fn start(self) -> World {
        let temp = tempfile::Builder::new()
            .prefix("regauth-e2e-")
            .tempdir()
            .expect("create temp dir");
        let path = temp.path().to_path_buf();
        let temp = if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("keeping test directory {}", temp.keep().display());
            None
        } else {
            Some(temp)
        };
        let server = self.server.start(&path);
        let registry = Registry::start(&server, &path);
        let skopeo = Skopeo::new(&path.join("skopeo"));
        World {
            registry,
            server,
            skopeo,
            path,
            subdirs: AtomicUsize::new(0),
            _temp: temp,
        }
    }
}

/// Token server + registry (+ skopeo runner) for one test; dropped in order:
/// processes first, then the directory.
#[derive(Debug)]
pub struct World {
    /// The registry, configured from `registry-config`.
    pub registry: Registry,
    /// The token server.
    pub server: TokenServer,
    /// An isolated skopeo runner.
    pub skopeo: Skopeo,
    path: PathBuf,
    subdirs: AtomicUsize,
    _temp: Option<TempDir>,
}

impl World {
    /// A builder with accounts `alice` and `bob` (random passwords, bcrypt
    /// via `hash-password`) and the default each-account-owns-its-namespace policy.
    pub fn builder() -> WorldBuilder {
        WorldBuilder {
            server: TokenServerBuilder::new()
                .account("alice", &random_password(), &[("team", "a")])
                .account("bob", &random_password(), &[("team", "b")]),
        }
    }

    /// Starts the default world (see [`World::builder`]).
    pub fn start() -> World {
        Self::builder().start()
    }

    /// The world's root directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Creates and returns a new, uniquely named directory in the world.
    pub fn new_dir(&self, label: &str) -> PathBuf {
        let n = self.subdirs.fetch_add(1, Ordering::Relaxed);
        let dir = self.path.join(format!("{label}-{n}"));
        std::fs::create_dir_all(&dir).expect("create test subdirectory");
        dir
    }

    /// Password of a configured account.
    pub fn password(&self, name: &str) -> String {
        self.server.password(name).to_owned()
    }

    /// A client for the token server.
    pub fn tokens(&self) -> &TokenClient {
        self.server.client()
    }

    /// `127.0.0.1:RPORT/REPO:latest`.
    pub fn reference(&self, repo: &str) -> String {
        self.registry.reference(repo)
    }

    /// Builds a fresh OCI image and pushes it to `repo` with skopeo.
    pub fn try_push(&self, repo: &str, auth: Auth<'_>) -> (OciImage, Pushed) {
        let image = build_oci_image(&self.new_dir("oci-src"));
        let pushed = self.skopeo.push(&image, &self.reference(repo), auth);
        (image, pushed)
    }

    /// Like [`World::try_push`] with `user`'s password, asserting success;
    /// returns the image and the pushed manifest digest.
    pub fn push_as(&self, user: &str, repo: &str) -> (OciImage, String) {
        let password = self.password(user);
        let (image, pushed) = self.try_push(repo, Auth::Creds(user, &password));
        pushed
            .output
            .assert_success(&format!("skopeo push of {repo} as {user}"));
        let digest = pushed
            .digest
            .unwrap_or_else(|| panic!("skopeo push of {repo} wrote no --digestfile"));
        assert!(
            digest.starts_with("sha256:"),
            "odd pushed digest {digest:?}"
        );
        (image, digest)
    }

    /// Verifies an access token with the server's certificate and this
    /// world's service and issuer.
    pub fn verify_access_token(&self, token: &str) -> AccessClaims {
        verify_access_token(token, &self.server.signing_cert_pem(), SERVICE, ISSUER)
    }

    /// Logs of the token server and registry, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.server.logs(), self.registry.logs())
    }
}
