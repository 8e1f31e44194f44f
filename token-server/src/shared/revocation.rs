//! Revocations: a refresh token by its `jti`, every credential of a
//! subject, or every refresh token issued before a time.
//!
//! Redis holds them, and each replica holds them too, in memory: a request
//! is checked against this process's copy and never waits for Redis. In
//! Redis, a hash maps each revocation's key (its [`Target::field`]) to its
//! value, a sorted set holds each one's expiry, and every change is also
//! appended to a stream with a sequence number, which replicas follow with
//! a blocking read (see `follow`). None of these keys has a TTL, so a
//! `volatile-*` eviction policy can never drop one; each entry ends when
//! the longest lifetime of what it revokes has passed, after which there
//! is nothing left for it to revoke. Access tokens are not revocable:
//! registries verify them offline, so they stay short instead.
//!
//! How long an entry lasts is not the revoking command's guess from its
//! own config: every replica publishes, per scope (kind and issuer), until
//! when the refresh tokens it has issued may live (its lifetime from now,
//! plus [`HORIZON_SLACK`], every few seconds and after each reload), kept
//! as the latest such time of any replica. An entry lasts at least until
//! the latest one of the scopes it covers, so it outlives tokens minted
//! under a longer lifetime than the config has now.
//!
//! Each revocation is one version of its field: its value carries a random
//! nonce, so revoking again after a lift makes a new version. A lift leaves
//! a tombstone for the version it removed, in Redis and on every replica
//! that hears of it, until that version would have expired. A replica
//! writing back what a Redis lost (after a restart, a flush or a failover)
//! writes its tombstones first, which removes a lifted version Redis got
//! back, and a version with a tombstone is never written back: a lift
//! stays lifted, whichever replica missed it, and a revocation survives.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use redis::Script;
use serde::{Deserialize, Serialize};

use super::{SharedError, SharedState};
use crate::clock::unix;
use crate::identity::{Kind, Principal};

/// The revocations: field -> value.
pub(super) const ENTRIES: &str = "regauth:{revoked}:entries";
/// Each field's expiry, milliseconds by Redis's clock.
pub(super) const EXPIRY: &str = "regauth:{revoked}:expiry";
/// Every change, in order.
pub(super) const LOG: &str = "regauth:{revoked}:log";
/// The last change's sequence number.
pub(super) const SEQ: &str = "regauth:{revoked}:seq";
/// A random value set once: missing or changed, Redis lost (or was
/// replaced by another with) the revocations.
pub(super) const EPOCH: &str = "regauth:{revoked}:epoch";
/// Tombstones of lifted versions (`FIELD\nVALUE`), scored by when each
/// may be forgotten.
pub(super) const LIFTED: &str = "regauth:{revoked}:lifted";

/// Per scope (`KIND:ISSUER`, `-` for none), until when (ms, Redis's clock)
/// refresh tokens issued so far may live.
pub(super) const HORIZON: &str = "regauth:{revoked}:horizon";

/// What a replica adds to its lifetime when it publishes its horizon: the
/// time until it publishes again (every few seconds while it follows, at
/// once after a reload), with room for a slow round trip.
pub const HORIZON_SLACK: Duration = Duration::from_secs(30);

/// How long a tombstone outlives the version it lifted would have: a
/// replica's copy of an entry ends by its own clock, a little after Redis's.
const TOMBSTONE_SLACK: Duration = Duration::from_secs(60);

/// The longest an entry is kept (100 years): Redis scores and the
/// replicas' clocks count milliseconds, and no credential lives this long.
/// An entry whose time left cannot be read is held this long: at its
/// strictest.
pub const MAX_ENTRY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Changes the stream keeps; a replica further behind reloads everything.
pub(super) const LOG_LENGTH: u32 = 10_000;

/// Stands for "any" kind or issuer in a field.
const ANY: &str = "*";

/// Stands for "no issuer" in a field: accounts, nodes and certificates,
/// which no `issuers` entry vouches for.
const NONE: &str = "-";

/// The kinds a revocation can name.
const KINDS: [Kind; 5] = [
    Kind::Account,
    Kind::Kubernetes,
    Kind::Oidc,
    Kind::Node,
    Kind::Certificate,
];

/// What a revocation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One refresh token, by its `jti`.
    Jti {
        /// The token's `jti`.
        jti: String,
    },
    /// Every credential of a subject: its refresh tokens are refused and it
    /// cannot sign in or exchange again while the revocation lasts.
    Subject {
        /// The `sub` of the tokens issued to it (as in the audit log).
        subject: String,
        /// Only principals of this kind.
        kind: Option<Kind>,
        /// Only principals from this issuer (its name in the config).
        issuer: Option<String>,
    },
    /// Every refresh token issued before a time, to the second.
    IssuedBefore {
        /// Unix seconds; tokens whose `iat` is this or earlier are refused.
        before: u64,
        /// Only principals of this kind.
        kind: Option<Kind>,
        /// Only principals from this issuer.
        issuer: Option<String>,
    },
}

fn scope_part(kind: Option<Kind>, issuer: Option<&str>) -> String {
    format!(
        "{}:{}",
        kind.map_or(ANY, Kind::as_str),
        issuer.unwrap_or(ANY)
    )
}

impl Target {
    /// Its key in Redis and in every replica's copy. An `IssuedBefore` is
    /// named by its kind and issuer only: a later cut-off replaces it.
    pub fn field(&self) -> String {
        match self {
            Target::Jti { jti } => format!("jti:{jti}"),
            Target::Subject {
                subject,
                kind,
                issuer,
            } => format!("sub:{}:{subject}", scope_part(*kind, issuer.as_deref())),
            Target::IssuedBefore { kind, issuer, .. } => {
                format!("before:{}", scope_part(*kind, issuer.as_deref()))
            }
        }
    }

