//! Slow password checks, bounded and joined.
//!
//! bcrypt and argon2 cost tens of milliseconds and megabytes by design, so:
//! - at most `max_concurrent` hashes run at once (by default one per core);
//!   a check that cannot start within `queue_timeout` is refused with 503
//!   and `Retry-After`, so a burst cannot pile up threads and memory;
//! - identical checks (same user, same password) that arrive together share
//!   one check, so fifty parallel pulls with one password cost one attempt
//!   against the limiter and one hash: the first arrival registers the
//!   check before it reserves its attempt (a round trip in a fleet), and
//!   everyone arriving meanwhile waits for its result, throttled or not;
//! - each check runs in its own task, which settles the limiter attempt and
//!   fills the cache even if every client waiting on it has gone away; its
//!   result is given out once the limiter has the outcome (in a fleet, once
//!   Redis has it), so no later request can run ahead of it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Semaphore, watch};

use crate::identity::account::Verified;
use crate::limiter::{self, Attempt, Throttled};
use crate::secret::Secret;
use crate::settings::Settings;

/// Why a check did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The limiter refused the attempt: the account or network must wait.
    #[error(transparent)]
    Throttled(#[from] Throttled),
    /// Every hashing slot stayed busy for the queue timeout.
    #[error("the server is busy checking passwords; retry in {} s", .0.as_secs().max(1))]
    Busy(Duration),
    /// The hashing task failed (a bug); nothing was decided.
    #[error("the password check failed")]
    Failed,
}

type Outcome = Option<Result<Verified, CheckError>>;

/// How a check takes its attempt from the limiter (a round trip in a
/// fleet), run only by the check that starts, never by one that joins.
pub type Reserve = Pin<Box<dyn Future<Output = Result<Attempt, Throttled>> + Send>>;

/// Runs password checks.
#[derive(Debug)]
pub struct PasswordChecks {
    slots: Arc<Semaphore>,
    hashes: Counter,
    queue_timeout: Duration,
    running: Mutex<HashMap<[u8; 32], watch::Receiver<Outcome>>>,
}

impl PasswordChecks {
    /// At most `max_concurrent` hashes at once; a check waits at most
    /// `queue_timeout` for a slot.
    /// `hashes` counts the hashes computed.
    pub fn new(max_concurrent: usize, queue_timeout: Duration, hashes: Counter) -> Arc<Self> {
        Arc::new(PasswordChecks {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            hashes,
            queue_timeout,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Checks `password` for `user` under `settings`: joins the identical
    /// check already running, or starts one that first takes its attempt
    /// from `reserve` and settles it with the result.
    pub async fn check(
        self: &Arc<Self>,
        settings: &Arc<Settings>,
        key: [u8; 32],
        user: &str,
        password: Secret,
        reserve: Reserve,
    ) -> Result<Verified, CheckError> {
        let receiver = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(key, rx.clone());
                    let task = Run {
                        checks: Arc::clone(self),
                        settings: Arc::clone(settings),
                        key,
                        user: user.to_owned(),
                        password,
                    };
                    tokio::spawn(task.run(reserve, tx));
                    rx
                }
            }
        };
        wait(receiver).await
    }
}

/// Waits for a running check's result.
async fn wait(mut receiver: watch::Receiver<Outcome>) -> Result<Verified, CheckError> {
    match receiver.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(CheckError::Failed)),
        Err(_) => Err(CheckError::Failed),
    }
}

/// One check, run in its own task.
struct Run {
    checks: Arc<PasswordChecks>,
    settings: Arc<Settings>,
    key: [u8; 32],
    user: String,
    password: Secret,
}

impl Run {
    async fn run(self, reserve: Reserve, tx: watch::Sender<Outcome>) {
        let Run {
            checks,
            settings,
            key,
            user,
            password,
        } = self;
        let hashes = checks.hashes.clone();
        let outcome = match reserve.await {
            Err(throttled) => Err(CheckError::Throttled(throttled)),
            Ok(attempt) => {
                match tokio::time::timeout(
                    checks.queue_timeout,
                    Arc::clone(&checks.slots).acquire_owned(),
                )
                .await
                {
                    // Not checked: the attempt is released (dropped), not
                    // counted.
                    Err(_) => Err(CheckError::Busy(checks.queue_timeout)),
                    Ok(Err(_)) => Err(CheckError::Failed),
                    Ok(Ok(permit)) => {
                        let checked = tokio::task::spawn_blocking(move || {
                            let _permit = permit;
                            hashes.inc();
                            let verified = settings.accounts.verify_slow(
                                &user,
                                password.expose().as_bytes(),
                                Instant::now(),
                            );
                            let outcome = match &verified {
                                Verified::Yes { .. } => limiter::Outcome::Success,
                                Verified::No => limiter::Outcome::Failure {
                                    known_account: settings.accounts.contains(&user),
                                },
                            };
                            (verified, outcome)
                        })
                        .await;
                        match checked {
                            // The answer waits until the limiter has it.
                            Ok((verified, outcome)) => {
                                attempt.settle(outcome, Instant::now()).await;
                                Ok(verified)
                            }
                            // A failed task decided nothing: the attempt is
                            // released (dropped).
                            Err(_) => Err(CheckError::Failed),
                        }
                    }
                }
            }
        };
        // Later arrivals start their own check (and see the cache).
        checks
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let _ = tx.send(Some(outcome));
    }
}
