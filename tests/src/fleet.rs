//! A fleet on loopback: token-server replicas sharing one Redis, behind
//! haproxy, all real processes on free ports.
//!
//! Redis (`redis-server`, see [`crate::redis`]) keeps an append-only file
//! synced on every write, so a Redis killed and started again on the same
//! port and directory comes back with every revocation it acknowledged.
//! haproxy balances round-robin,
//! health-checks `/healthz` every 200 ms, and retries a request that failed
//! to connect on another replica, as a production load balancer is set up.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::net::free_port;
use crate::process::{ChildGuard, Readiness, run, wait_ready};
pub use crate::redis::Redis;
use crate::token_client::TokenClient;
use crate::token_server::{TokenServer, TokenServerBuilder};
use crate::tools::require_tool;

const READY: Duration = Duration::from_secs(20);

/// A private haproxy in front of some replicas.
#[derive(Debug)]
pub struct Haproxy {
    _process: ChildGuard,
    port: u16,
}

impl Haproxy {
    /// Balances round-robin over `backends` (loopback ports).
    pub fn start(dir: &Path, backends: &[u16]) -> Self {
        let bin = require_tool("haproxy", "haproxy");
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server r{i} 127.0.0.1:{p} check\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 15s\n    timeout server 15s\n\
             \x20   retries 3\n    option redispatch 1\n    retry-on conn-failure empty-response\n\
             frontend fleet\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n    option httpchk GET /healthz\n\
             \x20   default-server inter 200ms fall 2 rise 2\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let check = run(
            {
                let mut c = Command::new(&bin);
                c.arg("-c").arg("-f").arg(&path);
                c
            },
            Duration::from_secs(10),
        );
        check.assert_success("haproxy -c");
        let mut cmd = Command::new(bin);
        cmd.arg("-db").arg("-f").arg(&path);
        let mut process = ChildGuard::spawn(cmd, dir, "haproxy");
        let client = TokenClient::new(&format!("http://127.0.0.1:{port}"));
        match wait_ready(&mut process, READY, || {
            (client.healthz() == Some(200)).then_some(())
        }) {
            Readiness::Ready(()) => {}
            other => panic!("haproxy did not come up ({other:?})\n{}", process.logs()),
        }
        Haproxy {
            _process: process,
            port,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A replica started from the first one's config with another port.
#[derive(Debug)]
pub struct Replica {
    process: Option<ChildGuard>,
    port: u16,
    client: TokenClient,
}

impl Replica {
    /// The replica's own endpoint.
    pub fn client(&self) -> &TokenClient {
        &self.client
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Its logs so far.
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(ChildGuard::logs)
            .unwrap_or_default()
    }
}

/// Token-server replicas sharing one Redis, behind haproxy. The first
/// replica is the builder's server; the others run its config on their
/// own ports. Fields drop in order: the balancer, the replicas, Redis.
#[derive(Debug)]
pub struct Fleet {
    /// The load balancer.
    pub haproxy: Haproxy,
    /// Replicas 1.. (replica 0 is `first`).
    pub others: Vec<Replica>,
    /// Replica 0, with the config and the accounts.
    pub first: TokenServer,
    /// The shared Redis, when the fleet shares one.
    pub redis: Option<Redis>,
}

impl Fleet {
    /// Starts `replicas` servers configured by `configure`; with `shared`,
    /// they share a Redis (`shared_state`) and `extra` YAML follows it.
    pub fn start(
        dir: &Path,
        replicas: usize,
        shared: bool,
        extra: &str,
        configure: impl FnOnce(TokenServerBuilder) -> TokenServerBuilder,
    ) -> Self {
        let redis = shared.then(|| Redis::start(dir));
        let url = redis.as_ref().map(Redis::url);
        let mut fleet = Self::start_on(dir, replicas, url.as_deref(), extra, configure);
        fleet.redis = redis;
        fleet
    }

    /// Starts `replicas` servers configured by `configure` whose
    /// `shared_state` is `url` (a Redis, a proxy or sentinels the test
    /// runs), if any; `extra` YAML follows it.
    pub fn start_on(
        dir: &Path,
        replicas: usize,
        url: Option<&str>,
        extra: &str,
        configure: impl FnOnce(TokenServerBuilder) -> TokenServerBuilder,
    ) -> Self {
        let mut yaml = String::new();
        if let Some(url) = url {
            yaml.push_str(&format!("shared_state: {url}\n"));
        }
        yaml.push_str(extra);
        let first = configure(TokenServerBuilder::new().extra_config(&yaml)).start(dir);
        let config = std::fs::read_to_string(first.config_path()).expect("read replica 0 config");
        let others: Vec<Replica> = (1..replicas)
            .map(|i| start_replica(&first, &config, i, &[]))
            .collect();
        let mut ports = vec![first.port()];
        ports.extend(others.iter().map(Replica::port));
        let haproxy = Haproxy::start(dir, &ports);
        Fleet {
            haproxy,
            others,
            first,
            redis: None,
        }
    }

    /// A client of the balancer.
    pub fn client(&self) -> TokenClient {
        TokenClient::new(&self.haproxy.url())
    }

    /// A client of each replica, replica 0 first.
    pub fn replicas(&self) -> Vec<&TokenClient> {
        std::iter::once(self.first.client())
            .chain(self.others.iter().map(Replica::client))
            .collect()
    }

    /// Runs `regauth-token-server ARGS --config <replica 0's config>`.
    pub fn command(&self, args: &[&str]) -> crate::process::CmdOutput {
        let mut cmd = Command::new(crate::bins::token_server_bin());
        cmd.args(args).arg("--config").arg(self.first.config_path());
        run(cmd, Duration::from_secs(30))
    }
}

/// Another replica of `first` (its config on another port), numbered `i`,
/// started with the environment variables `env` on top: a replica outside
/// any balancer, such as one whose clock runs ahead.
pub fn replica_of(first: &TokenServer, i: usize, env: &[(&str, &str)]) -> Replica {
    let config = std::fs::read_to_string(first.config_path()).expect("read replica 0 config");
    start_replica(first, &config, i, env)
}

fn start_replica(first: &TokenServer, config: &str, i: usize, env: &[(&str, &str)]) -> Replica {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config: String = config
        .lines()
        .map(|line| {
            if line.starts_with("listen:") {
                format!("listen: 127.0.0.1:{port}")
            } else if line.starts_with("public_url:") {
                format!("public_url: {url}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = first.dir();
    let path = dir.join(format!("config-{i}.yml"));
    std::fs::write(&path, config).expect("write replica config");
    let mut cmd = Command::new(crate::bins::token_server_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .env_remove("REGAUTH_LOG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied());
    let mut process = ChildGuard::spawn(cmd, dir, &format!("replica-{i}"));
    let client = TokenClient::new(&url);
    match wait_ready(&mut process, READY, || {
        (client.healthz() == Some(200)).then_some(())
    }) {
        Readiness::Ready(()) => {}
        other => panic!(
            "replica {i} did not come up ({other:?})\n{}",
            process.logs()
        ),
    }
    Replica {
        process: Some(process),
        port,
        client,
    }
}
