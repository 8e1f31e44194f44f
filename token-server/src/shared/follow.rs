//! The follower: one task per process, on a connection of its own, that
//! keeps this process's copy of the revocations and of the limiter's
//! mirrored blocks in step with Redis, off every request's path.
//!
//! It loads everything at one instant (a script that also returns each
//! stream's last ID and sequence number), then reads both streams of
//! changes with a blocking `XREAD` from those IDs. Every change carries the
//! next sequence number; a gap (the stream was trimmed past us, or its
//! counter started again) means a full load. Any failure ends the session:
//! the next one connects anew (asking the sentinels again) and loads again.
//!
//! At each connection and every check it also publishes the horizon of
//! the refresh tokens this process issues (see `revocation`).
//!
//! Every snapshot's epoch marker is compared with the one followed. A
//! Redis whose marker is gone or changed came back without the revocations
//! (restarted without persistence, flushed, or replaced), whether this is
//! seen when connecting, at the 5 s check, or when a gap in the changes
//! makes the follower load again (a `revoke` right after a flush restarts
//! the numbering and sets a marker of its own): before anything is
//! replaced, the revocations this process holds are written back (each
//! only where Redis lacks it), and the event is logged once and counted on
//! `/metrics`. A new run ID with the same marker (a restart with its data,
//! or a failover to a replica that may lag) gets the same write-back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;

use super::revocation::{self, read_entry};
use super::{SharedError, SharedState, limiter};

/// How long one blocking read waits for changes; also how often, at the
/// least, a follower in step confirms that it is.
const BLOCK: Duration = Duration::from_millis(1000);

/// The longest the follower waits for any one answer beyond `BLOCK`: a
/// Redis slower than this is treated as gone, and reconnected to.
const ROUND_TRIP: Duration = Duration::from_secs(5);

/// Changes read at once.
const BATCH: usize = 1000;

/// How often the epoch marker is checked while following (a `FLUSHALL`
/// does not end the connection), and what has expired is dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// Pause before connecting again, doubling up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Where the follower stands.
#[derive(Debug, Default)]
struct Cursor {
    /// The revocation stream: last ID and sequence number applied.
    revocations: Option<(String, u64)>,
    /// The limiter stream: last ID and sequence number applied.
    limiter: Option<(String, u64)>,
    /// The epoch marker last seen.
    epoch: Option<String>,
    /// The run ID of the Redis last followed.
    run_id: Option<String>,
}

