//! The static release build that the container image and the Debian
//! packages ship, built once for every test that needs it.
//!
//! `scripts/build-release.sh` builds it (the image's and the packages'
//! scripts call it too, and find it up to date). The first caller in a test
//! process runs it; the others wait for that result. A file lock in the
//! target directory makes test processes running side by side (nextest runs
//! one per test) wait for one build too, instead of each starting cargo and
//! queueing on cargo's own lock with no deadline of their own.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::bins::{target_dir, workspace_root};
use crate::process::run;

/// A cold release build of the workspace takes several minutes on two
/// cores; on a loaded machine, many more.
const BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);

static RELEASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The directory holding the static `regauth-token-server`,
/// `docker-credential-regauth` and `regauth-docgen`, built on first use.
pub fn release_dir() -> &'static Path {
    match RELEASE.get_or_init(build) {
        Ok(dir) => dir,
        Err(message) => panic!("{message}"),
    }
}

fn build() -> Result<PathBuf, String> {
    std::fs::create_dir_all(target_dir()).map_err(|e| format!("create target dir: {e}"))?;
    let lock_path = target_dir().join("regauth-release-build.lock");
    let lock =
        File::create(&lock_path).map_err(|e| format!("create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    let script = workspace_root().join("scripts").join("build-release.sh");
    let mut cmd = Command::new(&script);
    cmd.current_dir(workspace_root());
    let out = run(cmd, BUILD_TIMEOUT);
    // The lock is released when `lock` drops, after the build.
    if !out.success() {
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            out.stderr
        ));
    }
    let dir = PathBuf::from(out.stdout.lines().last().unwrap_or_default().trim());
    for bin in [
        crate::bins::TOKEN_SERVER,
        crate::bins::CREDENTIAL_HELPER,
        "regauth-docgen",
    ] {
        if !dir.join(bin).is_file() {
            return Err(format!(
                "{} succeeded but {} is missing",
                script.display(),
                dir.join(bin).display()
            ));
        }
    }
    Ok(dir)
}

/// The GNU build ID of an ELF file (`readelf -n`): stripping keeps it, so it
/// names the build a shipped binary came from.
pub fn build_id(path: &Path) -> String {
    let mut cmd = Command::new(crate::tools::require_tool("readelf", "binutils"));
    cmd.arg("-n").arg(path);
    let out = run(cmd, Duration::from_secs(30));
    out.assert_success("readelf -n");
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{} has no build ID:\n{}", path.display(), out.stdout))
}