    /// The target a field names; `before` fills in an `IssuedBefore`'s
    /// cut-off, which its value holds.
    fn from_field(field: &str, before: u64) -> Option<Target> {
        let (what, rest) = field.split_once(':')?;
        let scope = |text: &str| -> Option<(Option<Kind>, Option<String>)> {
            let (kind, issuer) = text.split_once(':')?;
            let kind = match kind {
                ANY => None,
                k => Some(*KINDS.iter().find(|x| x.as_str() == k)?),
            };
            let issuer = match issuer {
                ANY => None,
                i if i.is_empty() || i.contains(':') => return None,
                i => Some(i.to_owned()),
            };
            Some((kind, issuer))
        };
        match what {
            "jti" if !rest.is_empty() => Some(Target::Jti {
                jti: rest.to_owned(),
            }),
            "sub" => {
                let mut parts = rest.splitn(3, ':');
                let (kind, issuer, subject) = (parts.next()?, parts.next()?, parts.next()?);
                if subject.is_empty() {
                    return None;
                }
                let (kind, issuer) = scope(&format!("{kind}:{issuer}"))?;
                Some(Target::Subject {
                    subject: subject.to_owned(),
                    kind,
                    issuer,
                })
            }
            "before" => {
                let (kind, issuer) = scope(rest)?;
                Some(Target::IssuedBefore {
                    before,
                    kind,
                    issuer,
                })
            }
            _ => None,
        }
    }

    /// What the entry refuses, in words, for `revoke --list`.
    pub fn refuses(&self) -> &'static str {
        match self {
            Target::Jti { .. } => "refuses the refresh token with this jti",
            Target::Subject {
                kind: Some(Kind::Account),
                ..
            } => "refuses its refresh tokens and its sign-ins",
            Target::Subject {
                kind: Some(Kind::Kubernetes | Kind::Oidc),
                ..
            } => "refuses its refresh tokens and its token exchanges",
            Target::Subject {
                kind: Some(Kind::Node | Kind::Certificate),
                ..
            } => "refuses its refresh tokens and its client-certificate sign-ins",
            Target::Subject { .. } => "refuses its refresh tokens, sign-ins and exchanges",
            Target::IssuedBefore { .. } => "refuses those refresh tokens",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = |kind: &Option<Kind>, issuer: &Option<String>| {
            let kind = kind.map_or("any kind", Kind::as_str);
            match issuer {
                Some(i) => format!("{kind}, issued by {i}"),
                None => format!("{kind}, any issuer"),
            }
        };
        // Subjects and jtis are escaped as the text audit log writes them.
        match self {
            Target::Jti { jti } => write!(f, "refresh token {jti:?}"),
            Target::Subject {
                subject,
                kind,
                issuer,
            } => write!(f, "subject {subject:?} ({})", scope(kind, issuer)),
            Target::IssuedBefore {
                before,
                kind,
                issuer,
            } => write!(
                f,
                "refresh tokens issued at or before {} ({})",
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(*before)
                ),
                scope(kind, issuer)
            ),
        }
    }
}

/// An entry's value in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    /// When it was made (unix seconds).
    revoked_at: u64,
    /// `IssuedBefore` only: the cut-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
    /// A random nonce that makes each revocation a version of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<String>,
}

/// A revocation in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// What it applies to.
    pub target: Target,
    /// When it was made (unix seconds); 0 when its value is unreadable.
    pub revoked_at: u64,
    /// How long it stays in force.
    pub expires_in: Duration,
    /// Its value in Redis, exactly: which version of its field it is.
    version: String,
}

impl Revocation {
    /// A new version of a revocation of `target`, made at `revoked_at`
    /// (unix seconds), in force for `expires_in`.
    pub fn new(
        target: Target,
        revoked_at: u64,
        expires_in: Duration,
    ) -> Result<Self, crate::secret::RandomError> {
        let nonce = crate::secret::random::<8>()?;
        let stored = Stored {
            revoked_at,
            before: match target {
                Target::IssuedBefore { before, .. } => Some(before),
                _ => None,
            },
            v: Some(nonce.iter().map(|b| format!("{b:02x}")).collect()),
        };
        Ok(Revocation {
            target,
            revoked_at,
            expires_in,
            // Integers and hex digits always encode.
            version: serde_json::to_string(&stored).unwrap_or_default(),
        })
    }

    /// The value stored for it.
    fn value(&self) -> &str {
        &self.version
    }
}

/// Reads an entry back from Redis: its field and value, as any client of
/// that Redis may have written them. A field that names nothing is `None`;
/// a value that cannot be read is taken at its strictest (an unreadable
/// cut-off refuses every refresh token of its scope).
pub fn read_entry(field: &str, value: &str, expires_in: Duration) -> Option<Revocation> {
    let stored = serde_json::from_str::<Stored>(value).ok();
    let before = stored.as_ref().and_then(|s| s.before).unwrap_or(u64::MAX);
    Some(Revocation {
        target: Target::from_field(field, before)?,
        revoked_at: stored.map_or(0, |s| s.revoked_at),
        expires_in,
        version: value.to_owned(),
    })
}

/// A tombstone's member: the field and the version lifted. A value is
/// JSON, which holds no raw newline, so the last one splits the two.
fn tombstone(field: &str, version: &str) -> String {
    format!("{field}\n{version}")
}

/// The refresh token a caller presented.
#[derive(Debug, Clone)]
pub struct Presented {
    /// Its `jti`.
    pub jti: String,
    /// Its `iat` (unix seconds).
    pub iat: u64,
}

