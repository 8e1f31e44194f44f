//! Support for the operations tests: signals, log and metric checks, config
//! rewrites, signing key rotation, a registry that can be restarted, raw
//! HTTP/1.1 and TLS probes, and a bounded background load.
//!
//! Signals go through `kill(1)` (Debian package `procps`), after checking in
//! `/proc/PID/status` that the process already catches the signal: a SIGHUP
//! that arrives before the server installed its handler would kill it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bins::token_server_bin;
use crate::net::free_port;
use crate::process::{ChildGuard, PORT_ATTEMPTS, Readiness, address_in_use, run, wait_ready};
use crate::registry::MANIFEST_ACCEPT;
use crate::token_client::{HttpReply, TokenClient, http_client, send};
use crate::token_server::{SERVICE, TokenServer};
use crate::tools::{docker_registry, require_tool};

/// Bound on one-shot commands run here.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server gets to log the outcome of a signal.
const SIGNAL_OUTCOME_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Signals

/// A signal the token server handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the config file.
    Hup,
    /// SIGTERM: stop accepting, drain, exit.
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Term => "TERM",
        }
    }

    fn number(self) -> u32 {
        match self {
            Signal::Hup => 1,
            Signal::Term => 15,
        }
    }
}

/// True when `/proc/PID/status` says the process has a handler for `signal`
/// (its bit in the `SigCgt` mask).
pub fn catches(pid: u32, signal: Signal) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal.number() - 1)) != 0)
}