/// Follows Redis for as long as the process runs.
pub(super) async fn follow(state: Arc<SharedState>) {
    let mut cursor = Cursor::default();
    let mut retry = FIRST_RETRY;
    loop {
        let (error, synced) = session(&state, &mut cursor).await;
        if synced {
            retry = FIRST_RETRY;
        }
        match error {
            // A failover announced: connect to the new primary at once.
            SharedError::Switched => continue,
            error => state.lost(&error, Instant::now()),
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Relays `+switch-master` announcements of the sentinels to the follower
/// and the command connection.
pub(super) async fn watch_sentinels(state: Arc<SharedState>) {
    loop {
        match state.link.switched().await {
            Ok(()) => {
                tracing::info!("a sentinel announced a new primary; reconnecting");
                state.link.forget(None);
                state.switched.notify_one();
            }
            Err(e) => {
                tracing::debug!(error = %crate::report::Chain(&e), "cannot watch the sentinels; trying again");
                tokio::time::sleep(MAX_RETRY).await;
            }
        }
    }
}

/// Bounds one answer.
async fn bounded<T>(
    wait: Duration,
    op: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, SharedError> {
    match tokio::time::timeout(wait, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(SharedError::Redis(e)),
        Err(_) => Err(SharedError::Timeout(wait)),
    }
}

/// One connection's worth of following; returns why it ended, and whether
/// it got as far as a full load.
async fn session(state: &SharedState, cursor: &mut Cursor) -> (SharedError, bool) {
    let mut conn = match bounded(ROUND_TRIP, state.link.connect()).await {
        Ok(c) => c,
        Err(e) => return (e, false),
    };
    if let Err(e) = start(state, &mut conn, cursor).await {
        return (e, false);
    }
    let mut housekeeping = Instant::now();
    loop {
        let read = read_changes(&mut conn, cursor);
        let reply = tokio::select! {
            reply = read => reply,
            () = state.switched.notified() => return (SharedError::Switched, true),
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return (e, true),
        };
        if let Some(reply) = reply
            && let Err(e) = apply(state, &mut conn, cursor, reply).await
        {
            return (e, true);
        }
        let now = Instant::now();
        if now.duration_since(housekeeping) >= HOUSEKEEPING {
            housekeeping = now;
            let epoch: Option<String> = match bounded(
                ROUND_TRIP,
                redis::cmd("GET")
                    .arg(revocation::EPOCH)
                    .query_async(&mut conn),
            )
            .await
            {
                Ok(e) => e,
                Err(e) => return (e, true),
            };
            if epoch != cursor.epoch {
                // Flushed, or swapped for another Redis, under our feet:
                // the load writes back what this process holds first.
                if let Err(e) = load(state, &mut conn, cursor).await {
                    return (e, true);
                }
            }
            if let Err(e) = horizon(state, &mut conn).await {
                return (e, true);
            }
            if let Err(e) = measure_clock(state, &mut conn).await {
                return (e, true);
            }
            let held = state.revocations.prune(now);
            state
                .metrics
                .held
                .set(i64::try_from(held).unwrap_or(i64::MAX));
            state.view.prune(now);
        }
        state.synced(Instant::now());
    }
}

/// Compares the Redis reached with the one last followed, writes back what
/// it lacks, and loads everything.
async fn start(
    state: &SharedState,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor,
) -> Result<(), SharedError> {
    let info: String = bounded(
        ROUND_TRIP,
        redis::cmd("INFO").arg("server").query_async(conn),
    )
    .await?;
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned());
    let epoch: Option<String> = bounded(
        ROUND_TRIP,
        redis::cmd("GET").arg(revocation::EPOCH).query_async(conn),
    )
    .await?;
    if cursor.epoch.is_some() {
        // A changed marker is a loss, which the load below sees and
        // repairs; the same marker on another server may lag.
        if epoch == cursor.epoch && run_id != cursor.run_id {
            restore(state, conn, cursor, false).await?;
        }
    } else {
        // The first session of this process. A Redis no replica has used
        // gets its marker; revocations the previous build kept its own way
        // move to where every replica follows them.
        let marker = match &epoch {
            Some(e) => e.clone(),
            None => new_epoch()?,
        };
        if epoch.is_none() {
            bounded(
                ROUND_TRIP,
                redis::cmd("SET")
                    .arg(revocation::EPOCH)
                    .arg(&marker)
                    .arg("NX")
                    .query_async::<()>(conn),
            )
            .await?;
        }
        let moved = bounded(ROUND_TRIP * 4, revocation::migrate(conn, &marker)).await?;
        if moved > 0 {
            tracing::info!(moved, "revocations kept by the previous layout were moved");
        }
    }
    measure_clock(state, conn).await?;
    horizon(state, conn).await?;
    load(state, conn, cursor).await?;
    cursor.run_id = run_id;
    Ok(())
}

/// Measures how far Redis's clock runs ahead of this process's: its `TIME`
/// against the middle of the round trip, to within half of it.
async fn measure_clock(
    state: &SharedState,
    conn: &mut MultiplexedConnection,
) -> Result<(), SharedError> {
    let before = crate::clock::now();
    let (secs, micros): (u64, u64) =
        bounded(ROUND_TRIP, redis::cmd("TIME").query_async(conn)).await?;
    let after = crate::clock::now();
    let since = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_micros()).unwrap_or(i128::MAX))
    };
    let local = (since(before) + since(after)) / 2;
    let redis = i128::from(secs) * 1_000_000 + i128::from(micros);
    let offset_ms = i64::try_from((redis - local) / 1000).unwrap_or(0);
    state.clock_measured(offset_ms);
    Ok(())
}

/// Publishes until when the refresh tokens this process issues may live.
async fn horizon(state: &SharedState, conn: &mut MultiplexedConnection) -> Result<(), SharedError> {
    let lifetimes = state.lifetimes();
    bounded(ROUND_TRIP, revocation::publish_horizon(conn, &lifetimes)).await
}

/// Writes back to a Redis that may lack some what this process holds: the
/// tombstones of the lifts it heard of first (removing a lifted version
/// that Redis got back), then the revocations (each only where Redis lacks
/// it, and never a version with a tombstone). `lost`: its epoch marker was
/// gone or changed, so it lost them all (counted and logged as such);
/// otherwise it is another server (a failover, or a restart from its own
/// files), which may lag.
async fn restore(
    state: &SharedState,
    conn: &mut MultiplexedConnection,
    cursor: &Cursor,
    lost: bool,
) -> Result<(), SharedError> {
    let now = Instant::now();
    let lifted = state.revocations.lifted(now);
    let undone = bounded(ROUND_TRIP * 4, revocation::bury(conn, &lifted)).await?;
    if undone > 0 {
        tracing::warn!(
            undone,
            "shared state held revocations that had been lifted (it lost the lifts); they were lifted again"
        );
    }
    let held = state.revocations.all(now);
    // After a loss, a new marker: every other replica then sees it changed
    // and writes back too, whichever of them noticed first.
    let epoch = match (&cursor.epoch, lost) {
        (Some(e), false) => e.clone(),
        _ => new_epoch()?,
    };
    let written = bounded(ROUND_TRIP * 4, revocation::write_back(conn, &held, &epoch)).await?;
    state.metrics.written_back.inc_by(written);
    if lost {
        state.metrics.resets.inc();
        tracing::warn!(
            held = held.len(),
            written,
            "shared state came back without its revocations (its epoch marker is gone or changed); the revocations this replica holds were written back"
        );
    } else {
        tracing::info!(
            held = held.len(),
            written,
            "shared state: another Redis server answers (a failover or a restart); revocations it lacked were written back"
        );
    }
    Ok(())
}

