//! Runs `docker-credential-regauth` the way clients do: the action in
//! `argv`, the payload on stdin, an environment of its own.
//!
//! A [`HelperEnv`] is one test's helper setup: a directory holding
//! `helper.yaml`, the credential cache and a `HOME`. Every run starts from
//! an empty environment plus `PATH` and those variables, so nothing of the
//! machine (a real `~/.config/regauth`, proxies, `REGAUTH_LOG`) leaks in.
//! [`skopeo::HelperSkopeo`] runs skopeo with the same variables and the
//! helper named in `credHelpers`.

pub mod audit;
pub mod config;
pub mod github_actions;
pub mod skopeo;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use crate::bins::credential_helper_bin;
use crate::process::{CmdOutput, run_with_stdin};

pub use self::config::{HelperConfig, Identity, Output, RegistryEntry};

/// What the helper prints for a registry it has nothing for.
pub const NOT_FOUND: &str = "credentials not found in native keychain";
/// The username that marks `Secret` as an identity token.
pub const IDENTITY_TOKEN_USERNAME: &str = "<token>";
/// The prefix of the helper's one-line failure message on stdout.
pub const FAILURE_PREFIX: &str = "docker-credential-regauth: ";
/// Bound on one helper run (its own exchange timeout is 10 s by default).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The reply to `get`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperCredentials {
    /// The server URL as asked.
    #[serde(rename = "ServerURL")]
    pub server_url: String,
    /// `<token>` or a username.
    #[serde(rename = "Username")]
    pub username: String,
    /// The regauth refresh token.
    #[serde(rename = "Secret")]
    pub secret: String,
}

/// Parses a successful `get`: exit 0 and stdout exactly one JSON line with
/// the three docker fields and nothing else. Panics otherwise.
pub fn parse_get(out: &CmdOutput, what: &str) -> HelperCredentials {
    assert!(out.success(), "{what}: get failed:\n{}", out.describe());
    let body = out.stdout.strip_suffix('\n').unwrap_or(&out.stdout);
    assert!(
        !body.is_empty() && !body.contains('\n'),
        "{what}: stdout must be exactly one JSON line:\n{}",
        out.describe()
    );
    serde_json::from_str(body).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not {{\"ServerURL\",\"Username\",\"Secret\"}} JSON ({e}):\n{}",
            out.describe()
        )
    })
}

/// Asserts the exact not-found answer: stdout is the not-found text alone
/// and the exit status is 1.
pub fn assert_not_found(out: &CmdOutput, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: not found exits 1:\n{}",
        out.describe()
    );
    assert_eq!(
        out.stdout.trim_end_matches('\n'),
        NOT_FOUND,
        "{what}: stdout must be exactly the not-found text:\n{}",
        out.describe()
    );
}

/// Asserts a real failure: exit 1, one line on stdout starting
/// `docker-credential-regauth: ` (never the not-found text), detail on
/// stderr. Returns the stdout line.
pub fn assert_real_failure(out: &CmdOutput, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: a failure exits 1:\n{}",
        out.describe()
    );
    let line = out.stdout.trim_end_matches('\n');
    assert!(
        line.starts_with(FAILURE_PREFIX) && !line.contains('\n'),
        "{what}: stdout must be one line starting {FAILURE_PREFIX:?}:\n{}",
        out.describe()
    );
    assert!(
        !line.contains(NOT_FOUND),
        "{what}: a real failure must never look like not-found:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "{what}: the detail belongs on stderr:\n{}",
        out.describe()
    );
    line.to_owned()
}

/// One test's helper setup: config, cache and home under one directory.
#[derive(Debug, Clone)]
pub struct HelperEnv {
    dir: PathBuf,
    config_path: PathBuf,
    cache_dir: PathBuf,
    vars: Vec<(String, String)>,
}

impl HelperEnv {
    /// Writes `config` to `dir/helper.yaml`; the cache is `dir/cache`
    /// (`REGAUTH_CACHE_DIR`) and `HOME` is `dir/home`.
    pub fn new(dir: &Path, config: &HelperConfig) -> Self {
        std::fs::create_dir_all(dir.join("home")).expect("create helper home");
        let config_path = dir.join("helper.yaml");
        config.write(&config_path);
        let cache_dir = dir.join("cache");
        let vars = vec![
            (
                "REGAUTH_HELPER_CONFIG".to_owned(),
                config_path.to_string_lossy().into_owned(),
            ),
            (
                "REGAUTH_CACHE_DIR".to_owned(),
                cache_dir.to_string_lossy().into_owned(),
            ),
            (
                "HOME".to_owned(),
                dir.join("home").to_string_lossy().into_owned(),
            ),
        ];
        Self {
            dir: dir.to_owned(),
            config_path,
            cache_dir,
            vars,
        }
    }