/// Why a caller's credential is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Revoked {
    /// The presented refresh token was revoked (by `jti` or issue time).
    #[error("refresh token was revoked")]
    Token,
    /// The caller's subject was revoked.
    #[error("the credentials of this subject were revoked")]
    Subject,
}

/// One revocation this process holds.
#[derive(Debug, Clone)]
struct Held {
    target: Target,
    revoked_at: u64,
    version: String,
    expires: Instant,
}

/// What this process holds: the revocations by field, and the tombstones
/// of lifted versions, each until it may be forgotten.
#[derive(Debug, Default)]
struct Inner {
    held: HashMap<String, Held>,
    lifted: HashMap<String, Instant>,
}

/// The revocations this process holds, checked on every authenticated
/// request without a round trip, and the lifts it heard of.
#[derive(Debug, Default)]
pub struct Revocations {
    inner: RwLock<Inner>,
}

/// A lift this process heard of: the tombstone of the version it removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lifted {
    /// The tombstone's member: the field and the version.
    pub member: String,
    /// How long it is kept.
    pub expires_in: Duration,
}

impl Revocations {
    /// Checks the caller against the revocations held: its subject always,
    /// and the refresh token it presented, if any.
    pub fn check(
        &self,
        principal: &Principal,
        presented: Option<&Presented>,
        now: Instant,
    ) -> Result<(), Revoked> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let held = &inner.held;
        if held.is_empty() {
            return Ok(());
        }
        let live = |field: &str| held.get(field).filter(|h| h.expires > now);
        let subject = principal.subject();
        let kind = principal.kind.as_str();
        // Only issuers of the config vouch for principals; a certificate's
        // issuer attribute is its CA's name, which no revocation names.
        let issuer = match principal.kind {
            Kind::Kubernetes | Kind::Oidc => principal
                .attributes
                .get("issuer")
                .map_or(NONE, String::as_str),
            _ => NONE,
        };
        let combos = [(kind, issuer), (kind, ANY), (ANY, issuer), (ANY, ANY)];
        if combos
            .iter()
            .any(|(k, i)| live(&format!("sub:{k}:{i}:{subject}")).is_some())
        {
            return Err(Revoked::Subject);
        }
        let Some(p) = presented else {
            return Ok(());
        };
        if live(&format!("jti:{}", p.jti)).is_some() {
            return Err(Revoked::Token);
        }
        for (k, i) in combos {
            if let Some(Held {
                target: Target::IssuedBefore { before, .. },
                ..
            }) = live(&format!("before:{k}:{i}"))
                // `iat` has whole seconds: a token from the very second of
                // the cut-off may predate it, so that second is revoked too.
                && p.iat <= *before
            {
                return Err(Revoked::Token);
            }
        }
        Ok(())
    }

    /// Holds `entry` from `now` for its `expires_in`; an entry already
    /// held for the same field keeps the later expiry. A version this
    /// process knows was lifted is not held again.
    pub fn put(&self, entry: Revocation, now: Instant) {
        let field = entry.target.field();
        let expires = now + entry.expires_in;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner
            .lifted
            .get(&tombstone(&field, &entry.version))
            .is_some_and(|until| *until > now)
        {
            return;
        }
        let expires = inner
            .held
            .get(&field)
            .filter(|h| h.target == entry.target)
            .map_or(expires, |h| h.expires.max(expires));
        inner.held.insert(
            field,
            Held {
                target: entry.target,
                revoked_at: entry.revoked_at,
                version: entry.version,
                expires,
            },
        );
    }

    /// A lift of `field`: stops holding it, and keeps the tombstone of
    /// `version` (the version lifted) for `keep`. Without a version (a
    /// change written by an older build), the field just goes.
    pub fn lift(&self, field: &str, version: Option<&str>, keep: Duration, now: Instant) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match version {
            None => {
                inner.held.remove(field);
            }
            Some(version) => {
                if inner.held.get(field).is_some_and(|h| h.version == version) {
                    inner.held.remove(field);
                }
                inner.lifted.insert(tombstone(field, version), now + keep);
            }
        }
    }

    /// Replaces everything held with `entries` and `lifted` (a full load).
    pub(super) fn replace(&self, entries: Vec<Revocation>, lifted: Vec<Lifted>, now: Instant) {
        let held: HashMap<String, Held> = entries
            .into_iter()
            .map(|e| {
                (
                    e.target.field(),
                    Held {
                        expires: now + e.expires_in,
                        target: e.target,
                        revoked_at: e.revoked_at,
                        version: e.version,
                    },
                )
            })
            .collect();
        let lifted = lifted
            .into_iter()
            .map(|l| (l.member, now + l.expires_in))
            .collect();
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Inner { held, lifted };
    }

    /// How many are held (some may have expired since the last prune).
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what has expired; returns how many are held.
    pub fn prune(&self, now: Instant) -> usize {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.held.retain(|_, h| h.expires > now);
        inner.lifted.retain(|_, until| *until > now);
        inner.held.len()
    }

    /// Every revocation held and not expired, with the time it has left.
    pub fn all(&self, now: Instant) -> Vec<Revocation> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .held
            .values()
            .filter(|h| h.expires > now)
            .map(|h| Revocation {
                target: h.target.clone(),
                revoked_at: h.revoked_at,
                expires_in: h.expires - now,
                version: h.version.clone(),
            })
            .collect()
    }

    /// Every tombstone held and not expired, with the time it has left.
    pub(super) fn lifted(&self, now: Instant) -> Vec<Lifted> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .lifted
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(member, until)| Lifted {
                member: member.clone(),
                expires_in: *until - now,
            })
            .collect()
    }
}