/// Sends `signal` to `pid` with `kill -s`, once the process catches it.
pub fn send_signal(pid: u32, signal: Signal) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !catches(pid, signal) {
        assert!(
            Instant::now() < deadline,
            "process {pid} does not catch SIG{} (SigCgt in /proc/{pid}/status)",
            signal.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cmd = Command::new(require_tool("kill", "procps"));
    cmd.args(["-s", signal.name(), &pid.to_string()]);
    run(cmd, COMMAND_TIMEOUT).assert_success(&format!("kill -s {} {pid}", signal.name()));
}

// ---------------------------------------------------------------------------
// Logs

/// How many times `needle` occurs in `text`.
pub fn occurrences(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Polls `logs` until `needle` occurs at least `at_least` times, and returns
/// the logs then; panics with them after `timeout`.
pub fn wait_for_log(
    logs: impl Fn() -> String,
    needle: &str,
    at_least: usize,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = logs();
        if occurrences(&text, needle) >= at_least {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the log did not show {needle:?} {at_least} time(s) within {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last line of `text` containing `needle`.
pub fn last_line_with<'a>(text: &'a str, needle: &str) -> Option<&'a str> {
    text.lines().rev().find(|l| l.contains(needle))
}

// ---------------------------------------------------------------------------
// Config reload

/// What the server logs when a SIGHUP reload succeeded.
pub const RELOADED: &str = "config reloaded";
/// What the server logs when it refused a new config.
pub const REFUSED: &str = "config reload refused; the previous config keeps serving";

/// How a SIGHUP ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The new config is in force.
    Applied,
    /// The new config was refused; the log line says why.
    Refused(String),
}

/// Sends SIGHUP and waits for the server to log the outcome.
pub fn reload(server: &TokenServer) -> Reload {
    let before = server.stderr();
    let (ok, refused) = (
        occurrences(&before, RELOADED),
        occurrences(&before, REFUSED),
    );
    send_signal(server.pid(), Signal::Hup);
    let deadline = Instant::now() + SIGNAL_OUTCOME_TIMEOUT;
    loop {
        let text = server.stderr();
        if occurrences(&text, RELOADED) > ok {
            return Reload::Applied;
        }
        if occurrences(&text, REFUSED) > refused {
            let line = last_line_with(&text, REFUSED).unwrap_or_default();
            return Reload::Refused(line.to_owned());
        }
        assert!(
            Instant::now() < deadline,
            "the server logged neither {RELOADED:?} nor {REFUSED:?} within \
             {SIGNAL_OUTCOME_TIMEOUT:?} of SIGHUP:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rewrites the server's config file: `edit` maps the current text to the new one.
pub fn edit_config(server: &TokenServer, edit: impl FnOnce(&str) -> String) {
    let path = server.config_path();
    let old =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let new = edit(&old);
    assert_ne!(old, new, "the config edit changed nothing");
    std::fs::write(path, new).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Replaces the one occurrence of `from` in the server's config with `to`.
pub fn replace_in_config(server: &TokenServer, from: &str, to: &str) {
    edit_config(server, |text| {
        assert_eq!(
            occurrences(text, from),
            1,
            "expected {from:?} exactly once in the config:\n{text}"
        );
        text.replace(from, to)
    });
}

/// The `signing_keys:` block as the token server fixture writes it.
pub const FIXTURE_SIGNING_KEYS: &str =
    "signing_keys:\n  - key: keys/signing.key\n    cert: keys/signing.crt\n";

/// A `signing_keys:` block listing `signing.key`/`signing.crt` in each of
/// `dirs` (relative to the config's directory), first one signing.
pub fn signing_keys_yaml(dirs: &[&str]) -> String {
    let mut yaml = String::from("signing_keys:\n");
    for dir in dirs {
        yaml.push_str(&format!(
            "  - key: {dir}/signing.key\n    cert: {dir}/signing.crt\n"
        ));
    }
    yaml
}

// ---------------------------------------------------------------------------
// Keys and JWKS

/// A key written by `keys generate`.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The directory holding `signing.key` and `signing.crt`.
    pub dir: PathBuf,
    /// The kid `keys generate` printed.
    pub kid: String,
}

/// Runs `regauth-token-server keys generate --alg ES256 --out DIR` and reads
/// the kid from its output (`wrote … (ES256, kid KID)`).
pub fn generate_key(dir: &Path) -> GeneratedKey {
    let mut cmd = Command::new(token_server_bin());
    cmd.args(["keys", "generate", "--alg", "ES256", "--out"])
        .arg(dir);
    let out = run(cmd, COMMAND_TIMEOUT);
    out.assert_success("regauth-token-server keys generate");
    let kid = out
        .stdout
        .rsplit_once("kid ")
        .and_then(|(_, rest)| rest.trim().strip_suffix(')'))
        .unwrap_or_else(|| panic!("no kid in the output of keys generate:\n{}", out.stdout))
        .to_owned();
    assert_eq!(
        kid.split(':').map(str::len).collect::<Vec<_>>(),
        [4; 12],
        "kid {kid:?} is not in the libtrust form"
    );
    GeneratedKey {
        dir: dir.to_path_buf(),
        kid,
    }
}

/// The kids `/.well-known/jwks.json` publishes, in order.
pub fn jwks_kids(client: &TokenClient) -> Vec<String> {
    let reply = send(
        client
            .http()
            .get(format!("{}/.well-known/jwks.json", client.base_url())),
    );
    assert_eq!(reply.status, 200, "GET jwks.json: {}", reply.body);
    reply.json()["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("jwks.json has no keys array: {}", reply.body))
        .iter()
        .map(|k| {
            k["kid"]
                .as_str()
                .unwrap_or_else(|| panic!("a JWK without kid: {k}"))
                .to_owned()
        })
        .collect()
}

/// How many CERTIFICATE blocks a PEM file holds.
pub fn pem_certificates(path: &Path) -> usize {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    occurrences(&text, "-----BEGIN CERTIFICATE-----")
}

/// `GET /token` for `scope` with Basic credentials; asserts 200 and returns
/// the access token.
pub fn access_token(client: &TokenClient, user: &str, password: &str, scope: &str) -> String {
    let reply = client.get_token(
        &[("service", SERVICE), ("scope", scope)],
        Some((user, password)),
    );
    assert_eq!(reply.status, 200, "GET /token for {scope}: {}", reply.body);
    reply.json_str("token")
}

// ---------------------------------------------------------------------------
// Metrics

/// `GET /metrics` (asserting 200, the OpenMetrics content type, and the
/// closing `# EOF` the format requires).
pub fn metrics(client: &TokenClient) -> String {
    let reply = send(client.http().get(format!("{}/metrics", client.base_url())));
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "GET /metrics content type: {:?}",
        reply.header("content-type")
    );
    assert!(
        reply.body.ends_with("# EOF\n"),
        "GET /metrics ends with # EOF"
    );
    reply.body
}

/// The value of the sample named exactly `series` (name and labels, e.g.
/// `regauth_config_reloads_total{outcome="ok"}`); `None` when absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(
            value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("sample {line:?} has no number: {e}")),
        )
    })
}

