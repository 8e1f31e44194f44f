//! The failed-password limiter, counted in Redis so that the allowance is
//! one for the whole fleet rather than one per replica.
//!
//! The rules are the in-process limiter's (`crate::limiter`): the same
//! records (account name, client network), allowances and doubling backoff,
//! and an attempt is reserved before its hash is computed. Each step is one
//! Lua script, atomic across replicas and timed by Redis's clock.
//!
//! Redis is asked only where a hash is about to run. The blocks that matter
//! to a request whose password the cache already knows (its network's, and
//! a configured account's) are published on a stream that every replica
//! follows into a [`View`], so such a request is checked in memory; so is
//! whether a configured account has failures a cached success must clear.
//!
//! A checked attempt's outcome is in Redis before its caller is answered,
//! so a failure always precedes, in Redis, whatever request its caller
//! makes next. A success the cache answers clears the failures made before
//! it: at once (one round trip, before answering) where this replica knows
//! the account has failures; otherwise it notes the success, and if the
//! news of a failure arrives within [`PENDING_WINDOW`] (a failure made
//! elsewhere a moment before, still on its way), clears the failures Redis
//! recorded before the success, by Redis's clock, and lifts a block they
//! alone caused. Account records keep the times of their last failures for
//! that.
//!
//! What Redis keeps is bounded: a record exists only while an attempt is
//! reserved (each reservation expires by itself after [`RESERVATION`]) or
//! after a hash failed (then for twice `max_backoff` plus a minute). Every
//! limiter key has a TTL. When Redis does not answer, the process's own
//! limiter takes over for that request.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use redis::Script;

use super::{SharedError, SharedState};
use crate::limiter::{Attempt, FailureLimiter, Outcome, Record, Settle, Throttled};

/// Prefix of the limiter's keys. The braces are a Redis Cluster hash tag:
/// the records one script touches must live in one slot.
const PREFIX: &str = "regauth:{limit}:";
/// Changes to the blocks and failures replicas mirror, in order.
pub(super) const LOG: &str = "regauth:{limit}:log";
/// The last change's sequence number.
pub(super) const SEQ: &str = "regauth:{limit}:seq";
/// Mirrored records in backoff, scored by the end of their wait.
pub(super) const BLOCKED: &str = "regauth:{limit}:blocked";
/// Configured accounts with failures, scored by their record's expiry.
pub(super) const DIRTY: &str = "regauth:{limit}:dirty";

/// A reservation whose outcome never arrives (its replica died, or Redis
/// answered after the timeout) stops counting after this.
pub const RESERVATION: Duration = Duration::from_secs(5);

/// Changes the stream keeps.
const LOG_LENGTH: u32 = 10_000;

/// Most records a replica mirrors; past that the expired go first, then
/// the ones ending soonest.
const MAX_MIRRORED: usize = 100_000;

/// How long a cached success waits for the news of a failure made just
/// before it on another replica.
pub const PENDING_WINDOW: Duration = Duration::from_secs(10);

/// Most cached successes noted at once; past that, new ones are not.
const MAX_PENDING: usize = 10_000;

/// Failure times an account's record keeps, to tell the failures made
/// before a success from those made after.
const FAILURE_TIMES: usize = 16;

/// Shared by the scripts: the time in milliseconds, by Redis's clock, and
/// how to append a change to the stream other replicas follow.
const HEAD: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function emit(log, seq, ttl, len, op, name, ms)
  local s = redis.call('INCR', seq)
  redis.call('XADD', log, 'MAXLEN', '~', len, '*', 's', s, 'op', op, 'k', name, 't', ms)
  redis.call('PEXPIRE', seq, ttl)
  redis.call('PEXPIRE', log, ttl)
