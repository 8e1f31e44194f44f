//! `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::clock;
use crate::run::Health;

/// Bound on one request to the operations port.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The operations router.
pub(crate) fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Kubernetes API has not answered yet",
        )
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        health.metrics.render(clock::now()),
    )
}

/// Serves the router on `listener` until `shutdown`; every request is
/// bounded in time.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(health).layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use axum::body::Body;
    use axum::http::Request;
    use std::sync::atomic::AtomicBool;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let health = Arc::new(Health {
            ready: AtomicBool::new(false),
            metrics: Arc::new(Metrics::default()),
        });
        let call = |path: &'static str| {
            let app = router(Arc::clone(&health));
            async move {
                let response = app
                    .oneshot(Request::get(path).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        assert_eq!(call("/healthz").await.0, StatusCode::OK);
        assert_eq!(call("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        health.ready.store(true, Ordering::SeqCst);
        assert_eq!(call("/readyz").await.0, StatusCode::OK);
        let (status, text) = call("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("regauth_pull_secrets_managed 0"), "{text}");
    }
}