// ---------------------------------------------------------------------------
// A registry that can be restarted

/// A distribution registry 2.8 configured from `registry-config` that can
/// be restarted on the same port and storage, so it reads a regenerated
/// `bundle.pem` (it reads the bundle once, at start).
#[derive(Debug)]
pub struct RestartableRegistry {
    process: Option<ChildGuard>,
    port: u16,
    dir: PathBuf,
    config_path: PathBuf,
    starts: usize,
}

impl RestartableRegistry {
    /// Writes `dir/auth` with `registry-config --registry 2` for `server` and
    /// starts a registry on a free port with storage in `dir/data`.
    pub fn start(server: &TokenServer, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create registry dir");
        let auth = server.registry_config(&dir.join("auth"));
        let config_path = dir.join("config.yml");
        let mut registry = RestartableRegistry {
            process: None,
            port: 0,
            dir: dir.to_path_buf(),
            config_path,
            starts: 0,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            registry.port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {root}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: {secret}\n\
                 {auth}\n",
                root = serde_json::to_string(&dir.join("data").to_string_lossy())
                    .expect("serialize path"),
                port = registry.port,
                secret = crate::secrets::random_hex(16),
                auth = auth.trim_end(),
            );
            std::fs::write(&registry.config_path, config).expect("write registry config");
            match registry.spawn() {
                Ok(()) => return registry,
                Err(logs) if attempt < PORT_ATTEMPTS && address_in_use(&logs) => continue,
                Err(logs) => panic!("registry did not start:\n{logs}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let mut cmd = Command::new(docker_registry());
        cmd.arg("serve")
            .arg(&self.config_path)
            .current_dir(&self.dir);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let name = format!("registry.start-{}", self.starts);
        let mut process = ChildGuard::spawn(cmd, &self.dir, &name);
        let http = http_client();
        let url = format!("{}/v2/", self.url());
        let probe = || {
            let r = http.get(&url).timeout(Duration::from_secs(2)).send().ok()?;
            let challenge = r.headers().get("www-authenticate")?.to_str().ok()?;
            (r.status().as_u16() == 401 && challenge.starts_with("Bearer realm=")).then_some(())
        };
        match wait_ready(&mut process, Duration::from_secs(20), probe) {
            Readiness::Ready(()) => {
                self.process = Some(process);
                Ok(())
            }
            Readiness::Exited(status) => Err(format!("exited: {status}\n{}", process.logs())),
            Readiness::TimedOut => Err(format!(
                "no 401 Bearer challenge on {url} within 20s\n{}",
                process.logs()
            )),
        }
    }

    /// Re-runs `registry-config --registry 2` for `server` into the auth dir
    /// (while the registry keeps running) and returns how many certificates
    /// `bundle.pem` now holds.
    pub fn regenerate_bundle(&self, server: &TokenServer) -> usize {
        let auth = self.dir.join("auth");
        server.registry_config(&auth);
        pem_certificates(&auth.join("bundle.pem"))
    }

    /// Stops the registry and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        drop(self.process.take());
        if let Err(logs) = self.spawn() {
            panic!("registry did not restart on port {}:\n{logs}", self.port);
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT/REPO:latest`.
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}:latest", self.host())
    }

    /// The running process's output, labelled.
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(ChildGuard::logs)
            .unwrap_or_default()
    }

    /// `GET /v2/REPO/manifests/latest` with `Authorization: Bearer TOKEN`.
    pub fn get_manifest(&self, repo: &str, token: &str) -> HttpReply {
        send(
            http_client()
                .get(format!("{}/v2/{repo}/manifests/latest", self.url()))
                .header("Accept", MANIFEST_ACCEPT)
                .bearer_auth(token),
        )
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1

/// A response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until EOF).
pub fn read_response(stream: &mut impl Read) -> io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a complete response head ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad head {head:?}")))?;
    let mut response = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    if let Some(len) = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while rest.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        response.body = rest;
    } else if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = read_chunked(stream, rest)?;
    } else {
        stream.read_to_end(&mut rest)?;
        response.body = rest;
    }
    Ok(response)
}

fn read_chunked(stream: &mut impl Read, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut fill = |buf: &mut Vec<u8>, want: usize| -> io::Result<()> {
        while buf.len() < want {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let len = buf.len() + 1;
            fill(&mut buf, len)?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            return Ok(body);
        }
        fill(&mut buf, size + 2)?;
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Connects to `addr` with read and write timeouts of `timeout`.
pub fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(timeout))
        .expect("write timeout");
    stream
}

/// Sends `request` on a new connection and reads the response. A write
/// error (the server may stop reading early) is ignored; a read error is
/// returned, as is a close without a response.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> io::Result<RawResponse> {
    let mut stream = connect(addr, Duration::from_secs(10));
    let _ = stream.write_all(request);
    read_response(&mut stream)
}

/// How a trickling connection ended.
#[derive(Debug)]
pub struct Trickle {
    /// When the server closed the connection (EOF, reset, or a failed
    /// write), counted from the connect; `None` when it was still open at
    /// the limit.
    pub closed_after: Option<Duration>,
    /// Bytes written in all, the opening included.
    pub sent: usize,
    /// Whatever the server sent.
    pub received: Vec<u8>,
}

/// Connects to `addr`, writes `opening`, then one byte of `drip` (cycled)
/// every `interval` (nothing when `drip` is empty), until the server closes
/// the connection or `limit` passes.
pub fn trickle(
    addr: SocketAddr,
    opening: &[u8],
    drip: &[u8],
    interval: Duration,
    limit: Duration,
) -> Trickle {
    let start = Instant::now();
    let mut stream = connect(addr, interval);
    let mut result = Trickle {
        closed_after: None,
        sent: 0,
        received: Vec::new(),
    };
    if stream.write_all(opening).is_err() {
        result.closed_after = Some(start.elapsed());
        return result;
    }
    result.sent = opening.len();
    let mut next = drip.iter().copied().cycle();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => {
                result.closed_after = Some(start.elapsed());
                return result;
            }
            Ok(n) => result.received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(byte) = next.next() {
                    if stream.write_all(&[byte]).is_err() {
                        result.closed_after = Some(start.elapsed());
                        return result;
                    }
                    result.sent += 1;
                }
            }
            Err(_) => {
                result.closed_after = Some(start.elapsed());
                return result;
            }
        }
    }
    result
}

// ---------------------------------------------------------------------------
// TLS

/// An HTTP/1.1 keep-alive connection over TLS that trusts only one CA and
/// can show the certificate the server presented.
pub struct TlsProbe {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl std::fmt::Debug for TlsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProbe").finish_non_exhaustive()
    }
}

impl TlsProbe {
    /// Connects to `127.0.0.1:port` and completes the handshake, verifying
    /// the server certificate against `ca_pem` for the name 127.0.0.1.
    pub fn connect(port: u16, ca_pem: &str) -> io::Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(pem_certificate_der(ca_pem))
            .expect("the CA certificate is usable");
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("IP server name");
        let conn = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let tcp = connect(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        );
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsProbe { stream })
    }

    /// The DER of the certificate the server presented (the leaf).
    pub fn server_certificate(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.as_ref().to_vec())
            .expect("the server presented a certificate")
    }

    /// `GET path` on this connection, keeping it open.
    pub fn get(&mut self, path: &str) -> io::Result<RawResponse> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.stream.write_all(request.as_bytes())?;
        self.stream.flush()?;
        read_response(&mut self.stream)
    }
}

/// The DER of the first certificate in `pem`.
pub fn pem_certificate_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap_or_else(|e| panic!("not a PEM certificate ({e}): {pem}"))
}

// ---------------------------------------------------------------------------
// Background load

/// One request made by a [`Load`] worker.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it started.
    pub at: Instant,
    /// The HTTP status, or the transport error.
    pub result: Result<u16, String>,
}

/// Worker threads each calling a request function in a loop, for at most
/// `per_thread` requests and until stopped; after a transport error they
/// pause briefly and retry.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<Vec<Attempt>>>,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("ok", &self.ok)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What a load worker's request returns: the status, or a transport error.
pub type RequestFn = dyn Fn(usize) -> Result<u16, String> + Send + Sync;

impl Load {
    /// Starts `threads` workers; worker `i` calls `request(i)` in a loop.
    pub fn start(threads: usize, per_thread: usize, request: Arc<RequestFn>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let workers = (0..threads)
            .map(|i| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                let request = Arc::clone(&request);
                std::thread::spawn(move || {
                    let mut attempts = Vec::new();
                    while !stop.load(Ordering::Relaxed) && attempts.len() < per_thread {
                        let at = Instant::now();
                        let result = request(i);
                        let counter = if result == Ok(200) { &ok } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let transport_error = result.is_err();
                        attempts.push(Attempt { at, result });
                        if transport_error {
                            std::thread::sleep(Duration::from_millis(25));
                        }
                    }
                    attempts
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            workers,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Requests not answered 200 so far (transport errors included).
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `ok()` reaches `at_least`; panics after `timeout`.
    pub fn wait_ok(&self, at_least: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.ok() < at_least {
            assert!(
                Instant::now() < deadline,
                "the load reached {} successful requests ({} failed), not {at_least}, within {timeout:?}",
                self.ok(),
                self.failed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the workers and returns each one's attempts.
    pub fn finish(self) -> Vec<Vec<Attempt>> {
        self.stop.store(true, Ordering::Relaxed);
        self.workers
            .into_iter()
            .map(|w| w.join().expect("load worker panicked"))
            .collect()
    }
}

/// A `/token` request for a load worker: `GET /token` for `scope` with
/// Basic `user:secret` (a password or a refresh token) over `client`, with
/// a short timeout, returning the status or the transport error.
pub fn token_request(
    client: &TokenClient,
    user: &str,
    secret: &str,
    scope: &str,
) -> Result<u16, String> {
    client
        .http()
        .get(client.token_url())
        .query(&[("service", SERVICE), ("scope", scope)])
        .basic_auth(user, Some(secret))
        .timeout(Duration::from_secs(5))
        .send()
        .map(|r| r.status().as_u16())
        .map_err(|e| crate::token_client::error_chain(&e))
}

/// Collects attempts' outcomes as `status or error → count`, for messages.
pub fn tally(attempts: &[Attempt]) -> std::collections::BTreeMap<String, usize> {
    let mut map = std::collections::BTreeMap::new();
    for a in attempts {
        let key = match &a.result {
            Ok(status) => status.to_string(),
            Err(e) => e.clone(),
        };
        *map.entry(key).or_insert(0) += 1;
    }
    map
}
