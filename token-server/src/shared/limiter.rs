//! The failed-password limiter, counted in Redis so that the allowance is
//! one for the whole fleet rather than one per replica.
//!
//! The rules are the in-process limiter's (`crate::limiter`): the same
//! records (account name, client network), allowances and doubling backoff,
//! and an attempt is reserved before its hash is computed. Each step is one
//! Lua script, so it is atomic across replicas, and reads Redis's clock, so
//! replicas with skewed clocks agree. When Redis does not answer, the
//! process's own limiter takes over for that request.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::{Script, ScriptInvocation};

use super::{SharedError, SharedState};
use crate::limiter::{Attempt, FailureLimiter, Outcome, Record, Settle, Throttled};
use crate::metrics::{Metrics, SharedUse};

/// Prefix of the limiter's keys. The braces are a Redis Cluster hash tag:
/// the records one script touches must live in one slot.
const PREFIX: &str = "regauth:{limit}:";

/// Reservations older than this with no settle are taken to be lost (their
/// replica died mid-check) and stop holding room.
const STALE_RESERVATION: Duration = Duration::from_secs(30);

/// Shared by the scripts: the time in milliseconds, by Redis's clock.
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: records. ARGV: max_backoff_ms. Returns the longest wait in ms, or 0.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local wait = 0
for _, k in ipairs(KEYS) do
  local b = tonumber(redis.call('HGET', k, 'b')) or 0
  if b - now > wait then wait = b - now end
end
return wait"
    ))
});

/// KEYS: records. ARGV: max_backoff_ms, stale_ms, ttl_ms, then per record
/// its allowance. Returns 0 when reserved, else the wait in ms.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local maxb = tonumber(ARGV[1])
local stale = tonumber(ARGV[2])
local forgiven = {{}}
local flight = {{}}
for i, k in ipairs(KEYS) do
  local h = redis.call('HMGET', k, 'f', 'i', 'b', 'l', 'r')
  local f = tonumber(h[1]) or 0
  local inf = tonumber(h[2]) or 0
  local b = tonumber(h[3]) or 0
  local l = tonumber(h[4]) or 0
  if now - (tonumber(h[5]) or 0) > stale then inf = 0 end
  if b > now then return b - now end
  forgiven[i] = inf == 0 and now - l > 2 * maxb
  if not forgiven[i] then
    local room = math.max(tonumber(ARGV[3 + i]) - f, 1)
    if inf >= room then return 1000 end
  end
  flight[i] = inf
end
for i, k in ipairs(KEYS) do
  if forgiven[i] then redis.call('HSET', k, 'f', 0) end
  redis.call('HSET', k, 'i', flight[i] + 1, 'l', now, 'r', now)
  redis.call('PEXPIRE', k, ARGV[3])
end
return 0"
    ))
});

/// KEYS: records. ARGV: max_backoff_ms, outcome (ok, fail, release),
/// ttl_ms, then per record its allowance and 1 for an account, 0 for a
/// network.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local maxb = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  local inf = tonumber(redis.call('HGET', k, 'i')) or 0
  if inf > 0 then inf = inf - 1 end
  redis.call('HSET', k, 'i', inf)
  if ARGV[2] ~= 'release' then redis.call('HSET', k, 'l', now) end
  if ARGV[2] == 'fail' then
    local allow = tonumber(ARGV[2 + 2 * i])
    local f = redis.call('HINCRBY', k, 'f', 1)
    if f >= allow then
      local wait = math.min(1000 * 2 ^ math.min(f - allow, 20), maxb)
      redis.call('HSET', k, 'b', now + wait)
    end
  elseif ARGV[2] == 'ok' and ARGV[3 + 2 * i] == '1' then
    redis.call('HSET', k, 'f', 0, 'b', 0)
  end
  redis.call('PEXPIRE', k, ARGV[3])
end
return 0"
    ))
});

/// The limiter a request uses: the fleet's when shared state is configured
/// and answering, this process's otherwise.
#[derive(Debug)]
pub struct Limiter {
    local: Arc<FailureLimiter>,
    shared: Option<Arc<SharedState>>,
}

