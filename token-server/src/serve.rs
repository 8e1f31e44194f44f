//! The accept loop: plain TCP or TLS, with the limits a public endpoint
//! needs and a graceful drain on shutdown.
//!
//! - every connection reads and writes under an idle timeout, and request
//!   headers must arrive within `header_read_timeout`, so a slowloris client
//!   holds a connection for seconds, not forever;
//! - header size is bounded (`max_header_bytes`), and so is the number of
//!   open connections (`max_connections`): past it, accepting waits;
//! - TLS handshakes run in the connection's own task under the same timeouts;
//! - on shutdown, accepting stops and in-flight requests get `drain_timeout`.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tower::ServiceExt;

use crate::authenticate::Peer;
use crate::settings::Limits;
use crate::tls::TlsReloader;

/// Runs `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Built once: each connection takes a clone (a few reference counts)
    // instead of new timers and settings.
    let http = builder(&limits);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => p.map_err(io::Error::other)?,
        };
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let mut io = TimeoutStream::new(tcp);
        io.set_read_timeout(Some(limits.idle_timeout));
        io.set_write_timeout(Some(limits.idle_timeout));
        let io = Box::pin(io);
        let app = app.clone();
        let tls = tls.as_ref().map(|t| t.acceptor());
        let watcher = graceful.watcher();
        let http = http.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let peer = Peer {
                        addr: Some(addr),
                        certificates: None,
                    };
                    serve_connection(io, app, peer, &http, &limits, watcher).await;
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::info!(client = %addr, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(client = %addr, "TLS handshake timed out");
                                return;
                            }
                        };
                    // rustls only exposes peer certificates its verifier
                    // accepted; what they mean is `authenticate`'s business.
                    let certificates = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .filter(|chain| !chain.is_empty())
                        .map(|chain| {
                            chain
                                .iter()
                                .map(|c| c.clone().into_owned())
                                .collect::<Vec<_>>()
                                .into()
                        });
                    let peer = Peer {
                        addr: Some(addr),
                        certificates,
                    };
                    serve_connection(stream, app, peer, &http, &limits, watcher).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!(timeout = ?limits.drain_timeout, "draining in-flight requests");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed; closing the remaining connections");
    }
    Ok(())
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.idle_timeout));
    b
}

/// Serves HTTP/1 or HTTP/2 on one connection, with the connection's facts
/// in every request's extensions.
async fn serve_connection<I>(
    io: I,
    app: Router,
    peer: Peer,
    http: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // hyper's header timer starts only once it has read enough bytes to pick
    // HTTP/1 or HTTP/2, and HTTP/2 has none at all; so the first request
    // must begin within header_read_timeout or the connection is dropped.
    let started = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&started);
    let svc = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        seen.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(peer.clone());
        req.map(axum::body::Body::new)
    });
    let conn = http
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = &mut conn => r,
        () = tokio::time::sleep(limits.header_read_timeout) => {
            if !started.load(Ordering::Relaxed) {
                tracing::debug!("no request within header_read_timeout; closing the connection");
                return;
            }
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