    /// The directory holding everything.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The cache directory (`REGAUTH_CACHE_DIR`).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Adds or replaces a variable (an identity variable, `REGAUTH_LOG`, …).
    pub fn with_var(mut self, key: &str, value: &str) -> Self {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Removes a variable.
    pub fn without_var(mut self, key: &str) -> Self {
        self.vars.retain(|(k, _)| k != key);
        self
    }

    /// The same setup with a different cache directory.
    pub fn with_cache_dir(self, dir: &Path) -> Self {
        let mut env = self.with_var("REGAUTH_CACHE_DIR", &dir.to_string_lossy());
        env.cache_dir = dir.to_owned();
        env
    }

    /// The variables every run gets (besides `PATH`).
    pub fn vars(&self) -> Vec<(String, String)> {
        self.vars.clone()
    }

    /// The helper command with an empty environment plus `PATH` and [`HelperEnv::vars`].
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(credential_helper_bin());
        cmd.args(args).current_dir(&self.dir).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for (key, value) in &self.vars {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs `docker-credential-regauth ARGS` with `stdin`.
    pub fn run(&self, args: &[&str], stdin: &str) -> CmdOutput {
        run_with_stdin(self.command(args), stdin.as_bytes(), TIMEOUT)
    }

    /// `get` with `server_url` on stdin, exactly as given.
    pub fn get(&self, server_url: &str) -> CmdOutput {
        self.run(&["get"], server_url)
    }

    /// `get`, asserting success; the parsed credentials.
    pub fn get_ok(&self, server_url: &str) -> HelperCredentials {
        parse_get(&self.get(server_url), &format!("get {server_url:?}"))
    }

    /// The files in the cache directory whose extension is `ext`, sorted.
    fn files_ending(&self, ext: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        files
    }

    /// The credential files (`*.json`) in the cache directory.
    pub fn cache_files(&self) -> Vec<PathBuf> {
        self.files_ending("json")
    }

    /// The temporary files in the cache (`tmp/KEY.PID`, and `.KEY.PID.tmp`
    /// as earlier versions wrote them): writes in progress, or left behind
    /// by an invocation killed mid-write.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        let mut files = self.files_ending("tmp");
        if let Ok(entries) = std::fs::read_dir(self.cache_dir.join("tmp")) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
        files.sort();
        files
    }

    /// Starts `get` for `server_url` without waiting for it (stdout and
    /// stderr discarded), for tests that kill it midway.
    pub fn spawn_get(&self, server_url: &str) -> std::process::Child {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .command(&["get"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-credential-regauth get");
        let mut stdin = child.stdin.take().expect("piped stdin");
        // The helper may already be dead (killed): a broken pipe is fine.
        let _ = stdin.write_all(server_url.as_bytes());
        child
    }

    /// The single credential file in the cache; panics unless there is exactly one.
    pub fn only_cache_file(&self) -> PathBuf {
        let files = self.cache_files();
        assert_eq!(
            files.len(),
            1,
            "expected exactly one credential file in {}: {files:?}",
            self.cache_dir.display()
        );
        files.into_iter().next().expect("one file")
    }
}

/// The lifetime fields of a cache file, as the helper wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTimes {
    /// `issued_at` (seconds since the epoch).
    pub issued_at: u64,
    /// `expires_at` (seconds since the epoch).
    pub expires_at: u64,
}

/// Reads a cache file's JSON, panicking with the content if it is not an
/// object with integer `issued_at` and `expires_at` (the helper's format).
pub fn read_cache_file(path: &Path) -> (serde_json::Value, CacheTimes) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read cache file {}: {e}", path.display()));
    let value: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("cache file {} is not JSON ({e}): {text}", path.display()));
    let field = |k: &str| {
        value[k].as_u64().unwrap_or_else(|| {
            panic!(
                "cache file {} has no integer {k:?} (has the format changed?): {text}",
                path.display()
            )
        })
    };
    let times = CacheTimes {
        issued_at: field("issued_at"),
        expires_at: field("expires_at"),
    };
    (value, times)
}

/// True when `path` holds a whole cache entry in the helper's format: a
/// JSON object with a non-empty `refresh_token` and integer `issued_at` and
/// `expires_at`, the first before the second. A half-written file is not.
pub fn is_whole_cache_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let token = value["refresh_token"].as_str().unwrap_or_default();
    match (value["issued_at"].as_u64(), value["expires_at"].as_u64()) {
        (Some(issued), Some(expires)) => !token.is_empty() && issued < expires,
        _ => false,
    }
}

/// Rewrites a cache file's `issued_at` and `expires_at`, keeping its token,
/// so a test can age a credential without waiting for it. The file keeps
/// mode 0600.
pub fn set_cache_times(path: &Path, times: CacheTimes) {
    let (mut value, _) = read_cache_file(path);
    value["issued_at"] = times.issued_at.into();
    value["expires_at"] = times.expires_at.into();
    std::fs::write(path, value.to_string())
        .unwrap_or_else(|e| panic!("rewrite cache file {}: {e}", path.display()));
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Seconds since the epoch, now (the test issuers' clock).
pub fn unix_now() -> u64 {
    u64::try_from(crate::oidc_issuer::claims::now()).expect("clock after 1970")
}