impl Limiter {
    /// The fleet's limiter over `shared`, falling back to `local`.
    pub fn new(local: Arc<FailureLimiter>, shared: Option<Arc<SharedState>>) -> Self {
        Limiter { local, shared }
    }

    /// `Err` while the client's network or the account must wait.
    pub async fn check(
        &self,
        addr: Option<IpAddr>,
        account: &str,
        metrics: &Metrics,
    ) -> Result<(), Throttled> {
        if let Some(shared) = &self.shared {
            let records = self.local.records(addr, account);
            let mut call = invocation(&CHECK, &records);
            call.arg(millis(self.local.max_backoff()));
            let reply = shared
                .run(|mut conn| async move { call.invoke_async::<i64>(&mut conn).await })
                .await;
            match reply {
                Ok(wait) => return throttled_if(wait),
                Err(e) => fallback(metrics, &e),
            }
        }
        self.local.check(addr, account, Instant::now())
    }

    /// Reserves one password check against the network's and the account's
    /// allowance; see [`FailureLimiter::reserve`].
    pub async fn reserve(
        &self,
        addr: Option<IpAddr>,
        account: &str,
        metrics: &Metrics,
    ) -> Result<Attempt, Throttled> {
        if let Some(shared) = &self.shared {
            let records = self.local.records(addr, account);
            let max_backoff = millis(self.local.max_backoff());
            let ttl = ttl(self.local.max_backoff());
            let mut call = invocation(&RESERVE, &records);
            call.arg(max_backoff)
                .arg(millis(STALE_RESERVATION))
                .arg(ttl);
            for r in &records {
                call.arg(r.allowance);
            }
            let reply = shared
                .run(|mut conn| async move { call.invoke_async::<i64>(&mut conn).await })
                .await;
            match reply {
                Ok(wait) => {
                    throttled_if(wait)?;
                    return Ok(Attempt::elsewhere(Box::new(Reservation {
                        shared: Arc::clone(shared),
                        records,
                        max_backoff,
                        ttl,
                    })));
                }
                Err(e) => fallback(metrics, &e),
            }
        }
        self.local.reserve(addr, account, Instant::now())
    }
}

/// A wait of `ms` as the limiter's answer.
fn throttled_if(ms: i64) -> Result<(), Throttled> {
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => Err(Throttled(Duration::from_millis(ms))),
        _ => Ok(()),
    }
}

fn fallback(metrics: &Metrics, e: &SharedError) {
    metrics.shared_state_fallback(SharedUse::Limiter);
    tracing::debug!(error = %crate::report::Chain(e), "limiter: using this replica's counts");
}

/// A call of `script` with the records' keys; arguments follow.
fn invocation(script: &'static Script, records: &[Record]) -> ScriptInvocation<'static> {
    let mut call = script.prepare_invoke();
    for r in records {
        call.key(format!("{PREFIX}{}", r.name));
    }
    call
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Records outlive their last use by twice the longest backoff (after which
/// they would be forgiven anyway), plus a minute.
fn ttl(max_backoff: Duration) -> u64 {
    millis(max_backoff * 2 + Duration::from_secs(60))
}

/// An attempt reserved in Redis, settled there in the background so the
/// password check's task does not wait on a round trip.
#[derive(Debug)]
struct Reservation {
    shared: Arc<SharedState>,
    records: Vec<Record>,
    max_backoff: u64,
    ttl: u64,
}

impl Settle for Reservation {
    fn settle(self: Box<Self>, outcome: Outcome) {
        let outcome = match outcome {
            Outcome::Success => "ok",
            Outcome::Failure => "fail",
            Outcome::Released => "release",
        };
        // Outside a runtime (never in the server) the reservation expires
        // by itself after STALE_RESERVATION.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut call = invocation(&SETTLE, &self.records);
            call.arg(self.max_backoff).arg(outcome).arg(self.ttl);
            for rec in &self.records {
                call.arg(rec.allowance).arg(u8::from(rec.account));
            }
            let result = self
                .shared
                .run(|mut conn| async move { call.invoke_async::<i64>(&mut conn).await })
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %crate::report::Chain(&e), "limiter: settling in Redis failed; the reservation expires");
            }
        });
    }
}
