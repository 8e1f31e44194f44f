//! What the replicas of a fleet share, in Redis: the failed-password
//! limiter's counts and the revocations.
//!
//! Every round trip is bounded by `limits.shared_state_timeout`. When Redis
//! does not answer, callers fall back (the limiter to this process's own
//! counts, revocation checks to `revocation_unavailable`), and for a second
//! after a failure they do not try again, so an outage costs each request
//! nothing rather than a timeout. Each change between reachable and
//! unreachable is logged once.

pub mod limiter;
pub mod revocation;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::settings::SharedStateSettings;

/// How long after a failure requests skip Redis altogether.
const COOL_DOWN: Duration = Duration::from_secs(1);

/// Why a shared-state operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The URL or TLS settings cannot make a client.
    #[error("cannot set up the Redis client ({:?})", .0.kind())]
    Setup(#[source] redis::RedisError),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis failed")]
    Redis(#[from] redis::RedisError),
    /// No answer within the timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A recent failure: not tried.
    #[error("Redis failed moments ago; not retried yet")]
    CoolingDown,
    /// Redis answered something this server does not understand.
    #[error("unexpected reply from Redis: {0}")]
    Reply(&'static str),
}

/// A connection to the shared Redis, with its health.
pub struct SharedState {
    conn: ConnectionManager,
    timeout: Duration,
    up: AtomicBool,
    /// Milliseconds since `epoch` until which Redis is not tried.
    skip_until_ms: AtomicU64,
    epoch: Instant,
    gauge: Gauge,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("timeout", &self.timeout)
            .field("up", &self.up)
            .finish_non_exhaustive()
    }
}

impl SharedState {
    /// A client for `settings`; it connects on first use and reconnects by
    /// itself. Needs a Tokio runtime.
    pub fn new(
        settings: &SharedStateSettings,
        timeout: Duration,
        gauge: Gauge,
    ) -> Result<Self, SharedError> {
        let client = match &settings.ca {
            None => redis::Client::open(settings.url.expose()),
            Some(ca) => redis::Client::build_with_tls(
                settings.url.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
        }
        .map_err(SharedError::Setup)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(SharedError::Setup)?;
        gauge.set(1);
        Ok(SharedState {
            conn,
            timeout,
            up: AtomicBool::new(true),
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            gauge,
        })
    }

    /// True unless the last round trip failed.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A round trip that ignores the cool-down: for readiness probes and
    /// the command line.
    pub async fn ping(&self) -> Result<(), SharedError> {
        let mut conn = self.conn.clone();
        let reply: Result<String, SharedError> = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await;
        self.record(reply.map(drop))
    }

    /// Runs one operation on a connection, bounded in time, recording the
    /// outcome. Skipped while cooling down after a failure.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let now_ms = self.millis();
        if now_ms < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(SharedError::CoolingDown);
        }
        let result = self.bounded(op(self.conn.clone())).await;
        self.record(result)
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SharedError::Redis(e)),
            Err(_) => Err(SharedError::Timeout(self.timeout)),
        }
    }

    fn record<T>(&self, result: Result<T, SharedError>) -> Result<T, SharedError> {
        match &result {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    self.gauge.set(1);
                    tracing::info!(
                        "shared state reachable again; fleet-wide limits and revocations apply"
                    );
                }
            }
            Err(e) => {
                let until = self.millis() + COOL_DOWN.as_millis() as u64;
                self.skip_until_ms.store(until, Ordering::Relaxed);
                if self.up.swap(false, Ordering::Relaxed) {
                    self.gauge.set(0);
                    tracing::warn!(
                        error = %crate::report::Chain(e),
                        "shared state unreachable; the limiter falls back to this replica's counts and revocation checks follow revocation_unavailable"
                    );
                }
            }
        }
        result
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
