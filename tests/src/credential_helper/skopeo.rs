//! skopeo with `docker-credential-regauth` as its credential helper.
//!
//! The auth file holds only `{"credHelpers": {"HOST": "regauth"}}`; skopeo
//! finds `docker-credential-regauth` on `PATH` (the cargo target dir goes
//! first) and the helper inherits skopeo's environment, so the helper's
//! config, cache and identity variables are set on skopeo itself. The
//! environment starts empty: nothing of the test process leaks in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::bins::credential_helper_bin;
use crate::oci::OciImage;
use crate::process::{CmdOutput, run};
use crate::tools::skopeo;

use super::HelperEnv;

/// The helper name in `credHelpers` (skopeo runs `docker-credential-<name>`).
pub const HELPER_NAME: &str = "regauth";
/// Bound on one skopeo invocation.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Writes an auth file that sends every host in `hosts` to the credential
/// helper `helper_name` (`docker-credential-<helper_name>`).
pub fn write_cred_helpers_authfile(path: &Path, hosts: &[&str], helper_name: &str) {
    let helpers: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|h| ((*h).to_owned(), helper_name.into()))
        .collect();
    let body = serde_json::json!({ "credHelpers": helpers });
    std::fs::write(
        path,
        serde_json::to_vec_pretty(&body).expect("serialize auth file"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A skopeo runner whose registry credentials come from the helper.
#[derive(Debug)]
pub struct HelperSkopeo {
    dir: PathBuf,
    authfile: PathBuf,
    registry_host: String,
    env: Vec<(String, String)>,
    path_first: Vec<PathBuf>,
    calls: AtomicUsize,
}

impl HelperSkopeo {
    /// Prepares `dir` (policy, registries.conf, home, tmp, auth file with
    /// `credHelpers` for `registry_host`) and takes the helper's variables
    /// from `helper`.
    pub fn new(dir: &Path, registry_host: &str, helper: &HelperEnv) -> Self {
        crate::skopeo::prepare_dir(dir);
        let authfile = dir.join("auth.json");
        write_cred_helpers_authfile(&authfile, &[registry_host], HELPER_NAME);
        Self {
            dir: dir.to_owned(),
            authfile,
            registry_host: registry_host.to_owned(),
            env: helper.vars(),
            path_first: Vec::new(),
            calls: AtomicUsize::new(0),
        }
    }

    /// The auth file skopeo is given.
    pub fn authfile(&self) -> &Path {
        &self.authfile
    }

    /// Adds (or replaces) a variable in skopeo's environment, and so the helper's.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Names `docker-credential-<name>` in `credHelpers` instead, found
    /// first in `bin_dir` (a wrapper that records how skopeo calls it).
    pub fn with_helper(mut self, name: &str, bin_dir: &Path) -> Self {
        write_cred_helpers_authfile(&self.authfile, &[&self.registry_host], name);
        self.path_first.push(bin_dir.to_owned());
        self
    }

    /// `PATH`: [`HelperSkopeo::with_helper`] dirs, then the directory of
    /// `docker-credential-regauth`, then the test process's `PATH`.
    fn path_var(&self) -> String {
        let helper_dir = credential_helper_bin()
            .parent()
            .expect("the helper binary has a directory")
            .to_owned();
        let rest = std::env::var_os("PATH").unwrap_or_default();
        let dirs = self
            .path_first
            .iter()
            .cloned()
            .chain(std::iter::once(helper_dir))
            .chain(std::env::split_paths(&rest));
        std::env::join_paths(dirs)
            .expect("PATH entries join")
            .to_string_lossy()
            .into_owned()
    }

    /// Runs `skopeo GLOBAL-FLAGS args…` with the helper's environment.
    pub fn run(&self, args: &[String]) -> CmdOutput {
        let mut cmd = Command::new(skopeo());
        cmd.arg("--policy")
            .arg(self.dir.join("policy.json"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--command-timeout", "100s"])
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", self.path_var())
            .env("HOME", self.dir.join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("REGISTRIES_CONFIG_PATH", self.dir.join("registries.conf"));
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        run(cmd, TIMEOUT)
    }

    fn authfile_args(&self) -> Vec<String> {
        vec!["--authfile".into(), path_arg(&self.authfile)]
    }

    /// `skopeo copy oci:DIR:TAG docker://REFERENCE`; the digest when it succeeded.
    pub fn push(&self, image: &OciImage, reference: &str) -> (CmdOutput, Option<String>) {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let digest_file = self.dir.join(format!("digest-{n}.txt"));
        let mut args = vec![
            "copy".to_owned(),
            "--dest-tls-verify=false".to_owned(),
            "--digestfile".to_owned(),
            path_arg(&digest_file),
        ];
        args.extend(self.authfile_args());
        args.push(image.skopeo_ref());
        args.push(format!("docker://{reference}"));
        let output = self.run(&args);
        let digest = output
            .success()
            .then(|| std::fs::read_to_string(&digest_file).ok())
            .flatten()
            .map(|d| d.trim().to_owned());
        (output, digest)
    }

    /// `skopeo copy docker://REFERENCE oci:DEST:latest`.
    pub fn pull(&self, reference: &str, dest: &Path) -> CmdOutput {
        let mut args = vec!["copy".to_owned(), "--src-tls-verify=false".to_owned()];
        args.extend(self.authfile_args());
        args.push(format!("docker://{reference}"));
        args.push(format!("oci:{}:latest", dest.display()));
        self.run(&args)
    }

    /// `skopeo [--debug] inspect docker://REFERENCE`.
    pub fn inspect(&self, reference: &str, debug: bool) -> CmdOutput {
        let mut args = Vec::new();
        if debug {
            args.push("--debug".to_owned());
        }
        args.extend(["inspect".to_owned(), "--tls-verify=false".to_owned()]);
        args.extend(self.authfile_args());
        args.push(format!("docker://{reference}"));
        self.run(&args)
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
