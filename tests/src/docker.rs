//! A private Docker Engine for the test, and the `docker` CLI pointed at it.
//!
//! [`Dockerd`] runs Debian's `dockerd` (package `docker.io`) as a plain
//! process: its own data root, exec root, socket, pidfile, config file and
//! containerd namespace, no iptables rules and no bridge, so it touches
//! nothing of the machine and several can run side by side (each with the
//! containerd it manages, apart from the one [`crate::containerd`] starts).
//! It pulls from and pushes to `127.0.0.1:PORT` over plain HTTP without an
//! `insecure-registries` entry, because loopback registries are trusted.
//!
//! [`DockerCli`] runs `docker` with an environment of its own: `DOCKER_HOST`
//! names the private daemon, `DOCKER_CONFIG` a test-written `config.json`, and
//! `PATH` holds only the directory of `docker-credential-regauth`. The CLI runs credential
//! helpers and passes the credential to the daemon; the daemon then talks to
//! the registry and the token server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bins::credential_helper_bin;
use crate::credential_helper::HelperEnv;
use crate::process::{
    ChildGuard, CmdOutput, PROXY_VARS, Readiness, run, run_with_stdin, wait_ready,
};
use crate::tools::require_tool;

/// How long dockerd gets to answer on its socket (it starts containerd first).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long dockerd gets to stop its containers and containerd on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one `docker` invocation (builds and pulls on a loaded machine).
const CLI_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest unix socket path the kernel accepts (sun_path minus NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The Docker daemon binary.
pub fn dockerd_bin() -> PathBuf {
    require_tool("dockerd", "docker.io")
}

/// The docker CLI binary.
pub fn docker_bin() -> PathBuf {
    require_tool("docker", "docker.io")
}

/// Panics unless the test runs as root: dockerd needs it (namespaces,
/// mounts, cgroups), and there is no rootless setup on Debian 12 without
/// extra packages and a user session.
pub fn require_root(what: &str) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "{what} needs root (effective uid 0, not {uid:?}); run the tests as root, as CI does"
    );
}

/// A running private `dockerd`; stopped on drop (SIGTERM by PID, then SIGKILL).
#[derive(Debug)]
pub struct Dockerd {
    process: Option<ChildGuard>,
    dir: PathBuf,
    socket: PathBuf,
    namespace: String,
}

impl Dockerd {
    /// Starts dockerd under `parent/dockerd`.
    pub fn start(parent: &Path) -> Self {
        require_root("a private dockerd");
        let bin = dockerd_bin();
        docker_bin();
        let dir = parent.join("dockerd");
        for sub in ["root", "exec"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create dockerd dir");
        }
        let socket = dir.join("docker.sock");
        // dockerd puts its containerd's socket under the exec root.
        let containerd_socket = dir.join("exec/containerd/containerd.sock");
        assert!(
            containerd_socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "dockerd socket path {} is too long for a unix socket; set TMPDIR to a shorter directory",
            containerd_socket.display()
        );
        // An empty config file, so /etc/docker/daemon.json never applies.
        let config = dir.join("daemon.json");
        std::fs::write(&config, "{}\n").expect("write daemon.json");
        let namespace = format!("regauth-e2e-{}", crate::secrets::random_hex(4));

        let mut cmd = Command::new(bin);
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .arg("--containerd-namespace")
            .arg(&namespace)
            .arg("--containerd-plugins-namespace")
            .arg(format!("{namespace}-plugins"))
            .current_dir(&dir)
            .env_remove("DOCKER_HOST");
        for proxy in PROXY_VARS {
            cmd.env_remove(proxy);
        }
        let mut process = ChildGuard::spawn(cmd, &dir, "dockerd");
        let host = format!("unix://{}", socket.display());
        let probe = || {
            if !socket.exists() {
                return None;
            }
            let mut version = Command::new(docker_bin());
            version
                .args(["version", "--format", "{{.Server.Version}}"])
                .env("DOCKER_HOST", &host)
                .env("DOCKER_CONFIG", &dir);
            let out = run(version, Duration::from_secs(20));
            (out.success() && !out.stdout.trim().is_empty()).then_some(())
        };
        match wait_ready(&mut process, READY_TIMEOUT, probe) {
            Readiness::Ready(()) => {}
            Readiness::Exited(status) => {
                panic!("dockerd exited early ({status})\n{}", process.logs())
            }
            Readiness::TimedOut => panic!(
                "dockerd did not answer on {} within {READY_TIMEOUT:?}\n{}",
                socket.display(),
                process.logs()
            ),
        }
        Self {
            process: Some(process),
            dir,
            socket,
            namespace,
        }
    }

    /// `unix:///…/docker.sock`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's directory (data root, exec root, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The containerd namespace the daemon keeps its objects in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A CLI for this daemon whose `config.json` lives in `config_dir`.
    pub fn cli(&self, config_dir: &Path) -> DockerCli {
        DockerCli::new(self, config_dir)
    }

