//! Revocations, kept in Redis so that every replica honours them within
//! one request: a refresh token by its `jti`, every credential of a
//! subject, or every refresh token issued before a time.
//!
//! Each revocation is one key whose value describes it (JSON) and whose
//! lifetime is the longest a refresh token lives, after which there is
//! nothing left for it to revoke. A check is one `MGET` of the keys that
//! could apply to the caller. Access tokens are not revocable: registries
//! verify them offline, so they stay short instead.

use std::time::{Duration, SystemTime};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{SharedError, SharedState};
use crate::clock::unix;
use crate::identity::{Kind, Principal};

/// Prefix of the revocation keys (a Redis Cluster hash tag, as for the
/// limiter, so one `MGET` stays in one slot).
const PREFIX: &str = "regauth:{revoked}:";

/// Stands for "any" kind or issuer in a key.
const ANY: &str = "*";

/// Stands for "no issuer" (accounts) in a key.
const NONE: &str = "-";

/// What a revocation applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<Kind>,
        /// Only principals from this issuer (its name in the config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issuer: Option<String>,
    },
    /// Every refresh token issued before a time, to the second.
    IssuedBefore {
        /// Unix seconds; tokens whose `iat` is this or earlier are refused.
        before: u64,
        /// Only principals of this kind.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<Kind>,
        /// Only principals from this issuer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issuer: Option<String>,
    },
}

impl Target {
    fn key(&self) -> String {
        match self {
            Target::Jti { jti } => format!("{PREFIX}jti:{jti}"),
            Target::Subject {
                subject,
                kind,
                issuer,
            } => format!(
                "{PREFIX}sub:{}:{}:{subject}",
                kind.map_or(ANY, Kind::as_str),
                issuer.as_deref().unwrap_or(ANY)
            ),
            Target::IssuedBefore { kind, issuer, .. } => format!(
                "{PREFIX}before:{}:{}",
                kind.map_or(ANY, Kind::as_str),
                issuer.as_deref().unwrap_or(ANY)
            ),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = |kind: &Option<Kind>, issuer: &Option<String>| {
            format!(
                "kind {}, issuer {}",
                kind.map_or(ANY, Kind::as_str),
                issuer.as_deref().unwrap_or(ANY)
            )
        };
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
                "refresh tokens issued before {} ({})",
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(*before)
                ),
                scope(kind, issuer)
            ),
        }
    }
}

/// A revocation in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What it applies to.
    #[serde(flatten)]
    pub target: Target,
    /// When it was made (unix seconds).
    pub revoked_at: u64,
    /// Seconds until Redis forgets it; filled in by [`list`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
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

/// Checks the caller against the revocations in force: its subject always,
/// and the refresh token it presented, if any.
pub async fn check(
    shared: &SharedState,
    principal: &Principal,
    presented: Option<&Presented>,
) -> Result<Result<(), Revoked>, SharedError> {
    let subject = principal.subject();
    let kind = principal.kind.as_str();
    let issuer = principal
        .attributes
        .get("issuer")
        .map_or(NONE, String::as_str);
    let combos = [(kind, issuer), (kind, ANY), (ANY, issuer), (ANY, ANY)];
    let mut keys: Vec<String> = combos
        .iter()
        .map(|(k, i)| format!("{PREFIX}sub:{k}:{i}:{subject}"))
        .collect();
    if let Some(p) = presented {
        keys.push(format!("{PREFIX}jti:{}", p.jti));
        keys.extend(
            combos
                .iter()
                .map(|(k, i)| format!("{PREFIX}before:{k}:{i}")),
        );
    }
    let values: Vec<Option<String>> = shared
        .run(|mut conn| async move { conn.mget(&keys).await })
        .await?;
    let (subjects, token) = values.split_at(combos.len().min(values.len()));
    if subjects.iter().any(Option::is_some) {
        return Ok(Err(Revoked::Subject));
    }
    let Some(p) = presented else {
        return Ok(Ok(()));
    };
    let (jti, befores) = token.split_first().unwrap_or((&None, &[]));
    if jti.is_some() {
        return Ok(Err(Revoked::Token));
    }
    for value in befores.iter().flatten() {
        // An entry this server cannot read is taken at its strictest.
        let before = match serde_json::from_str::<Revocation>(value) {
            Ok(Revocation {
                target: Target::IssuedBefore { before, .. },
                ..
            }) => before,
            _ => u64::MAX,
        };
        // `iat` has whole seconds: a token from the very second of the
        // cut-off may predate it, so that second is revoked too.
        if p.iat <= before {
            return Ok(Err(Revoked::Token));
        }
    }
    Ok(Ok(()))
}