/// Shared by the scripts: the time in milliseconds, by Redis's clock.
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: ENTRIES, EXPIRY, LOG, SEQ, EPOCH, LIFTED, HORIZON. ARGV: epoch
/// if none is set, stream length, '1' to keep entries already there, the
/// kind and issuer whose horizon an entry must reach ('*' for any, empty
/// for none), then per entry its field, value and lifetime in ms. Drops
/// expired entries and tombstones first; a version with a tombstone is
/// never written, and an entry keeps the latest of its expiries and the
/// horizon. Returns {how many were written, ms the last one has left}.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, f in ipairs(old) do redis.call('HDEL', KEYS[1], f) end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
redis.call('SET', KEYS[5], ARGV[1], 'NX')
local floor = 0
if ARGV[4] ~= '' then
  local h = redis.call('HGETALL', KEYS[7])
  for j = 1, #h, 2 do
    local k, i = string.match(h[j], '^([^:]*):(.*)$')
    local u = tonumber(h[j + 1]) or 0
    if k and (ARGV[4] == '*' or ARGV[4] == k) and (ARGV[5] == '*' or ARGV[5] == i) and u > floor then
      floor = u
    end
  end
end
local written, left = 0, 0
for i = 6, #ARGV, 3 do
  local f, v = ARGV[i], ARGV[i + 1]
  local keep = ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], f) == 1
  if not keep and not redis.call('ZSCORE', KEYS[6], f .. '\\n' .. v) then
    local exp = math.max(now + tonumber(ARGV[i + 2]), floor)
    local cur = tonumber(redis.call('ZSCORE', KEYS[2], f))
    if cur and cur > exp then exp = cur end
    redis.call('HSET', KEYS[1], f, v)
    redis.call('ZADD', KEYS[2], exp, f)
    local s = redis.call('INCR', KEYS[4])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 's', s, 'op', 'put', 'f', f, 'v', v, 't', exp - now)
    written, left = written + 1, exp - now
  end
end
return {{written, left}}"
    ))
});

/// KEYS: HORIZON. ARGV: slack in ms, then per scope its name and lifetime
/// in ms. Keeps, per scope, the latest of now + lifetime + slack and what
/// is there; drops what has passed.
static HORIZON_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local h = redis.call('HGETALL', KEYS[1])
for j = 1, #h, 2 do
  if (tonumber(h[j + 1]) or 0) <= now then redis.call('HDEL', KEYS[1], h[j]) end
end
for i = 2, #ARGV, 2 do
  local upto = now + tonumber(ARGV[i + 1]) + tonumber(ARGV[1])
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i])) or 0
  if upto > cur then redis.call('HSET', KEYS[1], ARGV[i], upto) end
end
return 0"
    ))
});

/// A scope of the horizon: a kind and, for principals an issuer vouches
/// for, that issuer's name.
pub fn scope(kind: Kind, issuer: Option<&str>) -> String {
    format!("{}:{}", kind.as_str(), issuer.unwrap_or(NONE))
}

/// Publishes until when the refresh tokens this replica issues may live,
/// per scope: `lifetimes` from now, plus [`HORIZON_SLACK`].
pub(super) async fn publish_horizon(
    conn: &mut redis::aio::MultiplexedConnection,
    lifetimes: &[(String, Duration)],
) -> redis::RedisResult<()> {
    let mut call = HORIZON_PUT.prepare_invoke();
    call.key(HORIZON).arg(millis(HORIZON_SLACK));
    for (scope, lifetime) in lifetimes {
        call.arg(scope).arg(millis(*lifetime));
    }
    call.invoke_async::<()>(conn).await
}

/// KEYS: ENTRIES, EXPIRY, LOG, SEQ, LIFTED. ARGV: field, stream length,
/// tombstone slack in ms. Removes the entry and keeps a tombstone of its
/// version until it would have expired, plus the slack. Returns 1 if there
/// was such an entry.
static LIFT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local exp = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1])) or now
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local keep = math.max(exp - now, 0) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[5], now + keep, ARGV[1] .. '\\n' .. v)
local s = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 's', s, 'op', 'del', 'f', ARGV[1], 'v', v, 't', keep)
return 1"
    ))
});

/// KEYS: ENTRIES, EXPIRY, LOG, SEQ, LIFTED. ARGV: stream length, then per
/// tombstone its member (`FIELD\nVALUE`) and ms left. Writes back the
/// tombstones of lifts a Redis may have lost, and removes each version
/// lifted that it holds again. Returns how many were removed.
static BURY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local removed = 0
for i = 2, #ARGV, 2 do
  local m, keep = ARGV[i], tonumber(ARGV[i + 1])
  local cur = tonumber(redis.call('ZSCORE', KEYS[5], m))
  if cur and cur - now > keep then keep = cur - now end
  redis.call('ZADD', KEYS[5], now + keep, m)
  local f, v = string.match(m, '^(.*)\\n([^\\n]*)$')
  if f and redis.call('HGET', KEYS[1], f) == v then
    redis.call('HDEL', KEYS[1], f)
    redis.call('ZREM', KEYS[2], f)
    local s = redis.call('INCR', KEYS[4])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 's', s, 'op', 'del', 'f', f, 'v', v, 't', keep)
    removed = removed + 1
  end
end
return removed"
    ))
});

