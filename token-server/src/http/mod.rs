//! The HTTP surface: `/token` (GET and POST), the JWKS and health.

pub mod auth;
pub mod error;
pub mod form;
mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::config::Settings;

/// The clock handlers read; a parameter so tests can fix time.
pub type Clock = fn() -> SystemTime;

/// What every handler shares.
pub struct AppState {
    settings: Arc<Settings>,
    clock: Clock,
}

impl AppState {
    /// State over `settings`, reading time from `clock`.
    pub fn new(settings: Settings, clock: Clock) -> Arc<Self> {
        Arc::new(AppState {
            settings: Arc::new(settings),
            clock,
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings)
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }
}

/// Builds the router with limits and per-request spans.
pub fn router(state: Arc<AppState>) -> Router {
    let limits = state.settings.limits;
    Router::new()
        .route("/token", get(token::get).post(token::post))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            serde_json::json!({"errors":[{"code":"NOT_FOUND","message":"no such endpoint"}]}),
        ),
    )
        .into_response()
}

async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    let settings = state.settings();
    let mut resp = axum::Json(settings.keys.jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// RFC 8414 metadata, so OAuth2 clients can discover the token endpoint.
async fn metadata(State(state): State<Arc<AppState>>) -> Response {
    use crate::proto::{GRANT_TOKEN_EXCHANGE, ServerMetadata, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT};
    let settings = state.settings();
    let base = &settings.public_url;
    let body = ServerMetadata {
        issuer: base.clone(),
        token_endpoint: format!("{base}/token"),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        grant_types_supported: [
            "password",
            "refresh_token",
            "client_credentials",
            GRANT_TOKEN_EXCHANGE,
        ]
        .map(String::from)
        .to_vec(),
        token_endpoint_auth_methods_supported: ["none", "tls_client_auth"]
            .map(String::from)
            .to_vec(),
        subject_token_types_supported: [TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN]
            .map(String::from)
            .to_vec(),
    };
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Opens one span per request. Only the method and path are recorded: the
/// query and headers may carry credentials.
async fn request_span(req: Request, next: Next) -> Response {
    let id = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "request",
        id,
        method = %req.method(),
        path = %req.uri().path(),
        status = tracing::field::Empty,
    );
    async move {
        let resp = next.run(req).await;
        let status = resp.status();
        tracing::Span::current().record("status", status.as_u16());
        if status.is_server_error() {
            tracing::warn!("request failed");
        } else {
            tracing::debug!("request done");
        }
        resp
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests;
