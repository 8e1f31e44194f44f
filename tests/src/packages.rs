//! The Debian packages, built once per test process by
//! `packaging/build-debs.sh` from the shared release build, and a sandbox
//! to install them in.
//!
//! [`PackageSandbox`] is a mount namespace in which `/etc`, `/usr` and `/var`
//! are overlays over the machine's own, with their changes kept in the
//! test's directory. `dpkg -i` inside it installs for real (maintainer
//! scripts, the system user, conffiles) while the machine, and every other
//! test, sees none of it. The network namespace is the machine's, so a
//! server started inside listens on the same loopback. It needs root, like
//! `dpkg` does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::bins::workspace_root;
use crate::docker::require_root;
use crate::process::{ChildGuard, CmdOutput, Readiness, run, run_with_stdin, wait_ready};
use crate::release::release_dir;
use crate::tools::require_tool;

/// The token server's package.
pub const SERVER_PACKAGE: &str = "regauth-token-server";
/// The credential helper's package.
pub const HELPER_PACKAGE: &str = "docker-credential-regauth";
/// Bound on building both packages once the release build exists.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound on one command in the sandbox (dpkg runs man-db's trigger).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// The directories the sandbox overlays.
const OVERLAID: [&str; 3] = ["etc", "usr", "var"];

/// The two built packages.
#[derive(Debug, Clone)]
pub struct Debs {
    /// `regauth-token-server_VERSION-1_ARCH.deb`.
    pub server: PathBuf,
    /// `docker-credential-regauth_VERSION-1_ARCH.deb`.
    pub helper: PathBuf,
}

static DEBS: OnceLock<Result<Debs, String>> = OnceLock::new();

/// Both packages, built on first use.
pub fn debs() -> &'static Debs {
    match DEBS.get_or_init(build_debs) {
        Ok(debs) => debs,
        Err(message) => panic!("{message}"),
    }
}

fn build_debs() -> Result<Debs, String> {
    release_dir();
    let script = workspace_root().join("packaging").join("build-debs.sh");
    let mut cmd = Command::new(&script);
    cmd.current_dir(workspace_root())
        .env_remove("SOURCE_DATE_EPOCH");
    let out = run(cmd, BUILD_TIMEOUT);
    if !out.success() {
        return Err(format!(
            "{} failed ({}); scripts/test.sh installs cargo-deb:\n{}",
            script.display(),
            out.status,
            out.stderr
        ));
    }
    let paths: Vec<PathBuf> = out
        .stdout
        .lines()
        .rev()
        .take(2)
        .map(|l| PathBuf::from(l.trim()))
        .collect();
    let find = |package: &str| {
        paths
            .iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .filter(|p| p.is_file())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "build-debs.sh printed no {package} package:\n{}",
                    out.stdout
                )
            })
    };
    Ok(Debs {
        server: find(SERVER_PACKAGE)?,
        helper: find(HELPER_PACKAGE)?,
    })
}

/// `dpkg-deb ARGS…`.
pub fn dpkg_deb(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(require_tool("dpkg-deb", "dpkg"));
    cmd.args(args);
    run(cmd, COMMAND_TIMEOUT)
}

/// A control field of a package (`dpkg-deb --field DEB NAME`).
pub fn field(deb: &Path, name: &str) -> String {
    let deb = deb.to_string_lossy();
    let out = dpkg_deb(&["--field", &deb, name]);
    out.assert_success("dpkg-deb --field");
    out.stdout.trim().to_owned()
}

/// A file of a package's control archive (`postinst`, `conffiles`…), or
/// `None` when the package has none.
pub fn control_file(deb: &Path, name: &str) -> Option<String> {
    let deb = deb.to_string_lossy();
    let out = dpkg_deb(&["--info", &deb, name]);
    out.success().then_some(out.stdout)
}

/// One entry of a package's data archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebEntry {
    /// `-rwxr-xr-x`, `drwxr-xr-x`, `lrwxrwxrwx`…
    pub mode: String,
    /// `root/root` (names, or `0/0`).
    pub owner: String,
    /// The path, without the leading `.`: `/usr/bin/…`.
    pub path: String,
    /// A symlink's target.
    pub link: Option<String>,
}

/// Every entry of a package's data archive (`dpkg-deb --contents`).
pub fn contents(deb: &Path) -> Vec<DebEntry> {
    let deb_arg = deb.to_string_lossy();
    let out = dpkg_deb(&["--contents", &deb_arg]);
    out.assert_success("dpkg-deb --contents");
    out.stdout
        .lines()
        .map(|line| {
            // mode owner size date time path [-> target]
            let mut parts = line.split_whitespace();
            let mode = parts.next().unwrap_or_default().to_owned();
            let owner = parts.next().unwrap_or_default().to_owned();
            let rest: Vec<&str> = parts.skip(3).collect();
            let rest = rest.join(" ");
            let (path, link) = match rest.split_once(" -> ") {
                Some((path, link)) => (path.to_owned(), Some(link.to_owned())),
                None => (rest, None),
            };
            assert!(!path.is_empty(), "odd dpkg-deb --contents line {line:?}");
            DebEntry {
                mode,
                owner,
                path: path
                    .trim_start_matches('.')
                    .trim_end_matches('/')
                    .to_owned(),
                link,
            }
        })
        .collect()
}