end
-- Failures and live reservations of a record; expired reservations go.
local function state(k)
  local h = redis.call('HGETALL', k)
  local f, b, l, live = 0, 0, 0, 0
  for j = 1, #h, 2 do
    local name, v = h[j], tonumber(h[j + 1]) or 0
    if name == 'f' then f = v
    elseif name == 'b' then b = v
    elseif name == 'l' then l = v
    elseif string.sub(name, 1, 1) == 'r' then
      if v > now then live = live + 1 else redis.call('HDEL', k, name) end
    end
  end
  return f, b, l, live
end
";

/// KEYS: records. ARGV: max_backoff_ms, reservation_ms, record_ttl_ms, then
/// per record its allowance. Returns {0, reservation id per record} when
/// reserved, else {wait in ms}.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HEAD}local maxb, rttl, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local forgiven = {{}}
for i, k in ipairs(KEYS) do
  local f, b, l, live = state(k)
  if b > now then return {{b - now}} end
  forgiven[i] = live == 0 and f > 0 and now - l > 2 * maxb
  if not forgiven[i] then
    local room = math.max(tonumber(ARGV[3 + i]) - f, 1)
    if live >= room then return {{1000}} end
  end
end
local out = {{0}}
for i, k in ipairs(KEYS) do
  if forgiven[i] then redis.call('HDEL', k, 'f', 'b') end
  local id = redis.call('HINCRBY', k, 'n', 1)
  redis.call('HSET', k, 'r' .. id, now + rttl)
  local f = tonumber(redis.call('HGET', k, 'f')) or 0
  if f > 0 then redis.call('PEXPIRE', k, ttl)
  elseif redis.call('PTTL', k) < rttl then redis.call('PEXPIRE', k, rttl) end
  out[#out + 1] = id
end
return out"
    ))
});

/// KEYS: records, then LOG, SEQ, BLOCKED, DIRTY. ARGV: max_backoff_ms,
/// outcome (ok, fail, release), record_ttl_ms, stream length, number of
/// records, then per record its allowance, 1 for an account, its
/// reservation id, 1 if replicas mirror it, and its name.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HEAD}local maxb, outcome, ttl, len = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local n = tonumber(ARGV[5])
local log, seq, blocked, dirty = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
redis.call('ZREMRANGEBYSCORE', blocked, '-inf', now)
redis.call('ZREMRANGEBYSCORE', dirty, '-inf', now)
for i = 1, n do
  local k, a = KEYS[i], 5 + (i - 1) * 5
  local allow, account, id = tonumber(ARGV[a + 1]), ARGV[a + 2] == '1', ARGV[a + 3]
  local mirror, name = ARGV[a + 4] == '1', ARGV[a + 5]
  redis.call('HDEL', k, 'r' .. id)
  if outcome == 'fail' then
    local f = redis.call('HINCRBY', k, 'f', 1)
    redis.call('HSET', k, 'l', now)
    if account then
      local times = {{}}
      for x in string.gmatch(redis.call('HGET', k, 'ft') or '', '[^,]+') do times[#times + 1] = x end
      times[#times + 1] = tostring(now)
      while #times > {FAILURE_TIMES} do table.remove(times, 1) end
      redis.call('HSET', k, 'ft', table.concat(times, ','))
    end
    redis.call('PEXPIRE', k, ttl)
    if f >= allow then
      local wait = math.min(1000 * 2 ^ math.min(f - allow, 20), maxb)
      redis.call('HSET', k, 'b', now + wait)
      if mirror then
        redis.call('ZADD', blocked, now + wait, name)
        redis.call('PEXPIRE', blocked, ttl)
        emit(log, seq, ttl, len, 'block', name, wait)
      end
    end
    if f == 1 and account and mirror then
      redis.call('ZADD', dirty, now + ttl, name)
      redis.call('PEXPIRE', dirty, ttl)
      emit(log, seq, ttl, len, 'dirty', name, ttl)
    end
  elseif outcome == 'ok' and redis.call('EXISTS', k) == 1 then
    redis.call('HSET', k, 'l', now)
    if account and redis.call('HDEL', k, 'f', 'b', 'ft') > 0 and mirror then
      redis.call('ZREM', dirty, name)
      redis.call('ZREM', blocked, name)
      emit(log, seq, ttl, len, 'clean', name, 0)
    end
  end
  local f, b, l, live = state(k)
  if f == 0 and live == 0 then redis.call('DEL', k) end
end
return 0"
    ))
});