    /// Both output streams of the daemon, labelled.
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(ChildGuard::logs)
            .unwrap_or_default()
    }

    /// Removes every container, then stops the daemon by PID: SIGTERM lets it
    /// stop the containerd it started; SIGKILL follows if it hangs, and its
    /// containerd is then stopped by the PID in containerd's pidfile.
    fn stop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        let mut ps = Command::new(docker_bin());
        ps.args(["ps", "--all", "--quiet"])
            .env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", &self.dir);
        let ids = run_quietly(ps, Duration::from_secs(30));
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut rm = Command::new(docker_bin());
            rm.args(["rm", "--force", "--volumes"])
                .args(&ids)
                .env("DOCKER_HOST", self.host())
                .env("DOCKER_CONFIG", &self.dir);
            run_quietly(rm, Duration::from_secs(60));
        }
        kill(process.pid(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while process.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if process.exited().is_none() {
            drop(process);
            let pidfile = self.dir.join("exec/containerd/containerd.pid");
            if let Some(pid) = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                kill(pid, "KILL");
            }
        }
        // dockerd leaves the host network's namespace bound under its exec
        // root (exec/netns/default) even when it stops cleanly; the test's
        // directory cannot be removed while anything is mounted in it.
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&mount)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mount points under `dir`, deepest first (from `/proc/self/mountinfo`,
/// whose mount point field escapes spaces as `\040`).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

/// Sends `signal` to `pid`; failures (the process already gone) are fine here.
fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Runs a clean-up command, ignoring failures, and returns its stdout.
fn run_quietly(mut cmd: Command, timeout: Duration) -> String {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return String::new();
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return String::new();
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    out
}

/// The `docker` CLI for one daemon, with its own `DOCKER_CONFIG` directory.
#[derive(Debug, Clone)]
pub struct DockerCli {
    host: String,
    config_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl DockerCli {
    /// A CLI for `daemon` whose `config.json` lives in `config_dir` (created).
    pub fn new(daemon: &Dockerd, config_dir: &Path) -> Self {
        std::fs::create_dir_all(config_dir.join("home")).expect("create docker config dir");
        Self {
            host: daemon.host(),
            config_dir: config_dir.to_owned(),
            env: Vec::new(),
        }
    }

    /// Gives the CLI (and so the credential helpers it runs) the helper's
    /// config, cache and home variables.
    pub fn with_helper(mut self, helper: &HelperEnv) -> Self {
        for (key, value) in helper.vars() {
            self.env.retain(|(k, _)| *k != key);
            self.env.push((key, value));
        }
        self
    }

    /// The `config.json` path.
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.join("config.json")
    }

    /// Writes `config.json`.
    pub fn write_config(&self, config: &serde_json::Value) {
        let path = self.config_path();
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(config).expect("serialize config.json"),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// `config.json` as it is now (`null` when the CLI has not written one).
    pub fn config(&self) -> serde_json::Value {
        match std::fs::read(self.config_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{} is not JSON: {e}\n{}",
                    self.config_path().display(),
                    String::from_utf8_lossy(&bytes)
                )
            }),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// `PATH`: the helper's directory alone. The CLI looks nothing else up,
    /// and with a wider `PATH` it would make any `docker-credential-pass` or
    /// `docker-credential-secretservice` on the machine its default store.
    fn path_var(&self) -> String {
        let helper_bin = credential_helper_bin();
        let helper_dir = helper_bin
            .parent()
            .expect("the helper binary has a directory");
        helper_dir.to_string_lossy().into_owned()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(docker_bin());
        cmd.args(args)
            .current_dir(&self.config_dir)
            .env_clear()
            .env("PATH", self.path_var())
            .env("HOME", self.config_dir.join("home"))
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", &self.config_dir)
            .env("DOCKER_CLI_HINTS", "false");
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs `docker args…`.
    pub fn run(&self, args: &[&str]) -> CmdOutput {
        run(self.command(args), CLI_TIMEOUT)
    }

    /// Runs `docker args…` with `stdin`.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> CmdOutput {
        run_with_stdin(self.command(args), stdin, CLI_TIMEOUT)
    }

    /// `docker pull REFERENCE`.
    pub fn pull(&self, reference: &str) -> CmdOutput {
        self.run(&["pull", reference])
    }

    /// `docker push REFERENCE`.
    pub fn push(&self, reference: &str) -> CmdOutput {
        self.run(&["push", reference])
    }

    /// `docker tag SOURCE TARGET`, asserting success.
    pub fn tag(&self, source: &str, target: &str) {
        self.run(&["tag", source, target])
            .assert_success(&format!("docker tag {source} {target}"));
    }

    /// `docker login --username USER --password-stdin HOST`.
    pub fn login(&self, host: &str, user: &str, password: &str) -> CmdOutput {
        self.run_with_stdin(
            &["login", "--username", user, "--password-stdin", host],
            password.as_bytes(),
        )
    }

    /// `docker logout HOST`.
    pub fn logout(&self, host: &str) -> CmdOutput {
        self.run(&["logout", host])
    }

    /// The ID (`sha256:…`) of the local image `reference`, if there is one.
    pub fn image_id(&self, reference: &str) -> Option<String> {
        let out = self.run(&["image", "inspect", "--format", "{{.Id}}", reference]);
        out.success().then(|| out.stdout.trim().to_owned())
    }
}
