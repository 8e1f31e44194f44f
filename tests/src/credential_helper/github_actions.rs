//! A loopback stand-in for the GitHub Actions ID-token endpoint.
//!
//! A runner exports `ACTIONS_ID_TOKEN_REQUEST_URL` (which already carries
//! `?api-version=2.0`) and `ACTIONS_ID_TOKEN_REQUEST_TOKEN`. A client asks
//! `GET $URL&audience=AUD` with `Authorization: Bearer $TOKEN` and gets
//! `{"count": N, "value": JWT}`. This stub checks the path, that the
//! existing query survived, the bearer and the audience, mints the token
//! for the audience asked, and records every request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The path the stub serves, shaped like the runner's.
pub const REQUEST_PATH: &str = "/_apis/distributedtask/hubs/build/plans/p1/jobs/j1/idtoken";
/// The query the runner's URL already carries.
pub const API_VERSION: &str = "api-version=2.0";
/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// How long a connection may take to send its request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Mints an ID token for an audience (`None`: the request named none).
pub type Mint = dyn Fn(Option<&str>) -> String + Send + Sync;

/// One request as the stub saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// Method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// True when `Authorization` was `Bearer <the request token>`.
    pub bearer_ok: bool,
    /// The `audience` query parameter, decoded.
    pub audience: Option<String>,
    /// The status answered.
    pub status: u16,
}

struct State {
    request_token: String,
    mint: Box<Mint>,
    seen: Mutex<Vec<SeenRequest>>,
}

/// The running stub; stops on drop.
pub struct GithubActionsStub {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GithubActionsStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubActionsStub")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl GithubActionsStub {
    /// Starts the stub on 127.0.0.1. It answers requests carrying
    /// `request_token` as bearer with `mint(audience)`.
    pub fn start(
        request_token: &str,
        mint: impl Fn(Option<&str>) -> String + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the GitHub Actions stub");
        let addr = listener.local_addr().expect("stub address");
        let state = Arc::new(State {
            request_token: request_token.to_owned(),
            mint: Box::new(mint),
            seen: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (serving, stopping) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name(format!("gha-stub-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &serving);
                    }
                }
            })
            .expect("spawn the GitHub Actions stub");
        Self {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_URL`: `http://127.0.0.1:PORT/…/idtoken?api-version=2.0`.
    pub fn request_url(&self) -> String {
        format!("http://{}{REQUEST_PATH}?{API_VERSION}", self.addr)
    }

    /// The two variables a runner exports for a job with `id-token: write`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL".to_owned(),
                self.request_url(),
            ),
            (
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN".to_owned(),
                self.state.request_token.clone(),
            ),
        ]
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().expect("stub log lock").clone()
    }
}

impl Drop for GithubActionsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, state: &State) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_owned());
    let bearer_ok = authorization
        .as_deref()
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer") && token.trim() == state.request_token
        });
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let audience = params
        .iter()
        .find(|(k, _)| k == "audience")
        .map(|(_, v)| v.clone());
    let (status, body) = if method != "GET" {
        (405, r#"{"message":"method not allowed"}"#.to_owned())
    } else if path != REQUEST_PATH || !query.split('&').any(|p| p == API_VERSION) {
        (404, r#"{"message":"not found"}"#.to_owned())
    } else if !bearer_ok {
        (401, r#"{"message":"Bad credentials"}"#.to_owned())
    } else {
        let token = (state.mint)(audience.as_deref());
        (
            200,
            serde_json::json!({"count": token.len(), "value": token}).to_string(),
        )
    };
    state.seen.lock().expect("stub log lock").push(SeenRequest {
        method,
        target,
        bearer_ok,
        audience,
        status,
    });
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_client::{http_client, send};

    #[test]
    fn checks_bearer_path_and_audience() {
        let stub = GithubActionsStub::start("req-token", |aud| format!("jwt-for-{aud:?}"));
        let url = format!("{}&audience=reg%3Aauth", stub.request_url());
        let ok = send(http_client().get(&url).bearer_auth("req-token"));
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(ok.json()["value"], "jwt-for-Some(\"reg:auth\")");
        let wrong = send(http_client().get(&url).bearer_auth("other"));
        assert_eq!(wrong.status, 401);
        let lost_query = format!("http://{}{REQUEST_PATH}?audience=x", stub.addr);
        assert_eq!(
            send(http_client().get(&lost_query).bearer_auth("req-token")).status,
            404
        );
        let seen = stub.requests();
        assert_eq!(seen.len(), 3);
        assert!(seen[0].bearer_ok && !seen[1].bearer_ok);
        assert_eq!(seen[0].audience.as_deref(), Some("reg:auth"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
