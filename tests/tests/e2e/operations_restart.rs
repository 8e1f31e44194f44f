//! SIGTERM drains: the listener closes at once, a request already in
//! flight still completes, and the process exits 0. Restarting on the same
//! port under load: clients see only connection errors during the gap,
//! then succeed again, with refresh tokens issued before the restart.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regauth_e2e::ops::{
    Load, Signal, connect, read_response, send_signal, tally, token_request, wait_for_log,
};
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
