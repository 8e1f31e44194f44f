//! The one loopback HTTP/1.1 server behind every test double that speaks
//! HTTP: the OIDC issuer, the GitHub Actions ID-token endpoint and the
//! Kubernetes API stub.
//!
//! Each [`HttpStub`] owns a small tokio runtime and serves an axum
//! [`Router`] on `127.0.0.1:0`, and optionally the same router over TLS on
//! a second port ([`HttpStub::serve_tls`]). Streaming responses (Kubernetes
//! watches) work like any other axum body. Dropping the stub shuts the
//! runtime down, which closes the listeners and every open connection,
//! streams included, so nothing outlives the test that started it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// How long shutdown waits for in-flight handlers before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running stub; stops on drop.
pub struct HttpStub {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
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
            tls_addr: None,
            runtime: Some(runtime),
        }
    }

    /// Serves `router` over TLS too, with the certificate chain and key
    /// (PEM), on another ephemeral port of 127.0.0.1.
    pub fn serve_tls(&mut self, router: Router, cert_pem: &str, key_pem: &str) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("the stub's certificate is PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("the stub's key is PEM");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the stub's certificate and key match");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the stub's TLS port");
        let tls_addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        self.tls_addr = Some(tls_addr);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // Handshakes run in their own tasks, so a slow client holds up no one.
        runtime.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        runtime.spawn(async move {
            let _ = axum::serve(TlsListener { rx, addr: tls_addr }, router).await;
        });
    }

    /// `https://127.0.0.1:PORT` once [`HttpStub::serve_tls`] was called.
    pub fn https_url(&self) -> Option<String> {
        self.tls_addr.map(|a| format!("https://{a}"))
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

/// Connections whose TLS handshake is done, for axum.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The acceptor task is gone with the runtime: serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
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
