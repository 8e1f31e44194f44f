//! The token server's container image: built by `deploy/container/build.sh`
//! in a private [`Dockerd`], run with `--network host`, and taken apart with
//! `docker save` to see exactly what it holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bins::workspace_root;
use crate::docker::{DockerCli, Dockerd, docker_bin};
use crate::process::{CmdOutput, run};
use crate::release::release_dir;

/// The source label the tests build with (a checkout need not have a remote).
pub const SOURCE_URL: &str = "https://regauth.invalid/regauth.git";
/// UID and GID the image runs as.
pub const IMAGE_UID: u32 = 65532;
/// Bound on one `build.sh` run once the release build exists.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// An image `build.sh` built and loaded.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// `sha256:…`, the last line `build.sh` printed.
    pub id: String,
    /// The tag it was given.
    pub tag: String,
    /// `build.sh`'s stderr (the build's progress).
    pub log: String,
}

/// Runs `deploy/container/build.sh --tag TAG` against `daemon`, with the
/// static release build made first (once per test process).
pub fn build_image(daemon: &Dockerd, tag: &str) -> BuiltImage {
    release_dir();
    let script = workspace_root().join("deploy/container/build.sh");
    let mut cmd = Command::new(&script);
    cmd.args(["--tag", tag])
        .current_dir(workspace_root())
        .env("DOCKER_HOST", daemon.host())
        .env("DOCKER", docker_bin())
        .env("DOCKER_CONFIG", daemon.dir())
        .env("REGAUTH_SOURCE_URL", SOURCE_URL)
        .env_remove("SOURCE_DATE_EPOCH");
    let out = run(cmd, BUILD_TIMEOUT);
    out.assert_success("deploy/container/build.sh");
    let id = out
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "build.sh must print the image ID last:\n{}",
        out.describe()
    );
    BuiltImage {
        id,
        tag: tag.to_owned(),
        log: out.stderr,
    }
}

/// One entry of an image layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Permission bits.
    pub mode: u32,
    /// Owner UID and GID.
    pub owner: (u64, u64),
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// A regular file's content (`None` for directories and links).
    pub content: Option<Vec<u8>>,
}

/// What `docker save` says an image is: its config and its files.
#[derive(Debug)]
pub struct SavedImage {
    /// The image config JSON.
    pub config: serde_json::Value,
    /// The config's bytes, whose SHA-256 is the image ID.
    pub config_bytes: Vec<u8>,
    /// Every layer entry by path (later layers win), paths without `./`.
    pub files: BTreeMap<String, LayerEntry>,
    /// How many layers the image has.
    pub layers: usize,
}

/// `docker save IMAGE` into `dir`, read back.
pub fn save_image(cli: &DockerCli, image: &str, dir: &Path) -> SavedImage {
    std::fs::create_dir_all(dir).expect("create save dir");
    let archive = dir.join("image.tar");
    let archive_arg = archive.to_string_lossy().into_owned();
    cli.run(&["save", "--output", &archive_arg, image])
        .assert_success("docker save");
    let mut outer = tar::Archive::new(std::fs::File::open(&archive).expect("open saved image"));
    let mut parts: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in outer.entries().expect("read saved image") {
        let mut entry = entry.expect("saved image entry");
        let path = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read saved image entry");
        parts.insert(path, bytes);
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        parts
            .get("manifest.json")
            .expect("manifest.json in the archive"),
    )
    .expect("manifest.json is JSON");
    let config_name = manifest[0]["Config"]
        .as_str()
        .expect("manifest names a config");
    let config_bytes = parts
        .get(config_name)
        .expect("the config is in the archive")
        .clone();
    let config = serde_json::from_slice(&config_bytes).expect("the config is JSON");
    let layer_names: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .expect("manifest lists layers")
        .iter()
        .map(|l| l.as_str().expect("layer path").to_owned())
        .collect();
    let mut files = BTreeMap::new();
    for name in &layer_names {
        let bytes = parts.get(name).expect("the layer is in the archive");
        let mut layer = tar::Archive::new(bytes.as_slice());
        for entry in layer.entries().expect("read layer") {
            let mut entry = entry.expect("layer entry");
            let header = entry.header().clone();
            let path = entry
                .path()
                .expect("entry path")
                .to_string_lossy()
                .into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            let content = header.entry_type().is_file().then(|| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read layer file");
                bytes
            });
            files.insert(
                path,
                LayerEntry {
                    mode: header.mode().expect("mode") & 0o7777,
                    owner: (header.uid().expect("uid"), header.gid().expect("gid")),
                    mtime: header.mtime().expect("mtime"),
                    content,
                },
            );
        }
    }
    SavedImage {
        config,
        config_bytes,
        files,
        layers: layer_names.len(),
    }
}

/// A container started with `docker run --detach`; removed on drop.
#[derive(Debug)]
pub struct Container {
    cli: DockerCli,
    id: String,
}

impl Container {
    /// `docker run --detach --network host ARGS… IMAGE COMMAND…`.
    pub fn run(cli: &DockerCli, run_args: &[&str], image: &str, command: &[&str]) -> Self {
        let mut args = vec!["run", "--detach", "--network", "host"];
        args.extend_from_slice(run_args);
        args.push(image);
        args.extend_from_slice(command);
        let out = cli.run(&args);
        out.assert_success("docker run");
        Self {
            cli: cli.clone(),
            id: out.stdout.trim().to_owned(),
        }
    }

    /// The container ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `docker logs`: both streams of the container's process.
    pub fn logs(&self) -> String {
        let out = self.cli.run(&["logs", &self.id]);
        format!(
            "--- container stdout ---\n{}\n--- container stderr ---\n{}",
            out.stdout, out.stderr
        )
    }

    /// `docker inspect --format FORMAT`.
    pub fn inspect(&self, format: &str) -> String {
        let out = self.cli.run(&["inspect", "--format", format, &self.id]);
        out.assert_success("docker inspect");
        out.stdout.trim().to_owned()
    }

    /// The host PID of the container's main process.
    pub fn pid(&self) -> u32 {
        let pid = self.inspect("{{.State.Pid}}");
        pid.parse()
            .unwrap_or_else(|e| panic!("container PID {pid:?}: {e}\n{}", self.logs()))
    }

    /// Runs `docker ARGS…` with this CLI (for checks the methods lack).
    pub fn docker(&self, args: &[&str]) -> CmdOutput {
        self.cli.run(args)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.cli.run(&["rm", "--force", "--volumes", &self.id]);
    }
}

/// The value of `key` (`Uid`, `Gid`, `CapEff`…) in `/proc/PID/status`.
pub fn proc_status(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {key}"))
}

/// A host directory the image's user owns (mode 0700), to mount as `/data`
/// or `/config`.
pub fn owned_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    chown_recursive(path);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
    path.to_owned()
}

/// Gives everything under `path` to the image's user.
pub fn chown_recursive(path: &Path) {
    let mut cmd = Command::new("chown");
    cmd.arg("-R")
        .arg(format!("{IMAGE_UID}:{IMAGE_UID}"))
        .arg(path);
    run(cmd, Duration::from_secs(30)).assert_success("chown -R");
}