/// Loads both snapshots and resets the cursor to them.
async fn load(
    state: &SharedState,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor,
) -> Result<(), SharedError> {
    load_revocations(state, conn, cursor).await?;
    load_limiter(state, conn, cursor).await?;
    state.synced(Instant::now());
    Ok(())
}

/// Loads the revocations. A snapshot under another epoch marker than the
/// one followed comes from a Redis that lost them: what this process holds
/// is written back before it is replaced, and the snapshot taken again.
async fn load_revocations(
    state: &SharedState,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor,
) -> Result<(), SharedError> {
    let mut snap = bounded(ROUND_TRIP * 4, revocation::snapshot(conn)).await?;
    if cursor
        .epoch
        .as_ref()
        .is_some_and(|followed| *followed != snap.epoch)
    {
        restore(state, conn, cursor, true).await?;
        snap = bounded(ROUND_TRIP * 4, revocation::snapshot(conn)).await?;
    }
    let now = Instant::now();
    let count = snap.entries.len();
    state.revocations.replace(snap.entries, snap.lifted, now);
    state
        .metrics
        .held
        .set(i64::try_from(count).unwrap_or(i64::MAX));
    cursor.revocations = Some((snap.last_id, snap.seq));
    cursor.epoch = (!snap.epoch.is_empty()).then_some(snap.epoch);
    Ok(())
}

async fn load_limiter(
    state: &SharedState,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor,
) -> Result<(), SharedError> {
    let loaded = bounded(ROUND_TRIP * 4, limiter::snapshot(conn)).await?;
    cursor.limiter = Some((loaded.last_id.clone(), loaded.seq));
    let deferred = state.view.load(loaded, Instant::now());
    clear(conn, &deferred).await
}

/// Sends the clears owed to cached successes that ran ahead of the news
/// of a failure.
async fn clear(
    conn: &mut MultiplexedConnection,
    deferred: &[limiter::Deferred],
) -> Result<(), SharedError> {
    for d in deferred {
        bounded(ROUND_TRIP, limiter::clear_deferred(conn, d)).await?;
    }
    Ok(())
}

/// Waits up to `BLOCK` for changes on either stream after the cursor.
async fn read_changes(
    conn: &mut MultiplexedConnection,
    cursor: &Cursor,
) -> Result<Option<StreamReadReply>, SharedError> {
    let id = |c: &Option<(String, u64)>| c.as_ref().map_or("0-0".to_owned(), |(id, _)| id.clone());
    let block = u64::try_from(BLOCK.as_millis()).unwrap_or(1000);
    bounded(
        BLOCK + ROUND_TRIP,
        redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(revocation::LOG)
            .arg(limiter::LOG)
            .arg(id(&cursor.revocations))
            .arg(id(&cursor.limiter))
            .query_async(conn),
    )
    .await
}

/// Applies the changes read, in order; a gap in either stream's sequence
/// numbers reloads that stream's snapshot instead.
async fn apply(
    state: &SharedState,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor,
    reply: StreamReadReply,
) -> Result<(), SharedError> {
    let mut deferred = Vec::new();
    for stream in reply.keys {
        let revocations = stream.key == revocation::LOG;
        for entry in stream.ids {
            let seq: u64 = entry.get("s").unwrap_or(0);
            let position = if revocations {
                &mut cursor.revocations
            } else {
                &mut cursor.limiter
            };
            let expected = position.as_ref().map_or(1, |(_, s)| s + 1);
            if seq != expected {
                tracing::debug!(
                    seq,
                    expected,
                    revocations,
                    "gap in the changes; loading again"
                );
                if revocations {
                    load_revocations(state, conn, cursor).await?;
                } else {
                    load_limiter(state, conn, cursor).await?;
                }
                break;
            }
            *position = Some((entry.id.clone(), seq));
            let op: String = entry.get("op").unwrap_or_default();
            let ms = entry.get::<u64>("t").unwrap_or(0);
            let now = Instant::now();
            if revocations {
                let left = revocation::time_left(ms);
                let field: String = entry.get("f").unwrap_or_default();
                match op.as_str() {
                    "put" => {
                        let value: String = entry.get("v").unwrap_or_default();
                        match read_entry(&field, &value, left) {
                            Some(e) => state.revocations.put(e, now),
                            None => tracing::warn!(field, "a change names no revocation; ignored"),
                        }
                    }
                    "del" => {
                        // Its version, kept as a tombstone for `t`.
                        let version: Option<String> = entry.get("v");
                        state
                            .revocations
                            .lift(&field, version.as_deref(), left, now);
                    }
                    other => tracing::warn!(op = other, "a change of unknown kind; ignored"),
                }
            } else {
                let name: String = entry.get("k").unwrap_or_default();
                if let Some(d) = state.view.apply(&op, name, Duration::from_millis(ms), now) {
                    deferred.push(d);
                }
            }
        }
    }
    clear(conn, &deferred).await?;
    let held = state.revocations.len();
    state
        .metrics
        .held
        .set(i64::try_from(held).unwrap_or(i64::MAX));
    Ok(())
}

fn new_epoch() -> Result<String, SharedError> {
    let bytes = crate::secret::random::<8>().map_err(|_| SharedError::Reply("no random bytes"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