/// KEYS: an account's record, LOG, SEQ, BLOCKED, DIRTY. ARGV: record_ttl_ms,
/// stream length, its name, its allowance, ms since the success. A success
/// the cache answered: clears the failures recorded before it (all of them
/// when the record lists no times, as records made by an older build), and
/// lifts the block if those left are fewer than the allowance.
static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HEAD}local k = KEYS[1]
local ttl, len, name = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local allow, cutoff = tonumber(ARGV[4]), now - tonumber(ARGV[5])
local f = tonumber(redis.call('HGET', k, 'f')) or 0
if f > 0 then
  local raw = redis.call('HGET', k, 'ft')
  local listed, later = 0, {{}}
  if raw then
    for x in string.gmatch(raw, '[^,]+') do
      listed = listed + 1
      if tonumber(x) > cutoff then later[#later + 1] = x end
    end
  end
  local left = #later
  -- Every time listed is after the success: older failures may be too.
  if raw and left == listed and f > listed then left = f end
  if left == 0 then
    redis.call('HDEL', k, 'f', 'b', 'ft')
    redis.call('ZREM', KEYS[5], name)
    redis.call('ZREM', KEYS[4], name)
    emit(KEYS[2], KEYS[3], ttl, len, 'clean', name, 0)
  elseif left < f then
    redis.call('HSET', k, 'f', left, 'ft', table.concat(later, ','))
    if left < allow and redis.call('HDEL', k, 'b') > 0 then
      redis.call('ZREM', KEYS[4], name)
      emit(KEYS[2], KEYS[3], ttl, len, 'unblock', name, 0)
    end
  end
end
local f2, b, l, live = state(k)
if f2 == 0 and live == 0 then redis.call('DEL', k) end
return 0"
    ))
});

/// A call of [`CLEAR`] for a success the cache answered `elapsed` ago.
fn clear_call(record: &Record, ttl: u64, elapsed: Duration) -> redis::ScriptInvocation<'static> {
    let mut call = CLEAR.prepare_invoke();
    call.key(key(record))
        .key(LOG)
        .key(SEQ)
        .key(BLOCKED)
        .key(DIRTY)
        .arg(ttl)
        .arg(LOG_LENGTH)
        .arg(&record.name)
        .arg(record.allowance)
        .arg(millis(elapsed));
    call
}

/// A cached success on a replica that knew of no failure of its account.
#[derive(Debug, Clone)]
struct Pending {
    record: Record,
    ttl: u64,
    at: Instant,
}

/// A clear that the news of a failure made owed: the follower sends it.
#[derive(Debug)]
pub(super) struct Deferred {
    record: Record,
    ttl: u64,
    since: Instant,
}

/// Sends a deferred clear on the follower's connection.
pub(super) async fn clear_deferred(
    conn: &mut redis::aio::MultiplexedConnection,
    deferred: &Deferred,
) -> redis::RedisResult<()> {
    clear_call(&deferred.record, deferred.ttl, deferred.since.elapsed())
        .invoke_async::<i64>(conn)
        .await
        .map(|_| ())
}

