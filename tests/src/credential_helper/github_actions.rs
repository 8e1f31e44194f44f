//! A loopback stand-in for the GitHub Actions ID-token endpoint.
//!
//! A runner exports `ACTIONS_ID_TOKEN_REQUEST_URL` (which already carries
//! `?api-version=2.0`) and `ACTIONS_ID_TOKEN_REQUEST_TOKEN`. A client asks
//! `GET $URL&audience=AUD` with `Authorization: Bearer $TOKEN` and gets
//! `{"count": N, "value": JWT}`. This stub checks the path, that the
//! existing query survived, the bearer and the audience, mints the token
//! for the audience asked, and records every request.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;

use crate::http_stub::{self, HttpStub};

/// The path the stub serves, shaped like the runner's.
pub const REQUEST_PATH: &str = "/_apis/distributedtask/hubs/build/plans/p1/jobs/j1/idtoken";
/// The query the runner's URL already carries.
pub const API_VERSION: &str = "api-version=2.0";

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
    server: HttpStub,
    state: Arc<State>,
}

impl std::fmt::Debug for GithubActionsStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubActionsStub")
            .field("addr", &self.server.addr())
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
        let state = Arc::new(State {
            request_token: request_token.to_owned(),
            mint: Box::new(mint),
            seen: Mutex::new(Vec::new()),
        });
        let serving = Arc::clone(&state);
        let router = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
            let state = Arc::clone(&serving);
            async move { serve(&state, &method, &uri, &headers) }
        });
        Self {
            server: HttpStub::start("github-actions", router),
            state,
        }
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_URL`: `http://127.0.0.1:PORT/…/idtoken?api-version=2.0`.
    pub fn request_url(&self) -> String {
        format!("{}{REQUEST_PATH}?{API_VERSION}", self.server.url())
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

fn serve(state: &State, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let method = method.as_str().to_owned();
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
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
    http_stub::respond(status, "application/json; charset=utf-8", body)
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
        let lost_query = format!("{}{REQUEST_PATH}?audience=x", stub.server.url());
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