/// KEYS: ENTRIES, EXPIRY, LOG, SEQ, EPOCH, LIFTED. Everything at one
/// instant: {sequence, last stream ID, epoch, number of entries, then per
/// live entry its field, value and ms left, then per tombstone its member
/// and ms left}.
static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local out = {{tonumber(redis.call('GET', KEYS[4])) or 0}}
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
out[2] = last[1] and last[1][1] or '0-0'
out[3] = redis.call('GET', KEYS[5]) or ''
out[4] = 0
local live = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local v = redis.call('HGET', KEYS[1], live[i])
  if v then
    out[#out + 1] = live[i]
    out[#out + 1] = v
    out[#out + 1] = tonumber(live[i + 1]) - now
    out[4] = out[4] + 1
  end
end
local lifted = redis.call('ZRANGEBYSCORE', KEYS[6], now, '+inf', 'WITHSCORES')
for i = 1, #lifted, 2 do
  out[#out + 1] = lifted[i]
  out[#out + 1] = tonumber(lifted[i + 1]) - now
end
return out"
    ))
});

/// The time an entry has left, from what Redis said in milliseconds: an
/// entry is only ever listed while live, so nothing readable (0) means it
/// is taken at its strictest.
pub(super) fn time_left(ms: u64) -> Duration {
    match ms {
        0 => MAX_ENTRY,
        ms => Duration::from_millis(ms).min(MAX_ENTRY),
    }
}

/// KEYS: ENTRIES, EXPIRY, LOG, SEQ, EPOCH. ARGV: epoch if none is set,
/// stream length, a cursor. Moves one `SCAN` page of revocations kept the
/// way the previous build kept them (a string key per revocation, its
/// field after the prefix, with its own TTL) into the hash, each only
/// where the hash has no entry of that field, and deletes them. Returns
/// {next cursor, moved}.
static MIGRATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local page = redis.call('SCAN', ARGV[3], 'MATCH', 'regauth:{{revoked}}:*', 'COUNT', 1000)
local moved = 0
local prefix = 'regauth:{{revoked}}:'
for _, k in ipairs(page[2]) do
  local f = string.sub(k, #prefix + 1)
  local kind = string.match(f, '^(%a+):')
  if (kind == 'jti' or kind == 'sub' or kind == 'before') and redis.call('TYPE', k).ok == 'string' then
    local v = redis.call('GET', k)
    local left = redis.call('PTTL', k)
    if left > 0 and redis.call('HEXISTS', KEYS[1], f) == 0 then
      redis.call('SET', KEYS[5], ARGV[1], 'NX')
      redis.call('HSET', KEYS[1], f, v)
      redis.call('ZADD', KEYS[2], now + left, f)
      local s = redis.call('INCR', KEYS[4])
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 's', s, 'op', 'put', 'f', f, 'v', v, 't', left)
      moved = moved + 1
    end
    redis.call('DEL', k)
  end
end
return {{page[1], moved}}"
    ))
});

/// Moves revocations kept the way the previous build kept them (one string
/// key each) into the hash every replica follows, so that upgrading a
/// fleet loses none; returns how many were moved. Runs to the end of one
/// `SCAN` of the keyspace.
pub(super) async fn migrate(
    conn: &mut redis::aio::MultiplexedConnection,
    epoch: &str,
) -> redis::RedisResult<u64> {
    let mut cursor = "0".to_owned();
    let mut moved = 0;
    loop {
        let (next, n): (String, u64) = MIGRATE
            .key(ENTRIES)
            .key(EXPIRY)
            .key(LOG)
            .key(SEQ)
            .key(EPOCH)
            .arg(epoch)
            .arg(LOG_LENGTH)
            .arg(&cursor)
            .invoke_async(conn)
            .await?;
        moved += n;
        if next == "0" {
            return Ok(moved);
        }
        cursor = next;
    }
}

/// Entries written back in one script call.
const BATCH: usize = 500;

/// What [`snapshot`] read.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// The last change's sequence number.
    pub seq: u64,
    /// The last change's stream ID.
    pub last_id: String,
    /// The epoch marker; empty when missing.
    pub epoch: String,
    /// Every live entry.
    pub entries: Vec<Revocation>,
    /// Every live tombstone.
    pub lifted: Vec<Lifted>,
}

