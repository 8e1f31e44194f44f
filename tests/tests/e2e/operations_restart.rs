//! SIGTERM drains: the listener closes at once, a request already in
//! flight still completes, and the process exits 0. Restarting on the same
//! port under load: clients see only connection errors during the gap,
//! then succeed again, with refresh tokens issued before the restart.
//! Restarting a socket-activated server (the test holds the socket, as
//! systemd does) under load loses no request at all.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regauth_e2e::activation::{KeepAliveClient, socket_activated};
use regauth_e2e::bins::token_server_bin;
use regauth_e2e::ops::{
    Load, Signal, connect, read_response, send_signal, tally, token_request, wait_for_log,
};
use regauth_e2e::process::ChildGuard;
use regauth_e2e::token_server::SERVICE;

use crate::support::{standalone_server, verify};

/// Logged by the signal handler and again by the accept loop once the
/// listener is closed.
const DRAINING: &str = "draining in-flight requests";
const SCOPE: &str = "repository:alice/app:pull";

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let mut s = standalone_server(|b| b.extra_config("limits:\n  drain_timeout: 20s\n"));
    let addr = SocketAddr::from(([127, 0, 0, 1], s.server.port()));
    let refresh = s
        .server
        .client()
        .password_grant("alice", &s.alice_password, SERVICE, "", true)
        .json_str("refresh_token");

    // A request whose head has arrived and whose body is half sent.
    let body =
        format!("grant_type=refresh_token&refresh_token={refresh}&service={SERVICE}&scope={SCOPE}");
    let (first, rest) = body.split_at(body.len() / 2);
    let mut in_flight = connect(addr, Duration::from_secs(20));
    write!(
        in_flight,
        "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    send_signal(s.server.pid(), Signal::Term);
    let sent = Instant::now();
    wait_for_log(|| s.server.stderr(), DRAINING, 2, Duration::from_secs(10));
    assert!(
        s.server.wait_exit(Duration::from_millis(300)).is_none(),
        "the server exited with a request in flight\n{}",
        s.server.logs()
    );
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "new connections must be refused while draining: {refused:?}"
    );

    in_flight.write_all(rest.as_bytes()).unwrap();
    let reply = read_response(&mut in_flight).expect("the in-flight request is answered");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    verify(&s.server, json["token"].as_str().expect("a token"));

    let status = s
        .server
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no exit after the drain\n{}", s.server.logs()));
    assert!(
        status.success(),
        "exit status {status}\n{}",
        s.server.logs()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "the drain waited for its timeout instead of the request"
    );
    let logs = s.server.stderr();
    assert!(logs.contains("shut down"), "{logs}");
    assert!(!logs.contains("drain timeout passed"), "{logs}");
}

#[test]
fn clients_recover_after_a_restart_on_the_same_port_with_their_refresh_tokens() {
    let mut s = standalone_server(|b| b);
    let reply = s
        .server
        .client()
        .password_grant("alice", &s.alice_password, SERVICE, "", true);
    let refresh = reply.json_str("refresh_token");
    let client = s.server.client().clone();
    let secret = refresh.clone();
    let load = Load::start(
        3,
        20_000,
        Arc::new(move |_| token_request(&client, "alice", &secret, SCOPE)),
    );
    load.wait_ok(30, Duration::from_secs(60));

    let sigterm = Instant::now();
    send_signal(s.server.pid(), Signal::Term);
    let status = s
        .server
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", s.server.logs()));
    assert!(
        status.success(),
        "exit status {status}\n{}",
        s.server.logs()
    );
    let old_logs = s.server.stderr();
    assert!(
        old_logs.contains(DRAINING) && old_logs.contains("shut down"),
        "{old_logs}"
    );

    s.server.restart();
    let restarted = Instant::now();
    load.wait_ok(load.ok() + 30, Duration::from_secs(60));
    let attempts = load.finish();

    let all: Vec<_> = attempts.iter().flatten().collect();
    let errors: Vec<_> = all.iter().filter(|a| a.result.is_err()).collect();
    assert!(
        all.iter().all(|a| matches!(a.result, Ok(200) | Err(_))),
        "only transport errors are expected, no HTTP errors: {:?}",
        tally(&attempts.concat())
    );
    assert!(
        !errors.is_empty(),
        "no client saw the gap; the load did not span the restart"
    );
    assert!(
        errors
            .iter()
            .all(|a| a.at + Duration::from_secs(1) >= sigterm && a.at <= restarted),
        "transport errors outside the restart gap: {:?}",
        tally(&attempts.concat())
    );
    for (worker, list) in attempts.iter().enumerate() {
        assert!(
            list.iter().any(|a| a.at > restarted && a.result == Ok(200)),
            "worker {worker} never succeeded after the restart: {:?}",
            tally(list)
        );
        assert_eq!(
            list.last().map(|a| a.result.clone()),
            Some(Ok(200)),
            "worker {worker} ends healthy"
        );
    }

    // The refresh token from before the restart still works, unchanged.
    let again = s.server.client().refresh_grant(&refresh, SERVICE, SCOPE);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json_str("refresh_token"), refresh);
    verify(&s.server, &again.json_str("access_token"));
}

/// How each server process in [`restarts_under_load`] gets its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listening {
    /// The test holds the listening socket, as systemd does for a `.socket`
    /// unit, and passes it to every process as fd 3.
    Inherited,
    /// Every process binds the port itself (`serve --listen`), as without
    /// the unit.
    BoundPerProcess,
}

/// What the load saw across the restarts.
struct Outcome {
    ok: usize,
    failed: usize,
    tally: std::collections::BTreeMap<String, usize>,
    /// Requests sent again after a kept-alive connection closed under them.
    resent: usize,
    /// Responses that carried `Connection: close`.
    closing: usize,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered 200, {} failed, {} sent again after a kept-alive \
             connection closed before any response byte, {} responses with \
             Connection: close; {:?}",
            self.ok, self.failed, self.resent, self.closing, self.tally
        )
    }
}

