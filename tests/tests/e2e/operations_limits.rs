//! Request limits over real HTTP: backoff after failed passwords (429 with
//! `Retry-After`, then success after the wait), 413 for oversized bodies
//! however they are framed, slow or silent connections cut off at
//! `header_read_timeout`, and oversized request heads refused.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use regauth_e2e::ops::{RawResponse, exchange, metric, metrics, trickle};
use regauth_e2e::token_client::HttpReply;
use regauth_e2e::token_server::{SERVICE, TokenServer};

use crate::support::standalone_server;

fn addr(server: &TokenServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port()))
}

fn basic_get(server: &TokenServer, user: &str, password: &str) -> HttpReply {
    server.client().get_token(
        &[("service", SERVICE), ("scope", "repository:alice/app:pull")],
        Some((user, password)),
    )
}

/// The `Retry-After` of a 429, in whole seconds.
fn retry_after(reply: &HttpReply, what: &str) -> u64 {
    assert_eq!(reply.status, 429, "{what}: {}", reply.body);
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: 429 without a numeric Retry-After: {reply:?}"))
}

#[test]
fn failed_passwords_back_off_with_retry_after_then_the_right_one_works() {
    let s = standalone_server(|b| {
        b.account("bob", "bob-password-1", &[])
            .extra_config("limits:\n  auth_failures_before_backoff: 1\n  max_backoff: 4s\n")
    });
    let server = &s.server;
    let right = s.alice_password.as_str();

    // One failure: alice must wait 1 s, even with the right password.
    assert_eq!(basic_get(server, "alice", "wrong").status, 401);
    let mut throttled = 0;
    let second = loop {
        let reply = basic_get(server, "alice", "wrong");
        if reply.status == 401 {
            break reply;
        }
        retry_after(&reply, "a wrong password during the backoff");
        throttled += 1;
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(second.status, 401);
    assert!(throttled > 0, "no 429 within the first backoff");

    // The second failure doubles the wait to 2 s.
    let refused = basic_get(server, "alice", right);
    let wait = retry_after(&refused, "the right password during the backoff");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(
        refused.json()["errors"][0]["code"],
        "TOOMANYREQUESTS",
        "{}",
        refused.body
    );
    let post = server
        .client()
        .password_grant("alice", right, SERVICE, "", false);
    retry_after(&post, "the password grant during the backoff");
    assert_eq!(
        basic_get(server, "bob", "bob-password-1").status,
        200,
        "the backoff is per account, bob from the same address still logs in"
    );

    std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(200));
    let after = basic_get(server, "alice", right);
    assert_eq!(after.status, 200, "after Retry-After: {}", after.body);
    let text = metrics(server.client());
    assert!(
        metric(
            &text,
            "regauth_requests_total{endpoint=\"/token\",outcome=\"rate_limited\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{text}"
    );
}

/// A password grant form padded with an extra field to `len` bytes or more.
fn form(password: &str, pad: usize) -> String {
    let mut body = format!(
        "grant_type=password&username=alice&password={password}&service={SERVICE}&client_id=e2e"
    );
    if pad > 0 {
        body.push_str("&pad=");
        body.push_str(&"a".repeat(pad));
    }
    body
}

fn post_with_length(addr: SocketAddr, body: &str) -> std::io::Result<RawResponse> {
    let request = format!(
        "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, request.as_bytes())
}

fn post_chunked(addr: SocketAddr, body: &str) -> std::io::Result<RawResponse> {
    let mut request = String::from(
        "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for chunk in body.as_bytes().chunks(500) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        ));
    }
    request.push_str("0\r\n\r\n");
    exchange(addr, request.as_bytes())
}

#[test]
fn oversized_bodies_get_413_with_content_length_and_chunked() {
    let s = standalone_server(|b| b.extra_config("limits:\n  max_body_bytes: 1024\n"));
    let addr = addr(&s.server);
    let small = form(&s.alice_password, 0);
    let big = form(&s.alice_password, 4096);
    for (framing, post) in [
        ("Content-Length", post_with_length as fn(_, &str) -> _),
        ("chunked", post_chunked),
    ] {
        let ok = post(addr, &small).unwrap_or_else(|e| panic!("{framing} small body: {e}"));
        assert_eq!(ok.status, 200, "{framing} small body: {}", ok.text());
        let refused = post(addr, &big).unwrap_or_else(|e| panic!("{framing} big body: {e}"));
        assert_eq!(
            refused.status,
            413,
            "{framing} body of {} bytes: {}",
            big.len(),
            refused.text()
        );
        let error: serde_json::Value = serde_json::from_slice(&refused.body)
            .unwrap_or_else(|e| panic!("{framing}: the 413 is not JSON ({e}): {}", refused.text()));
        assert_eq!(error["error"], "invalid_request", "{framing}: {error}");
    }
}

#[test]
fn a_slowloris_head_is_cut_off_at_header_read_timeout() {
    let s = standalone_server(|b| b.extra_config("limits:\n  header_read_timeout: 2s\n"));
    let start = Instant::now();
    let t = trickle(
        addr(&s.server),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"X-Slow: abcdefghijklmnopqrstuvwxyz",
        Duration::from_secs(1),
        Duration::from_secs(12),
    );
    let closed = t.closed_after.unwrap_or_else(|| {
        panic!(
            "the connection was still open after {:?} ({} bytes sent)\n{}",
            start.elapsed(),
            t.sent,
            s.server.logs()
        )
    });
    assert!(
        closed >= Duration::from_millis(1500) && closed <= Duration::from_secs(5),
        "closed after {closed:?}, expected about the 2 s header_read_timeout"
    );
    let received = String::from_utf8_lossy(&t.received);
    assert!(
        !received.contains(" 200 "),
        "the unfinished request was answered: {received}"
    );
    // The server still serves complete requests.
    assert_eq!(s.server.client().healthz(), Some(200));
}

#[test]
fn a_silent_connection_is_closed_at_header_read_timeout() {
    let s = standalone_server(|b| {
        b.extra_config("limits:\n  header_read_timeout: 2s\n  idle_timeout: 30s\n")
    });
    let t = trickle(
        addr(&s.server),
        b"",
        b"",
        Duration::from_millis(500),
        Duration::from_secs(8),
    );
    let closed = t.closed_after.unwrap_or_else(|| {
        panic!(
            "a connection that sent nothing was still open after 8 s; request headers \
             must arrive within header_read_timeout (2 s)"
        )
    });
    assert!(closed <= Duration::from_secs(5), "closed after {closed:?}");
}

/// The first 24 bytes decide between HTTP/1 and HTTP/2 (prior knowledge);
/// trickling the HTTP/2 preface must not hold a connection open either.
#[test]
fn a_trickled_http2_preface_is_cut_off_at_header_read_timeout() {
    let s = standalone_server(|b| {
        b.extra_config("limits:\n  header_read_timeout: 2s\n  idle_timeout: 30s\n")
    });
    let t = trickle(
        addr(&s.server),
        b"",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(1),
        Duration::from_secs(8),
    );
    let closed = t.closed_after.unwrap_or_else(|| {
        panic!(
            "a connection trickling the HTTP/2 preface ({} bytes sent) was still open \
             after 8 s; header_read_timeout is 2 s",
            t.sent
        )
    });
    assert!(closed <= Duration::from_secs(5), "closed after {closed:?}");
}

fn get_with_header_of(addr: SocketAddr, bytes: usize) -> std::io::Result<RawResponse> {
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(bytes)
    );
    exchange(addr, request.as_bytes())
}

#[test]
fn a_request_head_over_max_header_bytes_is_refused() {
    let s = standalone_server(|b| b.extra_config("limits:\n  max_header_bytes: 8192\n"));
    let addr = addr(&s.server);
    let ok = get_with_header_of(addr, 4096).expect("a 4 KiB header");
    assert_eq!(ok.status, 200, "a 4 KiB header is within the limit");
    // hyper answers before closing; the unread rest of the head may make
    // the close a reset, but the answer is already in our receive queue.
    let refused = get_with_header_of(addr, 12 * 1024).expect("an answer to a 12 KiB header");
    assert_eq!(
        refused.status, 431,
        "a 12 KiB header over an 8 KiB limit: {}",
        refused.head
    );
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(s.server.client().healthz(), Some(200));
}