/// KEYS: LOG, SEQ, BLOCKED, DIRTY. {sequence, last stream ID, number of
/// blocked, then (name, ms left) per blocked record, then per account
/// with failures}.
static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {tonumber(redis.call('GET', KEYS[2])) or 0}
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
out[2] = last[1] and last[1][1] or '0-0'
local b = redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf', 'WITHSCORES')
out[3] = #b / 2
for i = 1, #b, 2 do
  out[#out + 1] = b[i]
  out[#out + 1] = tonumber(b[i + 1]) - now
end
local d = redis.call('ZRANGEBYSCORE', KEYS[4], now, '+inf', 'WITHSCORES')
for i = 1, #d, 2 do
  out[#out + 1] = d[i]
  out[#out + 1] = tonumber(d[i + 1]) - now
end
return out",
    )
});

/// The blocks and failures of the fleet that requests answered from the
/// password cache must see: mirrored from Redis's stream, checked in memory.
#[derive(Debug, Default)]
pub struct View {
    blocked: Mutex<HashMap<String, Instant>>,
    dirty: Mutex<HashMap<String, Instant>>,
    /// Cached successes that knew of no failure, by record.
    pending: Mutex<HashMap<String, Pending>>,
}

impl View {
    /// True when no block is mirrored: the common case, answered without
    /// naming any record.
    fn no_blocks(&self) -> bool {
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The longest wait any of `records` is blocked for at `now`.
    fn wait(&self, records: &[Record], now: Instant) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.is_empty() {
            return None;
        }
        records
            .iter()
            .filter_map(|r| blocked.get(&r.name))
            .filter(|until| **until > now)
            .map(|until| *until - now)
            .max()
    }

    /// True when the fleet holds failures for this account record.
    fn is_dirty(&self, name: &str, now: Instant) -> bool {
        let dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.get(name).is_some_and(|until| *until > now)
    }

    /// Applies one change from the stream; the news of failures of an
    /// account that had a cached success just before owes that success a
    /// clear, which is returned.
    pub(super) fn apply(
        &self,
        op: &str,
        name: String,
        left: Duration,
        now: Instant,
    ) -> Option<Deferred> {
        match op {
            "block" => insert(&self.blocked, name, now + left, now),
            "dirty" => {
                let deferred = self.take_pending(&name, now);
                insert(&self.dirty, name, now + left, now);
                return deferred;
            }
            "clean" => {
                self.dirty
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            }
            "unblock" => {
                self.blocked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            }
            other => tracing::debug!(op = other, "limiter change of unknown kind ignored"),
        }
        None
    }

    /// A full load. Blocks already held stay until they end or are lifted,
    /// failures are replaced; returns the clears owed to cached successes
    /// whose accounts turn out to have failures.
    pub(super) fn load(&self, loaded: Loaded, now: Instant) -> Vec<Deferred> {
        for (name, left) in loaded.blocked {
            insert(&self.blocked, name, now + left, now);
        }
        let deferred = loaded
            .dirty
            .iter()
            .filter_map(|(name, _)| self.take_pending(name, now))
            .collect();
        let dirty: HashMap<String, Instant> = loaded
            .dirty
            .into_iter()
            .take(MAX_MIRRORED)
            .map(|(n, left)| (n, now + left))
            .collect();
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = dirty;
        deferred
    }

    /// Marks an account's record as having failures, as this replica just
    /// recorded one (its news follows on the stream).
    fn mark_dirty(&self, name: &str, left: Duration, now: Instant) {
        insert(&self.dirty, name.to_owned(), now + left, now);
    }

    /// Forgets an account's failures, which a success just cleared.
    fn mark_clean(&self, name: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Notes a cached success of `record` at `now` that knew of no failure.
    fn note_success(&self, record: Record, ttl: u64, now: Instant) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING && !pending.contains_key(&record.name) {
            pending.retain(|_, p| now.saturating_duration_since(p.at) <= PENDING_WINDOW);
            if pending.len() >= MAX_PENDING {
                return;
            }
        }
        pending.insert(
            record.name.clone(),
            Pending {
                record,
                ttl,
                at: now,
            },
        );
    }

    /// The clear owed to the last cached success of `name`, if it was
    /// within [`PENDING_WINDOW`].
    fn take_pending(&self, name: &str, now: Instant) -> Option<Deferred> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_empty() {
            return None;
        }
        pending
            .remove(name)
            .filter(|p| now.saturating_duration_since(p.at) <= PENDING_WINDOW)
            .map(|p| Deferred {
                record: p.record,
                ttl: p.ttl,
                since: p.at,
            })
    }

    /// Drops what has ended.
    pub(super) fn prune(&self, now: Instant) {
        for map in [&self.blocked, &self.dirty] {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, until| *until > now);
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, p| now.saturating_duration_since(p.at) <= PENDING_WINDOW);
    }
}