/// Reads every revocation, and where the stream of changes stands, at one
/// instant.
pub(super) async fn snapshot(
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<Snapshot> {
    let values: Vec<redis::Value> = SNAPSHOT
        .key(ENTRIES)
        .key(EXPIRY)
        .key(LOG)
        .key(SEQ)
        .key(EPOCH)
        .key(LIFTED)
        .invoke_async(conn)
        .await?;
    let text = |v: Option<&redis::Value>| -> String {
        v.and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_default()
    };
    let number = |v: Option<&redis::Value>| -> u64 {
        v.and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    };
    let count = usize::try_from(number(values.get(3))).unwrap_or(0);
    let rest = values.get(4..).unwrap_or_default();
    let (live, tombstones) = rest.split_at(count.saturating_mul(3).min(rest.len()));
    let mut entries = Vec::new();
    for chunk in live.chunks(3) {
        let [field, value, left] = chunk else { break };
        let field = text(Some(field));
        let left = time_left(number(Some(left)));
        match read_entry(&field, &text(Some(value)), left) {
            Some(entry) => entries.push(entry),
            None => tracing::warn!(field, "an entry in Redis names no revocation; ignored"),
        }
    }
    let lifted = tombstones
        .chunks(2)
        .filter_map(|chunk| match chunk {
            [member, left] => Some(Lifted {
                member: text(Some(member)),
                expires_in: time_left(number(Some(left))),
            }),
            _ => None,
        })
        .collect();
    Ok(Snapshot {
        seq: number(values.first()),
        last_id: text(values.get(1)),
        epoch: text(values.get(2)),
        entries,
        lifted,
    })
}

/// Writes `entries` back, each only where Redis has no entry of that
/// field, setting `epoch` if none is set; returns how many were missing.
pub(super) async fn write_back(
    conn: &mut redis::aio::MultiplexedConnection,
    entries: &[Revocation],
    epoch: &str,
) -> redis::RedisResult<u64> {
    let mut written = 0;
    // One call even with nothing to write, so the marker is set.
    let batches = entries
        .chunks(BATCH)
        .chain(entries.is_empty().then_some(&entries[..0]));
    for batch in batches {
        // What is written back keeps the time it had left.
        let mut call = put_call(epoch, true, None);
        for e in batch {
            call.arg(e.target.field())
                .arg(e.value())
                .arg(millis(e.expires_in));
        }
        written += call.invoke_async::<(u64, u64)>(conn).await?.0;
    }
    Ok(written)
}

/// Writes back the tombstones of lifts a Redis may have lost, removing
/// each lifted version it holds again; returns how many it held.
pub(super) async fn bury(
    conn: &mut redis::aio::MultiplexedConnection,
    lifted: &[Lifted],
) -> redis::RedisResult<u64> {
    let mut removed = 0;
    for batch in lifted.chunks(BATCH) {
        let mut call = BURY.prepare_invoke();
        call.key(ENTRIES)
            .key(EXPIRY)
            .key(LOG)
            .key(SEQ)
            .key(LIFTED)
            .arg(LOG_LENGTH);
        for l in batch {
            call.arg(&l.member).arg(millis(l.expires_in));
        }
        removed += call.invoke_async::<u64>(conn).await?;
    }
    Ok(removed)
}

/// A call of [`PUT`]; `reach`: the kind and issuer ('*' for any) whose
/// horizon the entries must reach.
fn put_call(
    epoch: &str,
    keep: bool,
    reach: Option<(&str, &str)>,
) -> redis::ScriptInvocation<'static> {
    let mut call = PUT.prepare_invoke();
    let (kind, issuer) = reach.unwrap_or(("", ""));
    call.key(ENTRIES)
        .key(EXPIRY)
        .key(LOG)
        .key(SEQ)
        .key(EPOCH)
        .key(LIFTED)
        .key(HORIZON)
        .arg(epoch)
        .arg(LOG_LENGTH)
        .arg(if keep { "1" } else { "0" })
        .arg(kind)
        .arg(issuer);
    call
}

