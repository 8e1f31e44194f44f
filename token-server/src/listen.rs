//! Socket activation: a listening socket inherited from systemd.
//!
//! With the `.socket` unit enabled, systemd owns the listening socket and
//! hands the service a copy as file descriptor 3 (`LISTEN_FDS=1`,
//! `LISTEN_PID`, `LISTEN_FDNAMES=regauth`). Closing our copy at shutdown only
//! stops this process accepting: the socket stays open in systemd, the
//! kernel keeps completing handshakes and queuing connections in its
//! backlog, and the next process accepts them. A restart then delays
//! requests instead of refusing them. Without the variables the server binds
//! `listen` itself, as before, and a restart refuses connections until the
//! new process has bound the port again.
//!
//! Turning a descriptor number into a listener is `unsafe` in Rust (the
//! number might not be ours); the `listenfd` crate does it, after checking
//! that the descriptor is a TCP socket, and marks it close-on-exec so no
//! child process inherits it. `listenfd` also removes `LISTEN_PID` and
//! `LISTEN_FDS` from the environment (a change of the environment that
//! [`inherited`] must make before any other thread exists). `LISTEN_FDNAMES`
//! stays: without `LISTEN_FDS` it means nothing, and removing it ourselves
//! would take `unsafe` code.

use std::net::TcpListener;
use std::num::ParseIntError;

/// The name the `.socket` unit gives the server's socket
/// (`FileDescriptorName=regauth`).
pub const FD_NAME: &str = "regauth";

/// The first inherited descriptor, by the systemd protocol.
const FIRST_FD: usize = 3;

/// Why an inherited socket could not be used. The server refuses to start
/// rather than bind a second socket beside the one it was given.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `LISTEN_FDS` is not a number.
    #[error("LISTEN_FDS is not a count of file descriptors")]
    Count(#[source] ParseIntError),
    /// `LISTEN_FDNAMES` lists names, none of them `regauth`.
    #[error(
        "LISTEN_FDNAMES ({names}) names no socket `regauth`; set FileDescriptorName=regauth in the .socket unit"
    )]
    Unnamed {
        /// The names systemd passed.
        names: String,
    },
    /// The descriptor is not a TCP socket (or was already taken).
    #[error("inherited file descriptor {fd} is not a listening TCP socket")]
    NotTcp {
        /// The descriptor number.
        fd: usize,
        /// What `listenfd` found.
        #[source]
        source: std::io::Error,
    },
    /// `listenfd` found no descriptor at the expected place.
    #[error("inherited file descriptor {fd} is missing")]
    Missing {
        /// The descriptor number.
        fd: usize,
    },
    /// The socket could not be put in non-blocking mode.
    #[error("cannot make the inherited socket non-blocking")]
    NonBlocking(#[source] std::io::Error),
}

/// The socket-activation variables as found in the environment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Activation {
    pid: Option<String>,
    fds: Option<String>,
    names: Option<String>,
}

impl Activation {
    fn from_env() -> Self {
        let var = |name| std::env::var(name).ok();
        Activation {
            pid: var("LISTEN_PID"),
            fds: var("LISTEN_FDS"),
            names: var("LISTEN_FDNAMES"),
        }
    }

    /// The index (from fd 3) of our socket among the inherited ones;
    /// `None` when nothing was passed to this very process. `LISTEN_PID`
    /// must name us: variables left over from a parent that was activated
    /// itself describe descriptors that are not ours.
    fn index(&self, our_pid: u32) -> Result<Option<usize>, ListenError> {
        if self.pid.as_deref().map(str::trim) != Some(our_pid.to_string().as_str()) {
            return Ok(None);
        }
        let Some(fds) = &self.fds else {
            return Ok(None);
        };
        let count: usize = fds.trim().parse().map_err(ListenError::Count)?;
        if count == 0 {
            return Ok(None);
        }
        let Some(names) = &self.names else {
            return Ok(Some(0));
        };
        match names.split(':').position(|n| n == FD_NAME) {
            Some(i) if i < count => Ok(Some(i)),
            _ => Err(ListenError::Unnamed {
                names: names.clone(),
            }),
        }
    }
}

/// The listening socket systemd passed to this process, non-blocking and
/// ready for the async runtime; `None` when none was passed, and the caller
/// binds `listen` itself. Call it before starting any thread.
pub fn inherited() -> Result<Option<TcpListener>, ListenError> {
    let Some(index) = Activation::from_env().index(std::process::id())? else {
        return Ok(None);
    };
    let fd = FIRST_FD + index;
    let socket = listenfd::ListenFd::from_env()
        .take_tcp_listener(index)
        .map_err(|source| ListenError::NotTcp { fd, source })?
        .ok_or(ListenError::Missing { fd })?;
    socket
        .set_nonblocking(true)
        .map_err(ListenError::NonBlocking)?;
    tracing::info!(
        fd,
        "using the listening socket inherited from systemd (socket activation); \
         the config's `listen` is not bound"
    );
    Ok(Some(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> Activation {
        Activation {
            pid: pid.map(str::to_owned),
            fds: fds.map(str::to_owned),
            names: names.map(str::to_owned),
        }
    }

    #[test]
    fn only_sockets_passed_to_this_very_process_are_taken() {
        assert_eq!(Activation::default().index(42).unwrap(), None);
        assert_eq!(env(Some("42"), Some("1"), None).index(42).unwrap(), Some(0));
        assert_eq!(env(Some("41"), Some("1"), None).index(42).unwrap(), None);
        assert_eq!(env(None, Some("1"), None).index(42).unwrap(), None);
        assert_eq!(env(Some("42"), None, None).index(42).unwrap(), None);
        assert_eq!(env(Some("42"), Some("0"), None).index(42).unwrap(), None);
        assert!(matches!(
            env(Some("42"), Some("many"), None).index(42),
            Err(ListenError::Count(_))
        ));
    }

    #[test]
    fn a_named_socket_is_picked_by_its_name() {
        let named = |names| env(Some("7"), Some("2"), Some(names)).index(7);
        assert_eq!(named("regauth:metrics").unwrap(), Some(0));
        assert_eq!(named("metrics:regauth").unwrap(), Some(1));
        let err = named("metrics:admin").unwrap_err();
        assert!(
            err.to_string().contains("FileDescriptorName=regauth"),
            "{err}"
        );
        // A name past LISTEN_FDS describes no descriptor.
        assert!(
            env(Some("7"), Some("1"), Some("x:regauth"))
                .index(7)
                .is_err()
        );
    }
}