fn insert(map: &Mutex<HashMap<String, Instant>>, name: String, until: Instant, now: Instant) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_MIRRORED && !map.contains_key(&name) {
        map.retain(|_, u| *u > now);
        if map.len() >= MAX_MIRRORED
            && let Some(soonest) = map.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone())
        {
            map.remove(&soonest);
        }
    }
    let entry = map.entry(name).or_insert(until);
    *entry = (*entry).max(until);
}

/// What a limiter snapshot read.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub seq: u64,
    pub last_id: String,
    pub blocked: Vec<(String, Duration)>,
    pub dirty: Vec<(String, Duration)>,
}

/// Reads the mirrored blocks and failures, and where the stream stands.
pub(super) async fn snapshot(
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<Loaded> {
    let values: Vec<redis::Value> = SNAPSHOT
        .key(LOG)
        .key(SEQ)
        .key(BLOCKED)
        .key(DIRTY)
        .invoke_async(conn)
        .await?;
    let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).unwrap_or_default();
    let number = |v: Option<&redis::Value>| -> u64 {
        v.and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    };
    let blocked_count = usize::try_from(number(values.get(2))).unwrap_or(0);
    let pairs: Vec<(String, Duration)> = values
        .get(3..)
        .unwrap_or_default()
        .chunks(2)
        .filter_map(|c| match c {
            [name, left] => Some((text(name), Duration::from_millis(number(Some(left))))),
            _ => None,
        })
        .collect();
    let split = blocked_count.min(pairs.len());
    let (blocked, dirty) = pairs.split_at(split);
    Ok(Loaded {
        seq: number(values.first()),
        last_id: values.get(1).map(text).unwrap_or_default(),
        blocked: blocked.to_vec(),
        dirty: dirty.to_vec(),
    })
}

/// The limiter a request uses: the fleet's when shared state is configured
/// and answering, this process's otherwise.
#[derive(Debug)]
pub struct Limiter {
    local: Arc<FailureLimiter>,
    shared: Option<Arc<SharedState>>,
    fallbacks: Counter,
}

impl Limiter {
    /// The fleet's limiter over `shared`, falling back to `local`, counting
    /// each fallback in `fallbacks`.
    pub fn new(
        local: Arc<FailureLimiter>,
        shared: Option<Arc<SharedState>>,
        fallbacks: Counter,
    ) -> Self {
        Limiter {
            local,
            shared,
            fallbacks,
        }
    }

    /// `Err` while the client's network or the account must wait, as far
    /// as this process knows: its own counts, and the fleet's blocks that
    /// it mirrors. No round trip.
    pub fn check(&self, addr: Option<IpAddr>, account: &str) -> Result<(), Throttled> {
        let now = Instant::now();
        self.local.check(addr, account, now)?;
        if let Some(shared) = &self.shared
            && !shared.limiter_view().no_blocks()
        {
            let records = self.local.records(addr, account);
            if let Some(wait) = shared.limiter_view().wait(&records, now) {
                return Err(Throttled(wait));
            }
        }
        Ok(())
    }

