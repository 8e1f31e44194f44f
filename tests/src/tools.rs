//! Checks that the external tools the tests drive are installed.

use std::path::{Path, PathBuf};

/// Returns the full path of `bin` found on `PATH`.
///
/// Panics (failing the test, never skipping it) when the tool is missing,
/// naming the Debian package that provides it.
pub fn require_tool(bin: &str, debian_package: &str) -> PathBuf {
    find_on_path(bin).unwrap_or_else(|| {
        panic!(
            "required tool `{bin}` is not on PATH; install it with \
             `apt-get install {debian_package}`"
        )
    })
}

/// The distribution registry binary (`docker-registry`).
pub fn docker_registry() -> PathBuf {
    require_tool("docker-registry", "docker-registry")
}

/// The `skopeo` binary.
pub fn skopeo() -> PathBuf {
    require_tool("skopeo", "skopeo")
}

/// The `containerd` daemon binary.
pub fn containerd() -> PathBuf {
    require_tool("containerd", "containerd")
}

/// The `ctr` client binary.
pub fn ctr() -> PathBuf {
    require_tool("ctr", "containerd")
}

/// The `htpasswd` binary.
pub fn htpasswd() -> PathBuf {
    require_tool("htpasswd", "apache2-utils")
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "apt-get install some-debian-package")]
    fn missing_tool_fails_naming_the_package() {
        require_tool("regauth-e2e-no-such-tool", "some-debian-package");
    }

    #[test]
    fn present_tool_is_found() {
        let sh = require_tool("sh", "dash");
        assert!(sh.is_absolute());
    }
}
