//! What the Docker Engine tests share: a world with the credential helper
//! tests' policy (alice publishes `public/`, anyone pulls it, each account
//! owns its namespace), a private dockerd beside it, helper setups for an
//! account, and readers for what the daemon did at the token server.

use regauth_e2e::World;
use regauth_e2e::credential_helper::audit::{audit_lines, log_field};
use regauth_e2e::credential_helper::{HelperConfig, HelperEnv, Identity, Output, RegistryEntry};
use regauth_e2e::docker::{DockerCli, Dockerd};
use regauth_e2e::ops::{metric, metrics};
use regauth_e2e::token_server::TokenServer;
use serde_json::{Value, json};

use crate::credential_helper_common::POLICY;

/// The `client_id` the Docker daemon sends to the token server.
pub const DOCKER_CLIENT_ID: &str = "docker";

/// A world (token server, registry) with [`POLICY`] and a private dockerd.
/// The daemon drops first, so its containers go before the registry does.
pub struct DockerWorld {
    /// The private Docker Engine.
    pub docker: Dockerd,
    /// Token server, registry, skopeo.
    pub world: World,
}

impl DockerWorld {
    /// Starts the world and the daemon.
    pub fn start() -> Self {
        let world = World::builder().server(|s| s.policy(POLICY)).start();
        let docker = Dockerd::start(world.dir());
        Self { docker, world }
    }

    /// A helper setup whose one entry serves this world's registry with
    /// `user`'s account (password in a 0600 file), in the `output` form.
    pub fn helper_for(&self, user: &str, output: Output) -> HelperEnv {
        let dir = self.world.new_dir("helper");
        let identity = Identity::account(&dir.join("identity"), user, &self.world.password(user));
        let entry = RegistryEntry::new(
            &[&self.world.registry.host()],
            &self.world.server.url(),
            identity,
        )
        .output(output);
        HelperEnv::new(&dir, &HelperConfig::new().registry(entry))
    }

    /// A docker CLI with its own config directory, running `helper`.
    pub fn cli(&self, helper: &HelperEnv) -> DockerCli {
        self.docker
            .cli(&self.world.new_dir("docker-config"))
            .with_helper(helper)
    }

    /// `config.json` naming the helper in `credHelpers` for this registry.
    pub fn cred_helpers_config(&self) -> Value {
        json!({ "credHelpers": { self.world.registry.host(): "regauth" } })
    }

    /// A docker CLI whose `config.json` names `helper` in `credHelpers` for
    /// this registry.
    pub fn cli_with_cred_helpers(&self, helper: &HelperEnv) -> DockerCli {
        let cli = self.cli(helper);
        cli.write_config(&self.cred_helpers_config());
        cli
    }

    /// Pushes a fresh image to `repo` with skopeo as `user` (password),
    /// returning its reference.
    pub fn seed(&self, user: &str, repo: &str) -> String {
        self.world.push_as(user, repo);
        self.world.reference(repo)
    }

    /// Logs of the token server, registry and daemon, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.world.logs(), self.docker.logs())
    }
}

/// How many account passwords the server has checked so far (cache hits and
/// misses both count): a refresh token is never counted.
pub fn password_checks(server: &TokenServer) -> f64 {
    let text = metrics(server.client());
    ["hit", "miss"]
        .iter()
        .map(|result| {
            metric(
                &text,
                &format!("regauth_password_cache_total{{result=\"{result}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// The audit lines of tokens issued to the Docker daemon.
pub fn daemon_grants(server: &TokenServer) -> Vec<String> {
    audit_lines(server)
        .into_iter()
        .filter(|l| log_field(l, "client_id").as_deref() == Some(DOCKER_CLIENT_ID))
        .collect()
}

/// Asserts that a docker command succeeded, with every log on failure.
pub fn assert_docker_ok(out: &regauth_e2e::process::CmdOutput, what: &str, dw: &DockerWorld) {
    assert!(
        out.success(),
        "{what} failed:\n{}\n{}",
        out.describe(),
        dw.logs()
    );
}