    /// Reserves one password check against the network's and the account's
    /// allowance; see [`FailureLimiter::reserve`].
    pub async fn reserve(&self, addr: Option<IpAddr>, account: &str) -> Result<Attempt, Throttled> {
        if let Some(shared) = &self.shared {
            let records = self.local.records(addr, account);
            let max_backoff = millis(self.local.max_backoff());
            let ttl = ttl(self.local.max_backoff());
            let mut call = RESERVE.prepare_invoke();
            for r in &records {
                call.key(key(r));
            }
            call.arg(max_backoff).arg(millis(RESERVATION)).arg(ttl);
            for r in &records {
                call.arg(r.allowance);
            }
            let reply = shared
                .run(|mut conn| async move { call.invoke_async::<Vec<i64>>(&mut conn).await })
                .await;
            match reply {
                Ok(reply) => match reply.split_first() {
                    Some((0, ids)) if ids.len() == records.len() => {
                        return Ok(Attempt::elsewhere(Box::new(Reservation {
                            shared: Arc::clone(shared),
                            records,
                            ids: ids.to_vec(),
                            max_backoff,
                            ttl,
                        })));
                    }
                    Some((wait, _)) => throttled_if(*wait)?,
                    None => self.fallback(&SharedError::Reply("empty reservation")),
                },
                Err(e) => self.fallback(&e),
            }
        }
        self.local.reserve(addr, account, Instant::now())
    }

    /// A success the password cache answered: it clears the account's
    /// failures made before it, as a checked success does. In a fleet,
    /// where this replica knows the account has failures, that is one round
    /// trip before the answer; otherwise the success is noted, and cleared
    /// from if the news of a failure made just before it arrives (see the
    /// module's doc). No round trip in the common case.
    pub async fn cached_success(&self, addr: Option<IpAddr>, account: &str) {
        self.local.clear_account(account);
        let Some(shared) = &self.shared else {
            return;
        };
        let Some(record) = self
            .local
            .records(addr, account)
            .into_iter()
            .find(|r| r.account)
        else {
            return;
        };
        let ttl = ttl(self.local.max_backoff());
        let view = shared.limiter_view();
        let now = Instant::now();
        if !view.is_dirty(&record.name, now) {
            view.note_success(record, ttl, now);
            return;
        }
        let call = clear_call(&record, ttl, Duration::ZERO);
        let result = shared
            .run(|mut conn| async move { call.invoke_async::<i64>(&mut conn).await })
            .await;
        match result {
            Ok(_) => view.mark_clean(&record.name),
            Err(e) => {
                tracing::debug!(error = %crate::report::Chain(&e), "limiter: clearing a cached success in Redis failed");
            }
        }
    }

    fn fallback(&self, e: &SharedError) {
        self.fallbacks.inc();
        tracing::debug!(error = %crate::report::Chain(e), "limiter: using this replica's counts");
    }
}

fn key(record: &Record) -> String {
    format!("{PREFIX}{}", record.name)
}

