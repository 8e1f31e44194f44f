//! What the replicas of a fleet share, in Redis: the failed-password
//! limiter's counts and the revocations.
//!
//! Requests do not wait for Redis unless a password hash is about to run.
//! Each replica holds the revocations, and the limiter's blocks that
//! matter to cached passwords, in memory; a follower task (`follow`) loads
//! them at start and then applies every change as Redis publishes it. A
//! reservation before a hash is the one round trip on a request's path,
//! bounded by `limits.shared_state_timeout`: when Redis does not answer in
//! time the limiter falls back to this process's own counts, and for a
//! second after a failure the round trip is not tried at all.

pub mod endpoint;
mod follow;
pub mod limiter;
mod link;
pub mod revocation;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::MultiplexedConnection;

use crate::identity::Kind;
use crate::settings::{Settings, SharedStateSettings};

pub use link::needs_new_connection;

/// Not yet connected.
const UNKNOWN: u8 = 0;
/// The follower is in step with Redis.
const UP: u8 = 1;
/// The follower lost Redis.
const DOWN: u8 = 2;

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
    /// A sentinel announced a new primary.
    #[error("a sentinel announced a new primary")]
    Switched,
}

impl SharedError {
    /// True when trying again on a new connection may succeed: the
    /// connection failed, or the server it reached is no longer primary.
    pub fn retryable(&self) -> bool {
        match self {
            SharedError::Redis(e) => needs_new_connection(e),
            SharedError::Timeout(_) | SharedError::CoolingDown | SharedError::Switched => true,
            SharedError::Setup(_) | SharedError::Reply(_) => false,
        }
    }
}

/// The series the shared state reports on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct SharedMetrics {
    /// 1 while the follower is in step with Redis.
    pub up: Gauge,
    /// Times Redis came back without the revocations (its epoch marker
    /// gone or changed).
    pub resets: Counter,
    /// Revocations written back to a Redis that lacked them.
    pub written_back: Counter,
    /// Revocations held in memory.
    pub held: Gauge,
    /// Seconds since the revocations were last known to be current.
    pub stale_seconds: Gauge,
    /// How far Redis's clock runs ahead of this process's, in seconds.
    pub clock_offset: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// The shared Redis, as this process sees it.
pub struct SharedState {
    link: link::Link,
    timeout: Duration,
    /// Milliseconds since `epoch` until which Redis is not tried.
    skip_until_ms: AtomicU64,
    epoch: Instant,
    revocations: revocation::Revocations,
    view: limiter::View,
    /// Milliseconds since `epoch` of the follower's last confirmed sync;
    /// 0 until the first load.
    synced_ms: AtomicU64,
    /// [`UNKNOWN`], [`UP`] or [`DOWN`]: each change is logged once.
    health: AtomicU8,
    metrics: SharedMetrics,
    /// Wakes the follower when a sentinel announces a new primary.
    switched: tokio::sync::Notify,
    /// Per horizon scope, the lifetime of the refresh tokens this process
    /// issues under the settings in force.
    lifetimes: std::sync::Mutex<Vec<(String, Duration)>>,
    /// Milliseconds Redis's clock runs ahead of this process's, once
    /// measured (`clock_measured`).
    clock_offset_ms: AtomicI64,
    clock_measured: AtomicBool,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("timeout", &self.timeout)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl SharedState {
    /// A client for `settings`; it connects on first use. Call
    /// [`SharedState::follow`] (in a Tokio runtime) to load and follow the
    /// revocations.
    pub fn new(
        settings: &SharedStateSettings,
        timeout: Duration,
        metrics: SharedMetrics,
    ) -> Result<Arc<Self>, SharedError> {
        let link = link::Link::new(&settings.endpoint, settings.ca.as_deref(), timeout)
            .map_err(SharedError::Setup)?;
        metrics.up.set(0);
        Ok(Arc::new(SharedState {
            link,
            timeout,
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            revocations: revocation::Revocations::default(),
            view: limiter::View::default(),
            synced_ms: AtomicU64::new(0),
            health: AtomicU8::new(UNKNOWN),
            metrics,
            switched: tokio::sync::Notify::new(),
            lifetimes: std::sync::Mutex::new(Vec::new()),
            clock_offset_ms: AtomicI64::new(0),
            clock_measured: AtomicBool::new(false),
        }))
    }

    /// Takes the lifetimes of the refresh tokens `settings` issues, which
    /// this process publishes as its horizon (see `revocation`): at once
    /// when in a runtime (after a reload), and whenever the follower
    /// connects or checks on Redis.
    pub fn issuing(self: &Arc<Self>, settings: &Settings) {
        let mut lifetimes = vec![
            (
                revocation::scope(Kind::Account, None),
                settings.refresh_token_ttl,
            ),
            (
                revocation::scope(Kind::Node, None),
                settings.refresh_token_ttl,
            ),
            (
                revocation::scope(Kind::Certificate, None),
                settings.refresh_token_ttl,
            ),
        ];
        for i in settings.issuers.all() {
            lifetimes.push((
                revocation::scope(i.kind.principal_kind(), Some(&i.name)),
                i.credential_ttl,
            ));
        }
        *self.lifetimes.lock().unwrap_or_else(|e| e.into_inner()) = lifetimes;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let this = Arc::clone(self);
            runtime.spawn(async move {
                let lifetimes = this.lifetimes();
                let result = this
                    .run(|mut conn| async move {
                        revocation::publish_horizon(&mut conn, &lifetimes).await
                    })
                    .await;
                if let Err(e) = result {
                    tracing::debug!(error = %crate::report::Chain(&e), "publishing the refresh-token horizon failed; the follower publishes it when it reaches Redis");
                }
            });
        }
    }