/// Why a revocation could not be written or listed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Redis failed.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// The entry could not be encoded.
    #[error("cannot encode the revocation")]
    Encode(#[source] serde_json::Error),
}

/// Puts `target` in force for `ttl`. A later `IssuedBefore` for the same
/// kind and issuer replaces an earlier one only if it reaches further.
pub async fn revoke(
    shared: &SharedState,
    target: Target,
    now: SystemTime,
    ttl: Duration,
) -> Result<Revocation, RevokeError> {
    let key = target.key();
    if let Target::IssuedBefore { before, .. } = &target {
        let current = current(shared, &key).await?;
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
    let entry = Revocation {
        target,
        revoked_at: unix(now),
        expires_in: None,
    };
    let value = serde_json::to_string(&entry).map_err(RevokeError::Encode)?;
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    shared
        .run(|mut conn| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
    Ok(entry)
}

/// Lifts the revocation of `target`; true if there was one.
pub async fn lift(shared: &SharedState, target: &Target) -> Result<bool, RevokeError> {
    let key = match target {
        // Lifting names only the kind and issuer of an issue-time cut-off.
        Target::IssuedBefore { kind, issuer, .. } => Target::IssuedBefore {
            before: 0,
            kind: *kind,
            issuer: issuer.clone(),
        }
        .key(),
        t => t.key(),
    };
    let removed: u64 = shared
        .run(|mut conn| async move { conn.del(&key).await })
        .await?;
    Ok(removed > 0)
}

async fn current(shared: &SharedState, key: &str) -> Result<Option<Revocation>, RevokeError> {
    let key = key.to_owned();
    let value: Option<String> = shared
        .run(|mut conn| async move { conn.get(&key).await })
        .await?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}

/// Every revocation in force, oldest first.
pub async fn list(shared: &SharedState) -> Result<Vec<Revocation>, RevokeError> {
    let keys: Vec<String> = shared
        .run(|mut conn| async move {
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{PREFIX}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            Ok(keys)
        })
        .await?;
    let mut out = Vec::new();
    for key in keys {
        let (value, ttl): (Option<String>, i64) = shared
            .run(|mut conn| {
                let key = key.clone();
                async move {
                    redis::pipe()
                        .get(&key)
                        .pttl(&key)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let Some(mut entry) = value.and_then(|v| serde_json::from_str::<Revocation>(&v).ok())
        else {
            continue;
        };
        entry.expires_in = u64::try_from(ttl).ok().map(|ms| ms.div_ceil(1000));
        out.push(entry);
    }
    out.sort_by_key(|r| r.revoked_at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_kind_and_issuer_or_any() {
        let t = Target::Subject {
            subject: "kubernetes:ci:builder".into(),
            kind: Some(Kind::Kubernetes),
            issuer: None,
        };
        assert_eq!(
            t.key(),
            "regauth:{revoked}:sub:kubernetes:*:kubernetes:ci:builder"
        );
        let t = Target::IssuedBefore {
            before: 5,
            kind: None,
            issuer: Some("cluster".into()),
        };
        assert_eq!(t.key(), "regauth:{revoked}:before:*:cluster");
        assert_eq!(
            Target::Jti { jti: "abc".into() }.key(),
            "regauth:{revoked}:jti:abc"
        );
    }

    #[test]
    fn entries_round_trip_as_json() {
        let r = Revocation {
            target: Target::IssuedBefore {
                before: 1_700_000_000,
                kind: Some(Kind::Node),
                issuer: None,
            },
            revoked_at: 1_700_000_001,
            expires_in: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"target":"issued_before","before":1700000000,"kind":"node","revoked_at":1700000001}"#
        );
        assert_eq!(serde_json::from_str::<Revocation>(&text).unwrap(), r);
    }
}