/// A wait of `ms` as the limiter's answer.
fn throttled_if(ms: i64) -> Result<(), Throttled> {
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => Err(Throttled(Duration::from_millis(ms))),
        _ => Ok(()),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Records with failures outlive their last use by twice the longest
/// backoff (after which they would be forgiven anyway), plus a minute.
fn ttl(max_backoff: Duration) -> u64 {
    millis(max_backoff * 2 + Duration::from_secs(60))
}

/// An attempt reserved in Redis, settled there in the background so the
/// password check's task does not wait on a round trip.
#[derive(Debug)]
struct Reservation {
    shared: Arc<SharedState>,
    records: Vec<Record>,
    ids: Vec<i64>,
    max_backoff: u64,
    ttl: u64,
}

impl Settle for Reservation {
    fn settle(self: Box<Self>, outcome: Outcome) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (outcome, known) = match outcome {
            Outcome::Success => ("ok", true),
            Outcome::Failure { known_account } => ("fail", known_account),
            Outcome::Released => ("release", false),
        };
        // If it never arrives, the reservation expires by itself after
        // RESERVATION.
        Box::pin(async move {
            let mut call = SETTLE.prepare_invoke();
            for rec in &self.records {
                call.key(key(rec));
            }
            call.key(LOG).key(SEQ).key(BLOCKED).key(DIRTY);
            call.arg(self.max_backoff)
                .arg(outcome)
                .arg(self.ttl)
                .arg(LOG_LENGTH)
                .arg(self.records.len());
            for (rec, id) in self.records.iter().zip(&self.ids) {
                // Networks always matter to cached requests; of accounts,
                // only configured ones have cached passwords.
                let mirror = !rec.account || known;
                call.arg(rec.allowance)
                    .arg(u8::from(rec.account))
                    .arg(*id)
                    .arg(u8::from(mirror))
                    .arg(&rec.name);
            }
            let result = self
                .shared
                .run(|mut conn| async move { call.invoke_async::<i64>(&mut conn).await })
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %crate::report::Chain(&e), "limiter: settling in Redis failed; the reservation expires");
                return;
            }
            // What Redis now holds of this account, known here at once: its
            // news follows on the stream.
            let view = self.shared.limiter_view();
            for rec in self.records.iter().filter(|r| r.account && known) {
                match outcome {
                    "fail" => {
                        view.mark_dirty(&rec.name, Duration::from_millis(self.ttl), Instant::now())
                    }
                    "ok" => view.mark_clean(&rec.name),
                    _ => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Record {
        Record {
            name: name.into(),
            allowance: 5,
            account: name.starts_with("a:"),
        }
    }

    #[test]
    fn the_view_holds_blocks_until_they_end_and_failures_until_cleared() {
        let v = View::default();
        let now = Instant::now();
        let records = [record("n:10.0.0.1"), record("a:alice")];
        assert_eq!(v.wait(&records, now), None);
        v.apply("block", "a:alice".into(), Duration::from_secs(2), now);
        assert_eq!(v.wait(&records, now), Some(Duration::from_secs(2)));
        assert_eq!(v.wait(&records, now + Duration::from_secs(3)), None);
        v.apply("dirty", "a:alice".into(), Duration::from_secs(60), now);
        assert!(v.is_dirty("a:alice", now));
        v.apply("clean", "a:alice".into(), Duration::ZERO, now);
        assert!(!v.is_dirty("a:alice", now));
        // A reload never lifts a block early.
        v.load(
            Loaded {
                blocked: vec![],
                dirty: vec![("a:bob".into(), Duration::from_secs(5))],
                ..Loaded::default()
            },
            now,
        );
        assert_eq!(v.wait(&records, now), Some(Duration::from_secs(2)));
        assert!(v.is_dirty("a:bob", now));
        v.prune(now + Duration::from_secs(10));
        assert!(!v.is_dirty("a:bob", now));
        v.apply("unblock", "a:alice".into(), Duration::ZERO, now);
        assert_eq!(v.wait(&records, now), None, "a clear lifted the block");
    }

    /// A cached success that knew of no failure is owed a clear when the
    /// news of a failure of its account arrives within the window, once.
    #[test]
    fn the_news_of_a_failure_after_a_cached_success_owes_it_a_clear() {
        let v = View::default();
        let now = Instant::now();
        v.note_success(record("a:alice"), 60_000, now);
        assert!(
            v.apply("dirty", "a:bob".into(), Duration::from_secs(60), now)
                .is_none(),
            "another account"
        );
        let later = now + Duration::from_millis(5);
        let owed = v
            .apply("dirty", "a:alice".into(), Duration::from_secs(60), later)
            .expect("a clear is owed");
        assert_eq!(owed.record, record("a:alice"));
        assert_eq!(owed.since, now);
        assert!(v.is_dirty("a:alice", later));
        assert!(
            v.apply("dirty", "a:alice".into(), Duration::from_secs(60), later)
                .is_none(),
            "once"
        );
        v.note_success(record("a:alice"), 60_000, now);
        let late = now + PENDING_WINDOW + Duration::from_secs(1);
        assert!(
            v.apply("dirty", "a:alice".into(), Duration::from_secs(60), late)
                .is_none(),
            "news later than the window owes nothing"
        );
        v.note_success(record("a:carol"), 60_000, now);
        let owed = v.load(
            Loaded {
                dirty: vec![("a:carol".into(), Duration::from_secs(5))],
                ..Loaded::default()
            },
            later,
        );
        assert_eq!(owed.len(), 1, "a full load owes it too");
    }
}
