//! A private containerd daemon for the test, and `ctr` helpers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{ChildGuard, CmdOutput, Readiness, run, wait_ready};
use crate::tools::{containerd, ctr};

/// How long containerd gets to start serving its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one `ctr` invocation.
const CTR_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest unix socket path the kernel accepts (sun_path minus NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How `ctr images pull` authenticates.
#[derive(Debug, Clone, Copy)]
pub enum CtrAuth<'a> {
    /// No credentials.
    Anonymous,
    /// `--user USER:PASSWORD`.
    User(&'a str, &'a str),
    /// `--refresh TOKEN`.
    Refresh(&'a str),
}

/// TLS options for `ctr images pull`. ctr 1.6 builds one HTTP transport per
/// registry host from them and uses it for every connection of the pull, the
/// token realm included, so they are how ctr reaches an HTTPS token server
/// behind a plain-HTTP registry.
///
/// Beware: for a registry named `localhost` or a loopback IP, with no
/// `hosts.toml`, ctr 1.6 turns TLS verification off for that host (realm
/// included) whatever these flags say. To test verification, name the
/// registry otherwise and map it with [`CtrTls::hosts_dir`]
/// (see [`write_hosts_toml`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CtrTls<'a> {
    /// `--hosts-dir PATH`: per-registry `hosts.toml` files.
    pub hosts_dir: Option<&'a Path>,
    /// `--tlscacert PATH`: trust this CA (instead of the system roots).
    pub ca: Option<&'a Path>,
    /// `--tlscert PATH --tlskey PATH`: present this client certificate.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// `--skip-verify`: accept any server certificate.
    pub skip_verify: bool,
}

impl CtrTls<'_> {
    /// The `ctr images pull` flags for these options.
    pub fn args(&self) -> Vec<String> {
        let path = |p: &Path| {
            p.to_str()
                .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
                .to_owned()
        };
        let mut args = Vec::new();
        if let Some(dir) = self.hosts_dir {
            args.extend(["--hosts-dir".to_owned(), path(dir)]);
        }
        if let Some(ca) = self.ca {
            args.extend(["--tlscacert".to_owned(), path(ca)]);
        }
        if let Some((cert, key)) = self.client_cert {
            args.extend(["--tlscert".to_owned(), path(cert)]);
            args.extend(["--tlskey".to_owned(), path(key)]);
        }
        if self.skip_verify {
            args.push("--skip-verify".to_owned());
        }
        args
    }
}

/// Writes `hosts_dir/NAMESPACE/hosts.toml` sending registry `namespace`
/// (`host:port` as it appears in image references) to `server` (for example
/// `http://127.0.0.1:PORT`). The file sets no TLS options, so ctr applies its
/// command-line TLS flags to the host and its token realm.
///
/// ctr 1.6 rejects a file without a `[host]` table ("invalid `host` tree"),
/// so `server` appears both as `server` and as the one pull/resolve host.
pub fn write_hosts_toml(hosts_dir: &Path, namespace: &str, server: &str) {
    let dir = hosts_dir.join(namespace);
    std::fs::create_dir_all(&dir).expect("create hosts.toml dir");
    let server = serde_json::to_string(server).expect("serialize server URL");
    let toml =
        format!("server = {server}\n\n[host.{server}]\n  capabilities = [\"pull\", \"resolve\"]\n");
    std::fs::write(dir.join("hosts.toml"), toml).expect("write hosts.toml");
}

/// A running containerd with its own root, state and socket; killed on drop.
#[derive(Debug)]
pub struct Containerd {
    process: ChildGuard,
    dir: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd under `parent/containerd` with the CRI plugin and the
    /// snapshotters that cannot work in a sandbox disabled.
    pub fn start(parent: &Path) -> Self {
        let bin = containerd();
        ctr();
        let dir = parent.join("containerd");
        for sub in ["root", "state", "opt", "run"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create containerd dir");
        }
        let socket = dir.join("run").join("containerd.sock");
        assert!(
            socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "containerd socket path {} is too long for a unix socket; set TMPDIR to a shorter directory",
            socket.display()
        );
        let toml_path =
            |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("serialize path");
        let config = format!(
            r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {grpc}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
            root = toml_path(&dir.join("root")),
            state = toml_path(&dir.join("state")),
            grpc = toml_path(&socket),
            ttrpc = toml_path(&dir.join("run").join("containerd.sock.ttrpc")),
            opt = toml_path(&dir.join("opt")),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, &config).expect("write containerd config");

        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config_path).current_dir(&dir);
        let mut process = ChildGuard::spawn(cmd, &dir, "containerd");
        let probe = || {
            (socket.exists() && run_ctr(&socket, &dir, "default", &["version"]).success())
                .then_some(())
        };
        match wait_ready(&mut process, READY_TIMEOUT, probe) {
            Readiness::Ready(()) => {}
            Readiness::Exited(status) => {
                panic!("containerd exited early ({status})\n{}", process.logs())
            }
            Readiness::TimedOut => panic!(
                "containerd did not serve {} within {READY_TIMEOUT:?}\n{}",
                socket.display(),
                process.logs()
            ),
        }
        Self {
            process,
            dir,
            socket,
        }
    }

    /// The grpc socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Both output streams of the daemon, labelled.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Runs `ctr --address SOCK args…` (default namespace).
    pub fn ctr(&self, args: &[&str]) -> CmdOutput {
        self.ctr_in("default", args)
    }

    /// Runs `ctr --address SOCK --namespace NS args…`.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> CmdOutput {
        run_ctr(&self.socket, &self.dir, namespace, args)
    }

    /// `ctr images pull --plain-http --snapshotter native [auth] REFERENCE` in `namespace`.
    pub fn pull(&self, namespace: &str, reference: &str, auth: CtrAuth<'_>) -> CmdOutput {
        self.pull_tls(namespace, reference, auth, CtrTls::default())
    }

    /// Like [`Containerd::pull`], adding the TLS flags of `tls`. The registry
    /// stays plain HTTP (`--plain-http`); the flags matter for the HTTPS realm.
    pub fn pull_tls(
        &self,
        namespace: &str,
        reference: &str,
        auth: CtrAuth<'_>,
        tls: CtrTls<'_>,
    ) -> CmdOutput {
        let user;
        let tls_args = tls.args();
        let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
        match auth {
            CtrAuth::Anonymous => {}
            CtrAuth::User(name, password) => {
                user = format!("{name}:{password}");
                args.extend(["--user", user.as_str()]);
            }
            CtrAuth::Refresh(token) => args.extend(["--refresh", token]),
        }
        args.extend(tls_args.iter().map(String::as_str));
        args.push(reference);
        self.ctr_in(namespace, &args)
    }

    /// The manifest digest `ctr images ls` lists for `reference` in `namespace`.
    pub fn image_digest(&self, namespace: &str, reference: &str) -> Option<String> {
        let out = self.ctr_in(namespace, &["images", "ls"]);
        out.assert_success("ctr images ls");
        out.stdout.lines().skip(1).find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(reference))
                .then(|| fields.find(|f| f.starts_with("sha256:")).map(str::to_owned))
                .flatten()
        })
    }
}

fn run_ctr(socket: &Path, dir: &Path, namespace: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(ctr());
    cmd.arg("--address")
        .arg(socket)
        .arg("--namespace")
        .arg(namespace)
        .args(args)
        .current_dir(dir)
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .env_remove("CONTAINERD_SNAPSHOTTER");
    for proxy in crate::process::PROXY_VARS {
        cmd.env_remove(proxy);
    }
    run(cmd, CTR_TIMEOUT)
}
