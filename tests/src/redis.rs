//! Redis for the fleet tests, all real processes on loopback ports: a
//! `redis-server` with the options a test needs (persistence, `maxmemory`
//! and its policy, replication), a Sentinel-managed primary with one replica
//! and three sentinels (`redis-sentinel`), a small RESP client to inspect
//! them, and a TCP proxy that delays Redis's replies or cuts a replica off
//! from Redis altogether (a network partition).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::process::{ChildGuard, Readiness, wait_ready};
use crate::tools::require_tool;

const READY: Duration = Duration::from_secs(20);

/// What a [`Redis`] runs with.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// An append-only file synced on every write, so a Redis killed and
    /// started again on the same directory comes back with what it
    /// acknowledged. Without it, a restart comes back empty.
    pub persistent: bool,
    /// `maxmemory`, such as `8mb`.
    pub maxmemory: Option<String>,
    /// `maxmemory-policy`, such as `volatile-ttl`.
    pub maxmemory_policy: Option<String>,
    /// Replicate the Redis on this loopback port.
    pub replica_of: Option<u16>,
    /// Serve (and replicate) over TLS only, with these files.
    pub tls: Option<TlsFiles>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            persistent: true,
            maxmemory: None,
            maxmemory_policy: None,
            replica_of: None,
            tls: None,
        }
    }
}

/// A certificate for 127.0.0.1, its key, and the CA that issued it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Issues a server certificate for 127.0.0.1 from a new CA into `dir`.
    pub fn issue(dir: &Path) -> Self {
        let ca = crate::pki::Ca::new("regauth test Redis CA");
        let (cert, key) = ca.issue_server().write(dir, "redis");
        let ca_path = dir.join("redis-ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).expect("write the Redis CA");
        TlsFiles {
            cert,
            key,
            ca: ca_path,
        }
    }

    /// The arguments that make redis-server or a sentinel speak TLS only.
    fn server_args(&self, port: u16) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--tls-replication".into(),
            "yes".into(),
        ]
    }
}

/// Asks the Redis or sentinel on `port` (over TLS with `tls`), flattening
/// the reply into lines: `redis-cli --raw` for TLS, the RESP client
/// otherwise. `None` when nothing answers.
pub fn ask(port: u16, tls: Option<&TlsFiles>, args: &[&str]) -> Option<Vec<String>> {
    match tls {
        None => try_call(port, args).ok().map(|r| flatten(&r)),
        Some(t) => {
            let bin = require_tool("redis-cli", "redis-tools");
            let mut cmd = Command::new(bin);
            cmd.args(["--tls", "--raw", "-h", "127.0.0.1"])
                .arg("--cacert")
                .arg(&t.ca)
                .args(["-p", &port.to_string()])
                .args(args);
            let out = crate::process::run(cmd, Duration::from_secs(10));
            out.success()
                .then(|| out.stdout.lines().map(str::to_owned).collect())
        }
    }
}

fn flatten(r: &Resp) -> Vec<String> {
    match r {
        Resp::Array(items) => items.iter().flat_map(flatten).collect(),
        Resp::Bulk(text) => text.lines().map(str::to_owned).collect(),
        other => other.text().into_iter().collect(),
    }
}

/// A field of `INFO` from the Redis on `port`.
fn info_of(port: u16, tls: Option<&TlsFiles>, field: &str) -> Option<String> {
    ask(port, tls, &["INFO"])?.iter().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.trim().to_owned())
    })
}

/// A private `redis-server`.
#[derive(Debug)]
pub struct Redis {
    process: Option<ChildGuard>,
    port: u16,
    dir: PathBuf,
    name: String,
    options: RedisOptions,
    starts: usize,
}

