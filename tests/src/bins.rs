//! Locates this workspace's own binaries, building them once per test process.
//!
//! The e2e crate is a separate package, so cargo does not build the other
//! packages' binaries for it. The first caller runs
//! `$CARGO build --workspace --bins` from the workspace root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::run;

/// Name of the token server binary.
pub const TOKEN_SERVER: &str = "regauth-token-server";
/// Name of the docker credential helper binary.
pub const CREDENTIAL_HELPER: &str = "docker-credential-regauth";

/// The build is allowed this long before the tests give up on it.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

static BUILD: OnceLock<Result<(), String>> = OnceLock::new();

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives inside the workspace")
        .to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Path of the freshly built `regauth-token-server`.
pub fn token_server_bin() -> PathBuf {
    workspace_bin(TOKEN_SERVER)
}

/// Path of the freshly built `docker-credential-regauth`.
pub fn credential_helper_bin() -> PathBuf {
    workspace_bin(CREDENTIAL_HELPER)
}

/// Builds the workspace binaries (once) and returns the path of `name`.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Err(message) = BUILD.get_or_init(build_workspace_bins) {
        panic!("{message}");
    }
    let path = target_dir().join("debug").join(name);
    assert!(
        path.is_file(),
        "`cargo build --workspace --bins` succeeded but {} does not exist",
        path.display()
    );
    path
}

fn build_workspace_bins() -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--workspace", "--bins"])
        .current_dir(workspace_root());
    let out = run(cmd, BUILD_TIMEOUT);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{} build --workspace --bins` failed ({}) in {}:\n{}",
            Path::new(&cargo).display(),
            out.status,
            workspace_root().display(),
            tail(&out.stderr, 8000)
        ))
    }
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
