//! Playing systemd's part in socket activation, and an HTTP/1.1 client that
//! keeps connections alive the way real clients do.
//!
//! The test process holds the listening socket, as systemd does with a
//! `.socket` unit, and starts each server with a copy of it as file
//! descriptor 3 (`LISTEN_FDS=1`, `LISTEN_FDNAMES=regauth`). `LISTEN_PID` must
//! be the server's own pid, known only once it is forked: `sh` sets it to
//! its own `$$` and then `exec`s the server, which keeps that pid. The
//! descriptor is put in place by `command-fds`, without close-on-exec, so it
//! survives both `exec`s.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

use crate::ops::{RawResponse, read_response};

/// `command` with `listener` passed as a socket-activated fd 3: it runs
/// under `sh`, which exports `LISTEN_PID=$$` and `exec`s it.
pub fn socket_activated(program: &Path, args: &[&str], listener: &TcpListener) -> Command {
    let copy = listener
        .try_clone()
        .expect("duplicate the listening socket");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(program)
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "regauth");
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: OwnedFd::from(copy),
        child_fd: 3,
    }])
    .expect("one mapping cannot collide");
    cmd
}

/// Counts the bytes read through it, to tell "nothing came back" from a
/// response cut short.
struct Counted<'a> {
    inner: &'a mut TcpStream,
    read: usize,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

/// How one exchange on one connection failed.
enum Failure {
    /// The connection ended before any byte of a response: the server
    /// never read the request, or closed an idle connection just as it was
    /// sent.
    Nothing(io::Error),
    /// A response started and broke off, or the connection was never made.
    Broken(io::Error),
}

/// An HTTP/1.1 client with one keep-alive connection. Like browsers, curl
/// and Go's `net/http`, it sends an idempotent request again on a new
/// connection when a *reused* connection ends before any byte of the
/// response (RFC 9112, section 9.3.1): the server may close an idle
/// connection at the moment a request is sent on it. Anything else is an
/// error.
#[derive(Debug)]
pub struct KeepAliveClient {
    addr: SocketAddr,
    timeout: Duration,
    connection: Option<TcpStream>,
    /// Requests sent again after a reused connection closed under them.
    pub resent: usize,
    /// Responses that closed their connection (`Connection: close`).
    pub closing_responses: usize,
}

impl KeepAliveClient {
    /// A client for `addr` whose reads, writes and connects time out after
    /// `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        KeepAliveClient {
            addr,
            timeout,
            connection: None,
            resent: 0,
            closing_responses: 0,
        }
    }

    /// Sends `request` (a complete, idempotent HTTP/1.1 request) and reads
    /// the response, reusing the open connection if there is one.
    pub fn send(&mut self, request: &[u8]) -> Result<RawResponse, String> {
        if let Some(mut stream) = self.connection.take() {
            match exchange(&mut stream, request) {
                Ok(response) => return Ok(self.keep(stream, response)),
                Err(Failure::Nothing(_)) => self.resent += 1,
                Err(Failure::Broken(e)) => return Err(format!("on a reused connection: {e}")),
            }
        }
        let mut stream = TcpStream::connect_timeout(&self.addr, self.timeout)
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| format!("set timeouts: {e}"))?;
        let _ = stream.set_nodelay(true);
        match exchange(&mut stream, request) {
            Ok(response) => Ok(self.keep(stream, response)),
            Err(Failure::Nothing(e)) => Err(format!("new connection, no response: {e}")),
            Err(Failure::Broken(e)) => Err(format!("new connection: {e}")),
        }
    }

    fn keep(&mut self, stream: TcpStream, response: RawResponse) -> RawResponse {
        let closes = response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if closes {
            self.closing_responses += 1;
        } else {
            self.connection = Some(stream);
        }
        response
    }
}

fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<RawResponse, Failure> {
    stream.write_all(request).map_err(Failure::Nothing)?;
    let mut counted = Counted {
        inner: stream,
        read: 0,
    };
    read_response(&mut counted).map_err(|e| {
        if counted.read == 0 {
            Failure::Nothing(e)
        } else {
            Failure::Broken(e)
        }
    })
}