impl Redis {
    /// Starts Redis on a free port, with its data in `dir/redis`, persistent.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "redis", RedisOptions::default())
    }

    /// Starts Redis named `name` (its data in `dir/NAME`) with `options`.
    pub fn start_with(dir: &Path, name: &str, options: RedisOptions) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut redis = Redis {
            process: None,
            port: free_port(),
            dir,
            name: name.to_owned(),
            options,
            starts: 0,
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills Redis with SIGKILL (what it has synced survives, if persistent).
    pub fn kill(&mut self) {
        self.process = None;
        // The port is free once the kernel has closed the listener.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ping(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts Redis on the same port and data directory.
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "Redis already runs");
        let bin = require_tool("redis-server", "redis-server");
        self.starts += 1;
        let mut cmd = Command::new(bin);
        match &self.options.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some(t) => {
                cmd.args(t.server_args(self.port));
            }
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--protected-mode", "no"]);
        if self.options.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(m) = &self.options.maxmemory {
            cmd.args(["--maxmemory", m]);
        }
        if let Some(p) = &self.options.maxmemory_policy {
            cmd.args(["--maxmemory-policy", p]);
        }
        if let Some(primary) = self.options.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let mut process =
            ChildGuard::spawn(cmd, &self.dir, &format!("{}-{}", self.name, self.starts));
        let port = self.port;
        let tls = self.options.tls.clone();
        let answers = || match &tls {
            None => ping(port),
            Some(t) => ask(port, Some(t), &["PING"]).is_some_and(|l| l == ["PONG"]),
        };
        match wait_ready(&mut process, READY, || answers().then_some(())) {
            Readiness::Ready(()) => {}
            other => panic!(
                "redis-server did not answer PING ({other:?})\n{}",
                process.logs()
            ),
        }
        self.process = Some(process);
    }

    /// Kills Redis and starts it again with nothing: its data directory is
    /// emptied first, as when a Redis without persistence restarts.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(&self.dir).expect("read redis dir") {
            let path = entry.expect("dir entry").path();
            if is_log(&path) {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove redis data dir");
            } else {
                std::fs::remove_file(&path).expect("remove redis data file");
            }
        }
        self.start_again();
    }

    /// Copies its data (the append-only file) to `to`, to start from later
    /// with [`Redis::restart_from`].
    pub fn copy_data(&self, to: &Path) {
        copy_data(&self.dir, to);
    }

    /// Kills Redis and starts it again from data copied earlier with
    /// [`Redis::copy_data`]: a Redis that lost every write acknowledged
    /// since, as one restored from an older file does, or a replica promoted
    /// before it caught up.
    pub fn restart_from(&mut self, from: &Path) {
        self.kill();
        for entry in std::fs::read_dir(&self.dir).expect("read redis dir") {
            let path = entry.expect("dir entry").path();
            if is_log(&path) {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove redis data dir");
            } else {
                std::fs::remove_file(&path).expect("remove redis data file");
            }
        }
        copy_data(from, &self.dir);
        self.start_again();
    }

    /// Runs one command, asserting no transport error.
    pub fn call(&self, args: &[&str]) -> Resp {
        call(self.port, args)
    }

    /// Runs one command (inline protocol) and returns Redis's raw reply.
    pub fn command(&self, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(format!("{line}\r\n").as_bytes())
            .expect("write to Redis");
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).expect("read from Redis");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// A field of `INFO` (`used_memory`, `run_id`, ...).
    pub fn info(&self, field: &str) -> Option<String> {
        info_field(self.port, field)
    }

    /// Its logs so far.
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(ChildGuard::logs)
            .unwrap_or_default()
    }
}

fn is_log(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".log"))
}

/// Copies a Redis data directory (files and one level of directories, as
/// the append-only layout has), leaving out the process logs.
fn copy_data(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read redis dir") {
        let path = entry.expect("dir entry").path();
        if is_log(&path) {
            continue;
        }
        let target = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            copy_data(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy redis data");
        }
    }
}

