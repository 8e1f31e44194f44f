//! Runs `skopeo` isolated from the machine's configuration.
//!
//! Every call gets a fresh `--authfile` (unless the test supplies one), its
//! own policy, registries.conf, HOME and temporary directory, and TLS
//! verification off (the registry is plain HTTP on loopback).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::oci::OciImage;
use crate::process::{CmdOutput, run};
use crate::tools::skopeo;

/// Bound on one skopeo invocation.
const TIMEOUT: Duration = Duration::from_secs(120);

/// How a skopeo call authenticates to the registry.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// No credentials at all (a fresh, empty auth file).
    Anonymous,
    /// `--creds`/`--src-creds`/`--dest-creds USER:PASSWORD` (with a fresh auth file).
    Creds(&'a str, &'a str),
    /// A test-written auth file passed as `--authfile`.
    AuthFile(&'a Path),
}

/// The result of pushing an image.
#[derive(Debug)]
pub struct Pushed {
    /// skopeo's output.
    pub output: CmdOutput,
    /// The pushed manifest digest from `--digestfile`, when the push succeeded.
    pub digest: Option<String>,
}

/// Lays out `dir` for isolated skopeo runs: home, XDG dirs, tmp, a policy
/// that accepts anything and a registries.conf with no search registries,
/// so nothing from the machine leaks in.
pub fn prepare_dir(dir: &Path) {
    for sub in ["home", "run", "config", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create skopeo dir");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod XDG_RUNTIME_DIR");
    }
    std::fs::write(
        dir.join("policy.json"),
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("write policy.json");
    std::fs::write(
        dir.join("registries.conf"),
        "unqualified-search-registries = []\n",
    )
    .expect("write registries.conf");
}

/// A skopeo runner whose state lives under one directory.
#[derive(Debug)]
pub struct Skopeo {
    dir: PathBuf,
    calls: AtomicUsize,
}

impl Skopeo {
    /// Prepares `dir` (policy, registries.conf, home, tmp) for skopeo runs.
    pub fn new(dir: &Path) -> Self {
        prepare_dir(dir);
        Self {
            dir: dir.to_path_buf(),
            calls: AtomicUsize::new(0),
        }
    }

    /// A path for an auth file that does not exist yet.
    pub fn fresh_authfile(&self) -> PathBuf {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("authfile-{n}.json"))
    }

    /// Runs `skopeo GLOBAL-FLAGS args…` in the isolated environment.
    pub fn run(&self, args: &[String]) -> CmdOutput {
        let mut cmd = Command::new(skopeo());
        cmd.arg("--policy")
            .arg(self.dir.join("policy.json"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--command-timeout", "100s"])
            .args(args)
            .current_dir(&self.dir)
            .env("HOME", self.dir.join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("REGISTRIES_CONFIG_PATH", self.dir.join("registries.conf"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG");
        for proxy in crate::process::PROXY_VARS {
            cmd.env_remove(proxy);
        }
        run(cmd, TIMEOUT)
    }

    /// `skopeo copy oci:DIR:TAG docker://REFERENCE`, recording the pushed digest.
    pub fn push(&self, image: &OciImage, reference: &str, auth: Auth<'_>) -> Pushed {
        let digest_file = self.dir.join(format!(
            "digest-{}.txt",
            self.calls.fetch_add(1, Ordering::Relaxed)
        ));
        let mut args = strings(&["copy", "--dest-tls-verify=false", "--digestfile"]);
        args.push(path_arg(&digest_file));
        args.extend(self.auth_args(auth, "--dest-creds"));
        args.push(image.skopeo_ref());
        args.push(format!("docker://{reference}"));
        let output = self.run(&args);
        let digest = output
            .success()
            .then(|| std::fs::read_to_string(&digest_file).ok())
            .flatten()
            .map(|d| d.trim().to_owned());
        Pushed { output, digest }
    }

    /// `skopeo inspect docker://REFERENCE` (add `--raw` via `extra`).
    pub fn inspect(&self, reference: &str, auth: Auth<'_>, extra: &[&str]) -> CmdOutput {
        let mut args = strings(&["inspect", "--tls-verify=false"]);
        args.extend(strings(extra));
        args.extend(self.auth_args(auth, "--creds"));
        args.push(format!("docker://{reference}"));
        self.run(&args)
    }

    /// `skopeo copy docker://REFERENCE oci:DEST:latest`.
    pub fn pull(&self, reference: &str, dest: &Path, auth: Auth<'_>) -> CmdOutput {
        let mut args = strings(&["copy", "--src-tls-verify=false"]);
        args.extend(self.auth_args(auth, "--src-creds"));
        args.push(format!("docker://{reference}"));
        args.push(format!("oci:{}:latest", dest.display()));
        self.run(&args)
    }

    fn auth_args(&self, auth: Auth<'_>, creds_flag: &str) -> Vec<String> {
        match auth {
            Auth::Anonymous => vec!["--authfile".into(), path_arg(&self.fresh_authfile())],
            Auth::Creds(user, password) => vec![
                "--authfile".into(),
                path_arg(&self.fresh_authfile()),
                creds_flag.into(),
                format!("{user}:{password}"),
            ],
            Auth::AuthFile(path) => vec!["--authfile".into(), path_arg(path)],
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