    /// `local` (this process's wall clock) in the fleet's clock: Redis's, as
    /// the follower last measured it, so that refresh tokens minted and
    /// checked by replicas whose clocks differ compare as one (a cut-off
    /// such as `revoke --all-before now` is Redis's time too). Until a
    /// first measurement, `local` itself.
    pub fn fleet_time(&self, local: SystemTime) -> SystemTime {
        if !self.clock_measured.load(Ordering::Relaxed) {
            return local;
        }
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        let by = Duration::from_millis(offset.unsigned_abs());
        let shifted = if offset >= 0 {
            local.checked_add(by)
        } else {
            local.checked_sub(by)
        };
        shifted.unwrap_or(local)
    }

    /// Records that Redis's clock runs `offset_ms` ahead of this process's.
    fn clock_measured(&self, offset_ms: i64) {
        self.clock_offset_ms.store(offset_ms, Ordering::Relaxed);
        self.clock_measured.store(true, Ordering::Relaxed);
        self.metrics.clock_offset.set(offset_ms as f64 / 1000.0);
    }

    /// The lifetimes set by [`SharedState::issuing`].
    fn lifetimes(&self) -> Vec<(String, Duration)> {
        self.lifetimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts following Redis: loads the revocations and the mirrored
    /// blocks, then applies every change. Needs a Tokio runtime.
    pub fn follow(self: &Arc<Self>) {
        tokio::spawn(follow::follow(Arc::clone(self)));
        if self.link.is_sentinel() {
            tokio::spawn(follow::watch_sentinels(Arc::clone(self)));
        }
    }

    /// The revocations this process holds.
    pub fn revocations(&self) -> &revocation::Revocations {
        &self.revocations
    }

    /// The fleet's blocks and failures this process mirrors.
    pub(crate) fn limiter_view(&self) -> &limiter::View {
        &self.view
    }

    /// True while the follower is connected and in step with Redis.
    pub fn is_up(&self) -> bool {
        self.health.load(Ordering::Relaxed) == UP
    }

    /// How long ago, at `now`, the revocations held were last known to be
    /// current; `None` before they were ever loaded.
    pub fn staleness(&self, now: Instant) -> Option<Duration> {
        match self.synced_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.epoch + Duration::from_millis(ms))),
        }
    }

    /// True when the revocations were loaded and, at `now`, were current
    /// at most `bound` ago.
    pub fn in_sync(&self, now: Instant, bound: Duration) -> bool {
        self.staleness(now).is_some_and(|s| s <= bound)
    }

    /// Runs one operation on the command connection, bounded in time.
    /// Skipped while cooling down after a failure.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, SharedError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let now_ms = self.millis();
        if now_ms < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(SharedError::CoolingDown);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = match tokio::time::timeout_at(deadline, self.link.get()).await {
            Err(_) => Err(SharedError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(SharedError::Redis(e)),
            Ok(Ok((generation, conn))) => match tokio::time::timeout_at(deadline, op(conn)).await {
                Ok(Ok(v)) => {
                    self.link.outcome(generation, None, false);
                    Ok(v)
                }
                Ok(Err(e)) => {
                    self.link.outcome(generation, Some(&e), false);
                    Err(SharedError::Redis(e))
                }
                Err(_) => {
                    self.link.outcome(generation, None, true);
                    Err(SharedError::Timeout(self.timeout))
                }
            },
        };
        if result.is_err() {
            let until = self.millis() + COOL_DOWN.as_millis() as u64;
            self.skip_until_ms.store(until, Ordering::Relaxed);
        }
        result
    }

    /// Runs `op` up to `attempts` times while its failure is one a new
    /// connection may cure (a failover moved the primary): for the command
    /// line, which has no follower to notice.
    pub async fn run_retrying<T, F, Fut>(&self, attempts: u32, op: F) -> Result<T, SharedError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            self.skip_until_ms.store(0, Ordering::Relaxed);
            match self.run(&op).await {
                Err(e) if tries < attempts && e.retryable() => {
                    self.link.forget(None);
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
                }
                other => return other,
            }
        }
    }

    /// Records that the follower is in step with Redis at `now`.
    fn synced(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.synced_ms.store(ms, Ordering::Relaxed);
        self.metrics.stale_seconds.set(0);
        match self.health.swap(UP, Ordering::Relaxed) {
            UP => {}
            before => {
                self.metrics.up.set(1);
                self.skip_until_ms.store(0, Ordering::Relaxed);
                let held = self.revocations.prune(now);
                if before == DOWN {
                    tracing::info!(
                        revocations = held,
                        "shared state reachable again; fleet-wide limits and revocations apply"
                    );
                } else {
                    tracing::info!(
                        revocations = held,
                        "shared state loaded; fleet-wide limits and revocations apply"
                    );
                }
            }
        }
    }

    /// Records that the follower lost Redis (or never reached it).
    fn lost(&self, error: &SharedError, now: Instant) {
        let stale = self.staleness(now).map_or(0, |s| s.as_secs());
        self.metrics
            .stale_seconds
            .set(i64::try_from(stale).unwrap_or(i64::MAX));
        if self.health.swap(DOWN, Ordering::Relaxed) != DOWN {
            self.metrics.up.set(0);
            tracing::warn!(
                error = %crate::report::Chain(error),
                revocations = self.revocations.prune(now),
                "shared state unreachable; this replica keeps enforcing the revocations it holds, the limiter falls back to its own counts, and revocation_unavailable applies once they are older than revocation_max_staleness"
            );
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