/// A field of `INFO` from the Redis (or sentinel) on `port`.
pub fn info_field(port: u16, field: &str) -> Option<String> {
    let Resp::Bulk(text) = call(port, &["INFO"]) else {
        return None;
    };
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.trim().to_owned())
    })
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:N`.
    Int(i64),
    /// `$N ...` (lossy UTF-8).
    Bulk(String),
    /// `$-1` or `*-1`.
    Nil,
    /// `*N ...`.
    Array(Vec<Resp>),
}

impl Resp {
    /// The reply as text: a simple, bulk or error string, or an integer.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) | Resp::Bulk(s) | Resp::Error(s) => Some(s.clone()),
            Resp::Int(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The elements of an array reply (empty for anything else).
    pub fn items(&self) -> Vec<Resp> {
        match self {
            Resp::Array(items) => items.clone(),
            _ => Vec::new(),
        }
    }

    /// An integer reply.
    pub fn int(&self) -> Option<i64> {
        match self {
            Resp::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// Sends one command to the Redis (or sentinel) on `port` and reads its
/// reply; panics on a transport error.
pub fn call(port: u16, args: &[&str]) -> Resp {
    try_call(port, args).unwrap_or_else(|e| panic!("Redis on {port}, {args:?}: {e}"))
}

/// Sends one command and reads its reply.
pub fn try_call(port: u16, args: &[&str]) -> std::io::Result<Resp> {
    let stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&stream).write_all(out.as_bytes())?;
    read_resp(&mut BufReader::new(stream))
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_owned());
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Nil
            } else {
                let mut buf = vec![0u8; usize::try_from(n).map_err(|_| bad())? + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(buf.len() - 2);
                Resp::Bulk(String::from_utf8_lossy(&buf).into_owned())
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Nil
            } else {
                (0..n)
                    .map(|_| read_resp(r))
                    .collect::<Result<_, _>>()
                    .map(Resp::Array)?
            }
        }
        _ => return Err(bad()),
    })
}

/// The master name the sentinels of a [`SentinelGroup`] monitor.
pub const MASTER_NAME: &str = "regauth";

/// A primary, its replica and three sentinels watching them (quorum 2),
/// with a short `down-after-milliseconds` so failovers are quick; over TLS
/// only, when made with [`SentinelGroup::start_tls`].
#[derive(Debug)]
pub struct SentinelGroup {
    /// The two data nodes; which is primary changes with failovers.
    pub nodes: Vec<Redis>,
    sentinels: Vec<ChildGuard>,
    sentinel_ports: Vec<u16>,
    tls: Option<TlsFiles>,
}

impl SentinelGroup {
    /// Starts the primary, the replica and the sentinels, and waits until
    /// every sentinel knows the replica and the quorum is reachable.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, None)
    }

    /// As [`SentinelGroup::start`], every connection over TLS with `tls`
    /// (a certificate for 127.0.0.1, the address the sentinels announce).
    pub fn start_tls(dir: &Path, tls: TlsFiles) -> Self {
        Self::start_with(dir, Some(tls))
    }

    fn start_with(dir: &Path, tls: Option<TlsFiles>) -> Self {
        let bin = require_tool("redis-sentinel", "redis-sentinel");
        let options = RedisOptions {
            tls: tls.clone(),
            ..RedisOptions::default()
        };
        let primary = Redis::start_with(dir, "redis-a", options.clone());
        let replica = Redis::start_with(
            dir,
            "redis-b",
            RedisOptions {
                replica_of: Some(primary.port()),
                ..options
            },
        );
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let sdir = dir.join(format!("sentinel-{i}"));
            std::fs::create_dir_all(&sdir).expect("create sentinel dir");
            let conf = sdir.join("sentinel.conf");
            let listen = match &tls {
                None => format!("port {port}\n"),
                Some(t) => t
                    .server_args(port)
                    .chunks(2)
                    .map(|kv| format!("{} {}\n", kv[0].trim_start_matches("--"), kv[1]))
                    .collect(),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    sdir.display(),
                    primary.port()
                ),
            )
            .expect("write sentinel.conf");
            let mut cmd = Command::new(&bin);
            cmd.arg(&conf);
            let mut process = ChildGuard::spawn(cmd, &sdir, "sentinel");
            let answers = || ask(port, tls.as_ref(), &["PING"]).is_some_and(|l| l == ["PONG"]);
            match wait_ready(&mut process, READY, || answers().then_some(())) {
                Readiness::Ready(()) => {}
                other => panic!("sentinel {i} did not start ({other:?})\n{}", process.logs()),
            }
            sentinels.push(process);
            sentinel_ports.push(port);
        }
        let group = SentinelGroup {
            nodes: vec![primary, replica],
            sentinels,
            sentinel_ports,
            tls,
        };
        group.wait_settled(Duration::from_secs(30));
        group
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/regauth`
    /// (`rediss+sentinel://` over TLS).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let scheme = if self.tls.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!("{scheme}://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> &[u16] {
        &self.sentinel_ports
    }

    /// The primary's port as sentinel `port` names it.
    fn named_by(&self, port: u16) -> Option<u16> {
        ask(
            port,
            self.tls.as_ref(),
            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
        )?
        .get(1)?
        .parse()
        .ok()
    }

    /// The port of the primary as the first answering sentinel names it.
    pub fn primary_port(&self) -> u16 {
        self.sentinel_ports
            .iter()
            .find_map(|&p| self.named_by(p))
            .unwrap_or_else(|| panic!("no sentinel names a primary"))
    }

    /// The data node that is primary now.
    pub fn primary(&self) -> &Redis {
        let port = self.primary_port();
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("the primary is one of the nodes")
    }

    /// The role (`master` or `slave`) the Redis on `port` reports.
    pub fn role(&self, port: u16) -> Option<String> {
        info_of(port, self.tls.as_ref(), "role")
    }

    /// Forces a failover (`SENTINEL FAILOVER`) and waits until the other
    /// node is primary, says so itself, every sentinel agrees, and the old
    /// primary has been turned into its replica.
    pub fn failover(&self) -> u16 {
        let before = self.primary_port();
        let reply = ask(
            self.sentinel_ports[0],
            self.tls.as_ref(),
            &["SENTINEL", "FAILOVER", MASTER_NAME],
        );
        assert_eq!(reply, Some(vec!["OK".to_owned()]), "SENTINEL FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let agreed: Vec<Option<u16>> = self
                .sentinel_ports
                .iter()
                .map(|&p| self.named_by(p))
                .collect();
            if let Some(Some(now)) = agreed.first()
                && *now != before
                && agreed.iter().all(|a| *a == Some(*now))
                && self.role(*now).as_deref() == Some("master")
                && self.role(before).as_deref() == Some("slave")
            {
                return *now;
            }
            assert!(
                Instant::now() < deadline,
                "the failover did not complete within 30 s: sentinels say {agreed:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every sentinel knows the replica, in sync, and reports
    /// the quorum reachable, so a failover can start.
    pub fn wait_settled(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self.sentinel_ports.iter().all(|&p| {
                let tls = self.tls.as_ref();
                let quorum = ask(p, tls, &["SENTINEL", "CKQUORUM", MASTER_NAME])
                    .and_then(|l| l.first().cloned())
                    .is_some_and(|t| t.starts_with("OK"));
                let fields =
                    ask(p, tls, &["SENTINEL", "REPLICAS", MASTER_NAME]).unwrap_or_default();
                let get = |k: &str| {
                    fields
                        .chunks(2)
                        .find(|c| c[0] == k)
                        .and_then(|c| c.get(1).cloned())
                };
                quorum
                    && get("flags").as_deref() == Some("slave")
                    && get("master-link-status").as_deref() == Some("ok")
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not settle within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every process's logs.
    pub fn logs(&self) -> String {
        let mut out: Vec<String> = self.nodes.iter().map(Redis::logs).collect();
        out.extend(self.sentinels.iter().map(ChildGuard::logs));
        out.join("\n")
    }
}

/// A TCP proxy in front of a Redis that forwards requests at once and
/// holds each reply back for the current delay (in order), as a Redis
/// that is slow to answer, or a congested link, would. It can also cut
/// every connection and refuse new ones until healed: a partition between
/// the replicas behind it and Redis.
#[derive(Debug)]
pub struct DelayProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl DelayProxy {
    /// Proxies 127.0.0.1:`upstream`, with no delay at first.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (d, s, c, list) = (
            Arc::clone(&delay_ms),
            Arc::clone(&stop),
            Arc::clone(&cut),
            Arc::clone(&streams),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                client.set_nodelay(true).ok();
                server.set_nodelay(true).ok();
                {
                    let mut list = list.lock().expect("proxy streams");
                    for stream in [&client, &server] {
                        if let Ok(c) = stream.try_clone() {
                            list.push(c);
                        }
                    }
                }
                relay(client, server, Arc::clone(&d));
            }
        });
        DelayProxy {
            port,
            delay_ms,
            stop,
            cut,
            streams,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0` through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Holds each reply back this long from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Cuts the replicas behind the proxy off from Redis: every open
    /// connection is shut down, and new ones are closed at once.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.streams.lock().expect("proxy streams").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.streams.lock().expect("proxy streams").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies client to server at once; server to client through a queue that
/// releases each chunk `delay` after it arrived.
fn relay(client: TcpStream, server: TcpStream, delay: Arc<AtomicU64>) {
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = client_read.read(&mut buf) {
            if n == 0 || server_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_write.shutdown(std::net::Shutdown::Write);
    });
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut server_read = server;
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = server_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            let due = Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut client_write = client;
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let wait = due.saturating_duration_since(Instant::now());
            std::thread::sleep(wait);
            if client_write.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = client_write.shutdown(std::net::Shutdown::Both);
    });
}
