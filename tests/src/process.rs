//! Child processes: bounded one-shot commands and long-running guarded daemons.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a finished one-shot command produced.
#[derive(Debug)]
pub struct CmdOutput {
    /// How the process ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything it wrote to stderr (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// True when the process exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout and stderr together, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Panics with the full output unless the process succeeded.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.success(), "{what} failed:\n{}", self.describe());
        self
    }
}

/// Runs `cmd` to completion with empty stdin, killing it after `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> CmdOutput {
    run_with_stdin(cmd, &[], timeout)
}

/// Runs `cmd` to completion feeding it `stdin`, killing it after `timeout`.
///
/// Panics (with whatever output was collected) when the timeout expires.
pub fn run_with_stdin(mut cmd: Command, stdin: &[u8], timeout: Duration) -> CmdOutput {
    let program = format!("{cmd:?}");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));

    let mut child_stdin = child.stdin.take().expect("piped stdin");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that exits without reading its input is not an error here.
        let _ = child_stdin.write_all(&input);
    });
    let stdout = read_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_in_background(child.stderr.take().expect("piped stderr"));

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("wait for {program}: {e}"),
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        panic!(
            "{program} did not finish within {timeout:?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        );
    };
    let _ = writer.join();
    CmdOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn read_in_background(mut source: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = source.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A long-running child process that is killed and reaped on drop.
///
/// Its stdout and stderr go to `<log_dir>/<name>.stdout.log` and
/// `<log_dir>/<name>.stderr.log`, readable while it runs.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and its output captured to log files.
    pub fn spawn(mut cmd: Command, log_dir: &Path, name: &str) -> Self {
        let stdout_path = log_dir.join(format!("{name}.stdout.log"));
        let stderr_path = log_dir.join(format!("{name}.stderr.log"));
        let create = |path: &Path| {
            File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        cmd.stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_owned(),
            child,
            stdout_path,
            stderr_path,
        }
    }

    /// The short name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Both streams, labelled, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
            self.stdout(),
            self.stderr(),
            name = self.name
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// How waiting for a daemon to become ready ended.
#[derive(Debug)]
pub enum Readiness<T> {
    /// The probe succeeded with this value.
    Ready(T),
    /// The process ended first.
    Exited(ExitStatus),
    /// Neither happened before the deadline.
    TimedOut,
}

/// Polls `probe` every 50 ms until it yields a value, the process exits, or
/// `timeout` passes.
pub fn wait_ready<T>(
    guard: &mut ChildGuard,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Readiness<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = guard.exited() {
            return Readiness::Exited(status);
        }
        if let Some(value) = probe() {
            return Readiness::Ready(value);
        }
        if Instant::now() >= deadline {
            return Readiness::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when a daemon's output says its listen address was taken, the one
/// start failure worth retrying on another port.
pub fn address_in_use(logs: &str) -> bool {
    logs.to_ascii_lowercase().contains("address already in use")
}

/// Proxy variables no test command may inherit: everything a test talks to
/// is on loopback.
pub const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// How many ports a fixture tries before giving up on port races.
pub const PORT_ATTEMPTS: usize = 3;