/// Extracts one file of a package's data archive (`usr/bin/…`) to the file
/// `dest`.
pub fn extract(deb: &Path, path: &str, dest: &Path) {
    let mut fsys = Command::new(require_tool("dpkg-deb", "dpkg"));
    fsys.arg("--fsys-tarfile").arg(deb);
    let tar = fsys
        .output()
        .unwrap_or_else(|e| panic!("dpkg-deb --fsys-tarfile {}: {e}", deb.display()));
    assert!(
        tar.status.success(),
        "dpkg-deb --fsys-tarfile {}",
        deb.display()
    );
    let mut archive = tar::Archive::new(tar.stdout.as_slice());
    for entry in archive.entries().expect("read the data archive") {
        let mut entry = entry.expect("data archive entry");
        let name = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .into_owned();
        if name.trim_start_matches("./") == path.trim_start_matches("./").trim_start_matches('/') {
            entry
                .unpack(dest)
                .unwrap_or_else(|e| panic!("unpack {name} to {}: {e}", dest.display()));
            return;
        }
    }
    panic!("{} has no {path}", deb.display());
}

/// A mount namespace with `/etc`, `/usr` and `/var` overlaid; its changes
/// vanish with it.
#[derive(Debug)]
pub struct PackageSandbox {
    holder: ChildGuard,
    dir: PathBuf,
}

impl PackageSandbox {
    /// Creates the namespace, keeping the overlays' changes under
    /// `parent/sandbox`.
    pub fn start(parent: &Path) -> Self {
        require_root("installing packages in a sandbox");
        let unshare = require_tool("unshare", "util-linux");
        require_tool("nsenter", "util-linux");
        let dir = parent.join("sandbox");
        let mut script = String::from("set -e\n");
        for top in OVERLAID {
            let (upper, work) = (
                dir.join(format!("{top}-upper")),
                dir.join(format!("{top}-work")),
            );
            for d in [&upper, &work] {
                std::fs::create_dir_all(d).expect("create overlay dir");
            }
            script.push_str(&format!(
                "mount -t overlay overlay -o lowerdir=/{top},upperdir={},workdir={} /{top}\n",
                upper.display(),
                work.display()
            ));
        }
        // Ready once every overlay is mounted; then hold the namespace open.
        script.push_str("echo ready\nexec sleep 86400\n");
        let mut cmd = Command::new(unshare);
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .current_dir(&dir);
        let mut holder = ChildGuard::spawn(cmd, &dir, "sandbox");
        let stdout = dir.join("sandbox.stdout.log");
        let ready = || {
            std::fs::read_to_string(&stdout)
                .is_ok_and(|s| s.contains("ready"))
                .then_some(())
        };
        match wait_ready(&mut holder, Duration::from_secs(30), ready) {
            Readiness::Ready(()) => {}
            Readiness::Exited(status) => {
                panic!(
                    "the package sandbox did not start ({status})\n{}",
                    holder.logs()
                )
            }
            Readiness::TimedOut => panic!("the package sandbox did not start\n{}", holder.logs()),
        }
        Self { holder, dir }
    }

    /// The sandbox's directory (overlay layers and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `argv` to run inside the namespace, with an empty environment but
    /// for `PATH` and `env`.
    pub fn command(&self, argv: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(require_tool("nsenter", "util-linux"));
        cmd.arg("--target")
            .arg(self.holder.pid().to_string())
            .args(["--mount", "--"])
            .args(argv)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs `argv` inside the namespace.
    pub fn run(&self, argv: &[&str]) -> CmdOutput {
        run(self.command(argv, &[]), COMMAND_TIMEOUT)
    }

    /// Runs `argv` inside the namespace with `env`, feeding it `stdin`.
    pub fn run_with(&self, argv: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> CmdOutput {
        run_with_stdin(self.command(argv, env), stdin, COMMAND_TIMEOUT)
    }

    /// Starts `argv` inside the namespace as a guarded daemon logging to
    /// the sandbox directory as `name`.
    pub fn spawn(&self, argv: &[&str], env: &[(&str, &str)], name: &str) -> ChildGuard {
        ChildGuard::spawn(self.command(argv, env), &self.dir, name)
    }

    /// A file as the sandbox sees it.
    pub fn read(&self, path: &str) -> String {
        let out = self.run(&["cat", path]);
        out.assert_success(&format!("cat {path} in the sandbox"));
        out.stdout
    }

    /// Writes a file inside the sandbox with `mode` (octal, like `0600`).
    pub fn write(&self, path: &str, contents: &str, mode: &str) {
        self.run_with(
            &[
                "sh",
                "-c",
                "umask 077 && cat > \"$1\" && chmod \"$2\" \"$1\"",
                "sh",
                path,
                mode,
            ],
            &[],
            contents.as_bytes(),
        )
        .assert_success(&format!("write {path} in the sandbox"));
    }

    /// True when `path` exists inside the sandbox.
    pub fn exists(&self, path: &str) -> bool {
        self.run(&["test", "-e", path]).success()
    }
}
