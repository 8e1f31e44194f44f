//! The HTTP surface: `/token` (GET and POST), the JWKS and health.

mod ask;
mod audit;
mod error;
pub(crate) mod form;
pub(crate) mod request;
mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use arc_swap::ArcSwap;

use crate::authenticate::Guards;
use crate::limiter::FailureLimiter;
use crate::metrics::{ENDPOINTS, Metrics, SharedUse};
use crate::password_check::PasswordChecks;
use crate::settings::{RevocationUnavailable, Settings};
use crate::shared::limiter::Limiter;
use crate::shared::{SharedError, SharedState};

/// The clock handlers read; a parameter so tests can fix time.
pub type Clock = fn() -> SystemTime;

/// What every handler shares. The settings can be swapped at run time
/// (SIGHUP); each request takes one snapshot and keeps it to the end.
pub struct AppState {
    settings: ArcSwap<Settings>,
    clock: Clock,
    limiter: Arc<Limiter>,
    shared: Option<Arc<SharedState>>,
    checks: Arc<PasswordChecks>,
    metrics: Metrics,
}

impl AppState {
    /// State over `settings`, reading time from `clock`. With
    /// `shared_state` set it makes the Redis client and starts following
    /// Redis (connecting in the background), so it must run inside a Tokio
    /// runtime.
    pub fn new(settings: Settings, clock: Clock) -> Result<Arc<Self>, SharedError> {
        let limits = settings.limits;
        let local = Arc::new(FailureLimiter::new(
            limits.auth_failures_before_backoff,
            limits.max_backoff,
        ));
        let metrics = Metrics::new();
        let shared = match &settings.shared_state {
            None => None,
            Some(s) => {
                let shared =
                    SharedState::new(s, limits.shared_state_timeout, metrics.shared_state())?;
                shared.issuing(&settings);
                shared.follow();
                Some(shared)
            }
        };
        let limiter = Arc::new(Limiter::new(
            local,
            shared.clone(),
            metrics.shared_state_fallbacks(SharedUse::Limiter),
        ));
        let checks = PasswordChecks::new(
            limits.max_concurrent_password_checks,
            limits.password_check_queue_timeout,
            metrics.password_hashes(),
        );
        Ok(Arc::new(AppState {
            settings: ArcSwap::from_pointee(settings),
            clock,
            limiter,
            shared,
            checks,
            metrics,
        }))
    }

    /// A snapshot of the settings in force. Take it once per request.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Puts new settings in force for every request that starts from now on.
    /// Limits that shape the listener (body size, timeouts) keep their
    /// start-up values until a restart.
    pub fn replace_settings(&self, settings: Settings) {
        if let Some(shared) = &self.shared {
            shared.issuing(&settings);
        }
        self.settings.store(Arc::new(settings));
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn guards(&self) -> Guards<'_> {
        Guards {
            limiter: &self.limiter,
            shared: self.shared.as_deref(),
            checks: &self.checks,
            metrics: &self.metrics,
        }
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }
}

/// Builds the router with limits and per-request spans.
pub fn router(state: Arc<AppState>) -> Router {
    let limits = state.settings().limits;
    Router::new()
        .route("/token", get(token::get).post(token::post))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            request_span,
        ))
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

/// Ready when signing keys are loaded (always, once running), every
/// trusted issuer's keys are fetched or cached, and, in a fleet whose
/// revocation checks deny, the revocations held are current within
/// `revocation_max_staleness`. An issuer without keys gets a (rate-limited)
/// fetch attempt here. Redis itself is not asked: the follower's state is.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let settings = state.settings();
    let now = std::time::Instant::now();
    let shared = state.shared.as_ref().map(|shared| {
        (
            shared.is_up(),
            shared.in_sync(now, settings.revocation_staleness),
        )
    });
    let shared_blocks = matches!(shared, Some((_, false)))
        && settings.revocation_unavailable == RevocationUnavailable::Deny;
    let mut waiting = Vec::new();
    for issuer in settings.issuers.all() {
        if !issuer.keys.is_loaded() {
            issuer.keys.prefetch().await;
            if !issuer.keys.is_loaded() {
                waiting.push(issuer.name.clone());
            }
        }
    }
    let body = serde_json::json!({
        "signing_keys": settings.keys.all().len(),
        "issuers_without_keys": waiting,
        "shared_state": match shared {
            None => "none",
            Some((true, _)) => "up",
            Some((false, _)) => "unreachable",
        },
        "revocations": match shared {
            None => "local",
            Some((_, true)) => "current",
            Some((_, false)) => "stale",
        },
    });
    let status = if waiting.is_empty() && !shared_blocks {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let settings = state.settings();
    let fetches: Vec<(String, u64)> = settings
        .issuers
        .all()
        .iter()
        .map(|issuer| (issuer.name.clone(), issuer.keys.fetch_count()))
        .collect();
    match state.metrics().render(&fetches) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The endpoint label for metrics: an index into [`ENDPOINTS`]; unknown
/// paths share the last, `other`.
fn endpoint(path: &str) -> usize {
    ENDPOINTS
        .iter()
        .position(|e| *e == path)
        .unwrap_or(ENDPOINTS.len() - 1)
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Opens one span per request. Only the method and path are recorded: the
/// query and headers may carry credentials. The span's fields prefix every
/// audit line, so it stays at info; `/healthz`, which probes poll and which
/// logs nothing, gets none, since an enabled span costs an allocation in
/// the span registry and the formatting of its fields.
async fn request_span(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
    let endpoint = endpoint(req.uri().path());
    let span = if ENDPOINTS[endpoint] == "/healthz" {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "request",
            id,
            method = req.method().as_str(),
            path = req.uri().path(),
            status = tracing::field::Empty,
        )
    };
    async move {
        let resp = next.run(req).await;
        let status = resp.status();
        tracing::Span::current().record("status", status.as_u16());
        state.metrics().request(endpoint, status.as_u16());
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