/// Successful requests the load must make with each process before the
/// next restart, so every process really serves.
const OK_PER_PROCESS: usize = 40;

/// Waits for `process` to exit after SIGTERM and returns its status.
fn exit_status(process: &mut ChildGuard) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = process.exited() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit within 40 s of SIGTERM\n{}",
            process.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Restarts the server `restarts` times while 4 client threads send
/// `GET /token` with alice's password over kept-alive connections, each
/// restart as `systemctl restart` does it: SIGTERM, wait for the exit (the
/// drain), then start the next process.
fn restarts_under_load(listening: Listening, restarts: usize) -> Outcome {
    // The fixture writes the config and keys and shows they serve; the
    // processes under test are started here.
    let mut s = standalone_server(|b| b);
    send_signal(s.server.pid(), Signal::Term);
    let status = s
        .server
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", s.server.logs()));
    assert!(status.success(), "{status}\n{}", s.server.logs());

    let socket = TcpListener::bind("127.0.0.1:0").expect("bind a listening socket");
    let addr = socket.local_addr().expect("local address");
    let socket = match listening {
        Listening::Inherited => Some(socket),
        Listening::BoundPerProcess => {
            drop(socket);
            None
        }
    };
    let config = s
        .server
        .config_path()
        .to_str()
        .expect("UTF-8 path")
        .to_owned();
    let dir = s.server.dir().to_owned();
    let start = |n: usize| {
        let mut cmd = match &socket {
            Some(listener) => socket_activated(
                &token_server_bin(),
                &["serve", "--config", config.as_str()],
                listener,
            ),
            None => {
                let mut cmd = Command::new(token_server_bin());
                cmd.args(["serve", "--config", config.as_str(), "--listen"])
                    .arg(addr.to_string());
                cmd
            }
        };
        cmd.env_remove("REGAUTH_LOG").env_remove("RUST_LOG");
        ChildGuard::spawn(cmd, &dir, &format!("token-server.cycle-{n}"))
    };

    let basic = STANDARD.encode(format!("alice:{}", s.alice_password));
    let request = format!(
        "GET /token?service={SERVICE}&scope={SCOPE} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Basic {basic}\r\n\r\n"
    );
    let clients: Arc<Vec<Mutex<KeepAliveClient>>> = Arc::new(
        (0..4)
            .map(|_| Mutex::new(KeepAliveClient::new(addr, Duration::from_secs(10))))
            .collect(),
    );
    let mut current = start(0);
    let load = {
        let clients = Arc::clone(&clients);
        Load::start(
            clients.len(),
            5_000,
            Arc::new(move |i| {
                clients[i]
                    .lock()
                    .expect("one worker per client")
                    .send(request.as_bytes())
                    .map(|r| r.status)
            }),
        )
    };
    load.wait_ok(OK_PER_PROCESS, Duration::from_secs(60));
    if listening == Listening::Inherited {
        let logs = current.stderr();
        assert!(
            logs.contains("inherited from systemd"),
            "the server did not take the inherited socket:\n{logs}"
        );
    }
    for n in 1..=restarts {
        send_signal(current.pid(), Signal::Term);
        let status = exit_status(&mut current);
        assert!(status.success(), "{status}\n{}", current.logs());
        current = start(n);
        load.wait_ok(load.ok() + OK_PER_PROCESS, Duration::from_secs(60));
    }
    let attempts = load.finish();
    send_signal(current.pid(), Signal::Term);
    let status = exit_status(&mut current);
    assert!(status.success(), "{status}\n{}", current.logs());

    let all = attempts.concat();
    let clients = clients.iter().map(|c| c.lock().expect("workers are done"));
    let (resent, closing) = clients.fold((0, 0), |(r, c), client| {
        (r + client.resent, c + client.closing_responses)
    });
    Outcome {
        ok: all.iter().filter(|a| a.result == Ok(200)).count(),
        failed: all.iter().filter(|a| a.result != Ok(200)).count(),
        tally: tally(&all),
        resent,
        closing,
    }
}

/// The figure the README quotes. "No request lost" means: every request
/// gets its response, given that the client, like every HTTP client, sends
/// an idempotent request again when a kept-alive connection closes before
/// any byte of the response (the server closes idle connections when it
/// stops). The control test below shows the test can fail.
#[test]
fn ten_restarts_of_a_socket_activated_server_under_a_bounded_load_lose_no_request() {
    let restarts = 10;
    let outcome = restarts_under_load(Listening::Inherited, restarts);
    eprintln!("socket-activated, {restarts} restarts: {outcome}");
    assert_eq!(outcome.failed, 0, "{:?}", outcome.tally);
    assert!(
        outcome.ok >= (restarts + 1) * OK_PER_PROCESS,
        "{:?}",
        outcome.tally
    );
}

/// The control: the same restarts, with each process binding the port
/// itself, refuse connections between one process closing its socket and
/// the next binding it. Were this ever to lose nothing, the test above
/// would prove nothing.
#[test]
fn without_the_inherited_socket_the_same_restarts_lose_requests() {
    let restarts = 3;
    let outcome = restarts_under_load(Listening::BoundPerProcess, restarts);
    eprintln!("bound per process, {restarts} restarts: {outcome}");
    assert!(outcome.failed > 0, "{:?}", outcome.tally);
    assert!(
        outcome
            .tally
            .keys()
            .all(|k| k == "200" || k.starts_with("connect") || k.starts_with("new connection")),
        "only refused or reset connections are expected: {:?}",
        outcome.tally
    );
}
