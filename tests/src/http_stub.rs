//! The one loopback HTTP/1.1 server behind every test double that speaks
//! HTTP: the OIDC issuer, the GitHub Actions ID-token endpoint and the
//! Kubernetes API stub.
//!
//! Each [`HttpStub`] owns a small tokio runtime and serves an axum
//! [`Router`] on `127.0.0.1:0`. Streaming responses (Kubernetes watches)
//! work like any other axum body. Dropping the stub shuts the runtime down,
//! which closes the listener and every open connection, streams included,
//! so nothing outlives the test that started it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// How long shutdown waits for in-flight handlers before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A running stub; stops on drop.
pub struct HttpStub {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for HttpStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStub")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpStub {
    /// Binds 127.0.0.1 on an ephemeral port and serves `router` on a
    /// runtime of its own, whose threads are named after `name`.
    pub fn start(name: &str, router: Router) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("stub-{name}"))
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("start the runtime of the {name} stub: {e}"));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("bind the {name} stub: {e}"));
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        runtime.spawn(async move {
            // Errors here are accept failures on a test socket; the test sees
            // them as refused connections.
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            runtime: Some(runtime),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `future` on the stub's runtime and waits for it (for test code
    /// that must act inside the stub's async world).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .block_on(future)
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(SHUTDOWN_GRACE);
        }
    }
}

/// A response with `status`, a `Content-Type` and a body, marked
/// `Cache-Control: no-store` so no client caches a test's answer.
pub fn respond(status: u16, content_type: &str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `response` marked cacheable for `seconds`, as issuers mark their
/// discovery documents and key sets (kube-apiserver: `max-age=3600`).
pub fn cacheable(mut response: Response, seconds: u32) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={seconds}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// A JSON response of the given content type.
pub fn json(status: u16, content_type: &str, body: &serde_json::Value) -> Response {
    respond(status, content_type, body.to_string())
}

/// A plain-text error response.
pub fn text(status: u16, message: &str) -> Response {
    respond(status, "text/plain; charset=utf-8", message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_client::{http_client, send};
    use axum::routing::get;

    #[test]
    fn serves_the_router_and_stops_on_drop() {
        let stub = HttpStub::start(
            "probe",
            Router::new().route("/hello", get(|| async { text(200, "hi") })),
        );
        let reply = send(http_client().get(format!("{}/hello", stub.url())));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "hi");
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(
            send(http_client().get(format!("{}/nope", stub.url()))).status,
            404
        );
        let addr = stub.addr();
        drop(stub);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the stub still accepts connections after drop"
        );
    }
}