/// The kind and issuer ('*' for any) of the tokens `target` can revoke.
fn reach(target: &Target) -> (&str, &str) {
    match target {
        Target::Jti { .. } => (ANY, ANY),
        Target::Subject { kind, issuer, .. } | Target::IssuedBefore { kind, issuer, .. } => (
            kind.map_or(ANY, Kind::as_str),
            issuer.as_deref().unwrap_or(ANY),
        ),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Why a revocation could not be written or listed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Redis failed.
    #[error(transparent)]
    Shared(#[from] SharedError),
}

/// Puts `target` in force for `ttl`, or longer: until the horizon of the
/// tokens it can revoke, or the expiry it already has. A later
/// `IssuedBefore` for the same kind and issuer replaces an earlier one only
/// if it reaches further. `epoch` marks a Redis that had none. The entry
/// returned says how long it has left.
pub async fn revoke(
    shared: &SharedState,
    target: Target,
    now: SystemTime,
    ttl: Duration,
    epoch: &str,
) -> Result<Revocation, RevokeError> {
    if let Target::IssuedBefore { before, .. } = &target {
        let current = list(shared)
            .await?
            .into_iter()
            .find(|r| r.target.field() == target.field());
        if let Some(
            existing @ Revocation {
                target: Target::IssuedBefore { before: b, .. },
                ..
            },
        ) = current
            && b >= *before
        {
            return Ok(existing);
        }
    }
    let mut entry = Revocation::new(target, unix(now), ttl).map_err(|_| {
        RevokeError::Shared(SharedError::Reply(
            "no random bytes for the entry's version",
        ))
    })?;
    let mut call = put_call(epoch, false, Some(reach(&entry.target)));
    call.arg(entry.target.field())
        .arg(entry.value())
        .arg(millis(ttl));
    let (_, left) = shared
        .run(|mut conn| async move { call.invoke_async::<(u64, u64)>(&mut conn).await })
        .await?;
    entry.expires_in = Duration::from_millis(left).max(ttl);
    Ok(entry)
}

/// Redis's time: the fleet's clock, in which replicas stamp refresh tokens
/// (see [`SharedState::fleet_time`]).
pub async fn redis_time(shared: &SharedState) -> Result<SystemTime, RevokeError> {
    let (secs, micros): (u64, u64) = shared
        .run(|mut conn| async move { redis::cmd("TIME").query_async(&mut conn).await })
        .await?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// How an entry's scope stands to the scope a lift names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The entry refuses nothing the lift names.
    Apart,
    /// The entry refuses only what the lift names: it is lifted.
    Within,
    /// The entry also refuses what the lift names, and more: lifting it
    /// would lift more than was named, keeping it keeps a refusal.
    Wider,
}

/// A kind or issuer of an entry against the lift's (`None`: any).
fn part<T: PartialEq>(entry: &Option<T>, lift: &Option<T>) -> Reach {
    match (entry, lift) {
        (_, None) => Reach::Within,
        (Some(e), Some(l)) if e == l => Reach::Within,
        (Some(_), Some(_)) => Reach::Apart,
        (None, Some(_)) => Reach::Wider,
    }
}

fn reach_of(entry: &Target, lift: &Target) -> Reach {
    let scoped = |ek: &Option<Kind>,
                  ei: &Option<String>,
                  lk: &Option<Kind>,
                  li: &Option<String>| match (part(ek, lk), part(ei, li)) {
        (Reach::Apart, _) | (_, Reach::Apart) => Reach::Apart,
        (Reach::Within, Reach::Within) => Reach::Within,
        _ => Reach::Wider,
    };
    match (entry, lift) {
        (Target::Jti { jti: e }, Target::Jti { jti: l }) if e == l => Reach::Within,
        (
            Target::Subject {
                subject: es,
                kind: ek,
                issuer: ei,
            },
            Target::Subject {
                subject: ls,
                kind: lk,
                issuer: li,
            },
        ) if es == ls => scoped(ek, ei, lk, li),
        (
            Target::IssuedBefore {
                kind: ek,
                issuer: ei,
                ..
            },
            Target::IssuedBefore {
                kind: lk,
                issuer: li,
                ..
            },
        ) => scoped(ek, ei, lk, li),
        _ => Reach::Apart,
    }
}

/// What a lift did.
#[derive(Debug, Default)]
pub struct LiftReport {
    /// The entries lifted.
    pub lifted: Vec<Target>,
    /// Entries of a wider scope that still refuse what was named.
    pub still: Vec<Target>,
}

/// Lifts every revocation within the scope `target` names (a kind or
/// issuer left out means any: a subject lifted without `--issuer` is lifted
/// for every issuer), and reports the entries of a wider scope that still
/// refuse what it names, which it leaves.
pub async fn lift(shared: &SharedState, target: &Target) -> Result<LiftReport, RevokeError> {
    let mut report = LiftReport::default();
    for entry in list(shared).await? {
        match reach_of(&entry.target, target) {
            Reach::Apart => {}
            Reach::Wider => report.still.push(entry.target),
            Reach::Within => {
                if lift_field(shared, &entry.target).await? {
                    report.lifted.push(entry.target);
                }
            }
        }
    }
    Ok(report)
}

/// Lifts the entry of `target`'s field; true if there was one.
async fn lift_field(shared: &SharedState, target: &Target) -> Result<bool, RevokeError> {
    let mut call = LIFT.prepare_invoke();
    call.key(ENTRIES)
        .key(EXPIRY)
        .key(LOG)
        .key(SEQ)
        .key(LIFTED)
        .arg(target.field())
        .arg(LOG_LENGTH)
        .arg(millis(TOMBSTONE_SLACK));
    let removed: u64 = shared
        .run(|mut conn| async move { call.invoke_async(&mut conn).await })
        .await?;
    Ok(removed > 0)
}

/// Every revocation in force, oldest first.
pub async fn list(shared: &SharedState) -> Result<Vec<Revocation>, RevokeError> {
    let snap = shared
        .run(|mut conn| async move { snapshot(&mut conn).await })
        .await?;
    let mut out = snap.entries;
    out.sort_by_key(|a| (a.revoked_at, a.target.field()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn principal(kind: Kind, name: &str, issuer: Option<&str>) -> Principal {
        let mut attributes = BTreeMap::new();
        if let Some(i) = issuer {
            attributes.insert("issuer".to_owned(), i.to_owned());
        }
        Principal {
            kind,
            name: name.to_owned(),
            attributes,
        }
    }

    #[test]
    fn fields_name_kind_and_issuer_or_any_and_read_back() {
        let cases = [
            (
                Target::Subject {
                    subject: "kubernetes:system:serviceaccount:ci:builder".into(),
                    kind: Some(Kind::Kubernetes),
                    issuer: None,
                },
                "sub:kubernetes:*:kubernetes:system:serviceaccount:ci:builder",
            ),
            (
                Target::IssuedBefore {
                    before: 5,
                    kind: None,
                    issuer: Some("cluster".into()),
                },
                "before:*:cluster",
            ),
            (
                Target::Jti {
                    jti: "rt.abc".into(),
                },
                "jti:rt.abc",
            ),
        ];
        for (target, field) in cases {
            assert_eq!(target.field(), field);
            let entry = Revocation::new(target.clone(), 7, Duration::from_secs(1)).unwrap();
            let back = read_entry(field, entry.value(), Duration::from_secs(1)).unwrap();
            assert_eq!(back, entry);
            let again = Revocation::new(target.clone(), 7, Duration::from_secs(1)).unwrap();
            assert_ne!(again.value(), entry.value(), "each revocation is a version");
        }
    }

    /// A lift takes the entries within its scope, and reports wider ones.
    #[test]
    fn a_lift_reaches_entries_within_its_scope_and_names_wider_ones() {
        let sub = |kind: Option<Kind>, issuer: Option<&str>| Target::Subject {
            subject: "kubernetes:system:serviceaccount:ci:b".into(),
            kind,
            issuer: issuer.map(str::to_owned),
        };
        let before = |kind: Option<Kind>| Target::IssuedBefore {
            before: 1,
            kind,
            issuer: None,
        };
        let k = Some(Kind::Kubernetes);
        for (entry, lift, want) in [
            (sub(k, Some("a")), sub(k, None), Reach::Within),
            (sub(k, Some("a")), sub(None, None), Reach::Within),
            (sub(k, None), sub(k, Some("a")), Reach::Wider),
            (sub(None, None), sub(k, Some("a")), Reach::Wider),
            (sub(k, Some("b")), sub(k, Some("a")), Reach::Apart),
            (sub(k, Some("a")), sub(k, Some("a")), Reach::Within),
            (before(None), before(Some(Kind::Node)), Reach::Wider),
            (
                before(Some(Kind::Oidc)),
                before(Some(Kind::Node)),
                Reach::Apart,
            ),
            (before(Some(Kind::Node)), before(None), Reach::Within),
            (before(None), sub(None, None), Reach::Apart),
            (
                Target::Jti { jti: "rt.a".into() },
                Target::Jti { jti: "rt.a".into() },
                Reach::Within,
            ),
            (
                Target::Jti { jti: "rt.a".into() },
                Target::Jti { jti: "rt.b".into() },
                Reach::Apart,
            ),
        ] {
            assert_eq!(reach_of(&entry, &lift), want, "{entry} lifted as {lift}");
        }
    }

    #[test]
    fn unreadable_entries_are_ignored_or_taken_at_their_strictest() {
        let d = Duration::from_secs(1);
        for field in [
            "",
            "jti:",
            "sub:*:*:",
            "sub:robot:*:x",
            "before:*",
            "x:y",
            "sub:*:a:b",
        ] {
            let read = read_entry(field, "{}", d);
            if field == "sub:*:a:b" {
                assert!(read.is_some(), "{field}");
            } else {
                assert_eq!(read, None, "{field}");
            }
        }
        assert_eq!(
            time_left(0),
            MAX_ENTRY,
            "an unreadable time left is the longest"
        );
        assert_eq!(time_left(5), Duration::from_millis(5));
        assert_eq!(time_left(u64::MAX), MAX_ENTRY);
        let strict = read_entry("before:node:*", "not json", d).unwrap();
        assert!(matches!(
            strict.target,
            Target::IssuedBefore {
                before: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn held_revocations_match_subjects_tokens_and_cut_offs() {
        let r = Revocations::default();
        let now = Instant::now();
        let sa = principal(
            Kind::Kubernetes,
            "system:serviceaccount:ci:builder",
            Some("cluster-a"),
        );
        let alice = principal(Kind::Account, "alice", None);
        let token = |jti: &str, iat| Presented {
            jti: jti.into(),
            iat,
        };
        assert_eq!(r.check(&sa, None, now), Ok(()));
        let put = |target, secs| {
            r.put(
                Revocation::new(target, 1, Duration::from_secs(secs)).unwrap(),
                now,
            );
        };
        put(
            Target::Subject {
                subject: sa.subject(),
                kind: None,
                issuer: Some("cluster-b".into()),
            },
            60,
        );
        assert_eq!(r.check(&sa, None, now), Ok(()), "another issuer");
        put(
            Target::Subject {
                subject: sa.subject(),
                kind: None,
                issuer: Some("cluster-a".into()),
            },
            60,
        );
        assert_eq!(r.check(&sa, None, now), Err(Revoked::Subject));
        assert_eq!(
            r.check(&sa, None, now + Duration::from_secs(61)),
            Ok(()),
            "expired"
        );
        put(Target::Jti { jti: "rt.1".into() }, 60);
        assert_eq!(
            r.check(&alice, Some(&token("rt.1", 5)), now),
            Err(Revoked::Token)
        );
        assert_eq!(r.check(&alice, Some(&token("rt.2", 5)), now), Ok(()));
        put(
            Target::IssuedBefore {
                before: 10,
                kind: Some(Kind::Account),
                issuer: None,
            },
            60,
        );
        assert_eq!(
            r.check(&alice, Some(&token("rt.2", 10)), now),
            Err(Revoked::Token)
        );
        assert_eq!(r.check(&alice, Some(&token("rt.2", 11)), now), Ok(()));
        // A certificate principal's issuer attribute (a CA's name) is no
        // issuer of the config.
        let node = principal(Kind::Node, "n1", Some("CN=ca"));
        put(
            Target::Subject {
                subject: "node:n1".into(),
                kind: Some(Kind::Node),
                issuer: None,
            },
            60,
        );
        assert_eq!(r.check(&node, None, now), Err(Revoked::Subject));
        r.lift("sub:node:*:node:n1", None, Duration::ZERO, now);
        assert_eq!(r.check(&node, None, now), Ok(()));
        assert_eq!(r.prune(now + Duration::from_secs(120)), 0);
    }

    /// A lift removes the version it names and keeps its tombstone: that
    /// version is not held again (a late write-back), a new version is.
    #[test]
    fn a_lifted_version_is_never_held_again_but_a_new_one_is() {
        let r = Revocations::default();
        let now = Instant::now();
        let alice = principal(Kind::Account, "alice", None);
        let target = Target::Subject {
            subject: "alice".into(),
            kind: Some(Kind::Account),
            issuer: None,
        };
        let first = Revocation::new(target.clone(), 1, Duration::from_secs(60)).unwrap();
        let field = target.field();
        r.put(first.clone(), now);
        assert_eq!(r.check(&alice, None, now), Err(Revoked::Subject));
        // A lift of another version leaves this one.
        r.lift(&field, Some("{}"), Duration::from_secs(60), now);
        assert_eq!(r.check(&alice, None, now), Err(Revoked::Subject));
        r.lift(&field, Some(first.value()), Duration::from_secs(60), now);
        assert_eq!(r.check(&alice, None, now), Ok(()));
        assert!(r.lifted(now).contains(&Lifted {
            member: format!("{field}\n{}", first.value()),
            expires_in: Duration::from_secs(60),
        }));
        r.put(first, now);
        assert_eq!(r.check(&alice, None, now), Ok(()), "lifted stays lifted");
        let second = Revocation::new(target, 2, Duration::from_secs(60)).unwrap();
        r.put(second, now);
        assert_eq!(r.check(&alice, None, now), Err(Revoked::Subject));
        r.prune(now + Duration::from_secs(61));
        assert!(r.lifted(now + Duration::from_secs(61)).is_empty());
    }
}
