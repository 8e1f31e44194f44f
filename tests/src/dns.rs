//! A DNS server for test host names: `dnsmasq` (Debian package
//! `dnsmasq-base`) answering only for the names it is given, on a loopback
//! address of its own, port 53, logging every query.
//!
//! A container given a `resolv.conf` naming that address resolves the names
//! through DNS itself, not `/etc/hosts`: the path a statically linked
//! binary's `getaddrinfo` takes for an issuer's host name.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{ChildGuard, PORT_ATTEMPTS, Readiness, address_in_use, wait_ready};
use crate::tools::require_tool;

/// How long dnsmasq gets to bind its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running dnsmasq; killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    process: ChildGuard,
    addr: Ipv4Addr,
}

impl Dnsmasq {
    /// Serves `names` (each an A record) under `parent/dnsmasq`. It answers
    /// for those names' domains only and forwards nothing.
    pub fn start(parent: &Path, names: &[(&str, Ipv4Addr)]) -> Self {
        let bin = require_tool("dnsmasq", "dnsmasq-base");
        let dir = parent.join("dnsmasq");
        std::fs::create_dir_all(&dir).expect("create dnsmasq dir");
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Port 53 is fixed by resolv.conf, so each server gets its own
            // loopback address in 127.53.0.0/16 instead of its own port.
            let random = crate::secrets::random_bytes(2);
            let addr = Ipv4Addr::new(127, 53, random[0], random[1].max(1));
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                "--log-queries",
                "--log-facility=-",
                "--pid-file=",
            ])
            .arg(format!("--listen-address={addr}"));
            for (name, ip) in names {
                cmd.arg(format!("--address=/{name}/{ip}"));
                // Authoritative for the name: other record types get an
                // empty answer rather than a refusal.
                cmd.arg(format!("--local=/{name}/"));
            }
            cmd.current_dir(&dir);
            let mut process = ChildGuard::spawn(cmd, &dir, "dnsmasq");
            let probe = || process_started(&dir);
            match wait_ready(&mut process, READY_TIMEOUT, probe) {
                Readiness::Ready(()) => return Self { process, addr },
                Readiness::Exited(_)
                    if attempt < PORT_ATTEMPTS && address_in_use(&process.logs()) =>
                {
                    continue;
                }
                Readiness::Exited(status) => {
                    panic!("dnsmasq exited early ({status})\n{}", process.logs())
                }
                Readiness::TimedOut => panic!(
                    "dnsmasq did not start within {READY_TIMEOUT:?}\n{}",
                    process.logs()
                ),
            }
        }
    }

    /// The address it listens on (port 53).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Writes a `resolv.conf` naming only this server, and returns its path.
    pub fn write_resolv_conf(&self, path: &Path) -> PathBuf {
        std::fs::write(path, format!("nameserver {}\n", self.addr))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_owned()
    }

    /// The names asked for so far, one entry per query (`A name`, `AAAA name`).
    pub fn queries(&self) -> Vec<String> {
        self.process
            .stderr()
            .lines()
            .filter_map(|l| l.split_once(": query["))
            .filter_map(|(_, rest)| {
                let (kind, rest) = rest.split_once(']')?;
                let name = rest.split_whitespace().next()?;
                Some(format!("{kind} {name}"))
            })
            .collect()
    }

    /// Both output streams, labelled.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// dnsmasq logs `started` once its sockets are bound.
fn process_started(dir: &Path) -> Option<()> {
    let log = std::fs::read_to_string(dir.join("dnsmasq.stderr.log")).unwrap_or_default();
    log.contains("started, version").then_some(())
}
