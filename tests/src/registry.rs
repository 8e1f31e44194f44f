//! The distribution registry 2.8 fixture, configured from `registry-config`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::net::free_port;
use crate::process::{ChildGuard, PORT_ATTEMPTS, Readiness, address_in_use, wait_ready};
use crate::token_client::{HttpReply, http_client, send};
use crate::token_server::{SERVICE, TokenServer};
use crate::tools::docker_registry;

/// How long the registry gets to start answering.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Media types a client accepts when fetching manifests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A running `docker-registry serve`, killed on drop.
#[derive(Debug)]
pub struct Registry {
    process: ChildGuard,
    port: u16,
    dir: PathBuf,
    auth_block: String,
}

impl Registry {
    /// Starts a registry under `parent/registry` whose `auth:` block is exactly
    /// what `regauth-token-server registry-config` prints for `server`.
    pub fn start(server: &TokenServer, parent: &Path) -> Self {
        let dir = parent.join("registry");
        std::fs::create_dir_all(&dir).expect("create registry dir");
        let auth_block = server.registry_config(&dir.join("auth"));
        assert!(
            dir.join("auth").join("bundle.pem").is_file(),
            "registry-config did not write bundle.pem"
        );
        Self::start_with_auth(&auth_block, &server.token_url(), SERVICE, parent)
    }

    /// Starts a registry under `parent/registry` with the `auth:` block a
    /// token server printed (its `rootcertbundle` must exist), checking that
    /// its challenge names `realm` and `service`: for token servers that are
    /// not a [`TokenServer`] fixture (a container, a packaged install).
    pub fn start_with_auth(auth_block: &str, realm: &str, service: &str, parent: &Path) -> Self {
        let bin = docker_registry();
        let dir = parent.join("registry");
        std::fs::create_dir_all(&dir).expect("create registry dir");
        let auth_block = auth_block.to_owned();
        assert!(
            auth_block.trim_start().starts_with("auth:") && auth_block.contains("token:"),
            "registry-config did not print an `auth:` block with `token:`:\n{auth_block}"
        );

        let config_path = dir.join("config.yml");
        let http = http_client();
        let mut attempt = 0;
        let (process, port, challenge) = loop {
            attempt += 1;
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: {secret}\n\
                 {auth}\n",
                root = serde_json::to_string(&dir.join("data").to_string_lossy())
                    .expect("serialize path"),
                secret = crate::secrets::random_hex(16),
                auth = auth_block.trim_end(),
            );
            std::fs::write(&config_path, &config).expect("write registry config");

            let mut cmd = Command::new(&bin);
            cmd.arg("serve").arg(&config_path).current_dir(&dir);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(key);
                }
            }
            let mut process = ChildGuard::spawn(cmd, &dir, "registry");
            let url = format!("http://127.0.0.1:{port}/v2/");
            let probe = || {
                let response = http.get(&url).timeout(Duration::from_secs(2)).send().ok()?;
                let header = response
                    .headers()
                    .get("www-authenticate")?
                    .to_str()
                    .ok()?
                    .to_owned();
                (response.status().as_u16() == 401 && header.starts_with("Bearer realm="))
                    .then_some(header)
            };
            match wait_ready(&mut process, READY_TIMEOUT, probe) {
                Readiness::Ready(challenge) => break (process, port, challenge),
                Readiness::Exited(_)
                    if attempt < PORT_ATTEMPTS && address_in_use(&process.logs()) =>
                {
                    continue;
                }
                Readiness::Exited(status) => panic!(
                    "registry exited early ({status})\nconfig:\n{config}\n{}",
                    process.logs()
                ),
                Readiness::TimedOut => panic!(
                    "registry did not answer GET /v2/ with a 401 Bearer challenge within {READY_TIMEOUT:?}\nconfig:\n{config}\n{}",
                    process.logs()
                ),
            }
        };
        let expected_realm = format!("realm=\"{realm}\"");
        assert!(
            challenge.contains(&expected_realm)
                && challenge.contains(&format!("service=\"{service}\"")),
            "registry challenge {challenge:?} does not point at {expected_realm} for service {service}"
        );

        Self {
            process,
            port,
            dir,
            auth_block,
        }
    }

    /// `127.0.0.1:PORT`, the registry host as clients name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT/REPO:latest`.
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}:latest", self.host())
    }

    /// The `auth:` block the registry was configured with.
    pub fn auth_block(&self) -> &str {
        &self.auth_block
    }

    /// The registry's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Both output streams, labelled.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// `GET /v2/REPO/manifests/REFERENCE` with an optional bearer token.
    pub fn get_manifest(&self, repo: &str, reference: &str, bearer: Option<&str>) -> HttpReply {
        let mut request = http_client()
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.url()))
            .header("Accept", MANIFEST_ACCEPT);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        send(request)
    }
}
