//! Reconciling one (namespace, ServiceAccount): idempotent, reading state
//! only from the reflector stores, writing the Secret by server-side apply
//! and the ServiceAccount's `imagePullSecrets` by a guarded merge patch.
//!
//! Why not apply the ServiceAccount too: `imagePullSecrets` of a
//! ServiceAccount has no merge key, so server-side apply treats it as one
//! atomic field and a forced apply of our one entry would replace the whole
//! list, dropping entries other people own. Instead the controller writes
//! the list it read, plus or minus its own entry, with a merge patch that
//! carries the `resourceVersion` it read: if anyone changed the
//! ServiceAccount meanwhile, the API answers 409 and the reconcile is
//! retried from the fresher state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{LocalObjectReference, Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::clock;
use crate::config::Settings;
use crate::exchange::{Credential, Exchange, ExchangeError, Secret as Token};
use crate::leader::{Leadership, error_chain};
use crate::metrics::Metrics;
use crate::pull_secret::{self, MANAGER, Written};

/// The shortest wait before a refresh, so a credential with a tiny lifetime
/// cannot spin the controller.
const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// How long this replica trusts its own write over a Secret watch that
/// has not shown it yet.
const WATCH_LAG_GRACE: Duration = Duration::from_secs(10);
/// The first retry after a failure; doubled each time up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// This replica does not hold the lease; another one writes.
    #[error("not the leader")]
    NotLeader,
    /// The stores are gone (the controller is shutting down).
    #[error("the object caches are closed")]
    StoresClosed,
    /// The API refused or failed the TokenRequest.
    #[error("TokenRequest for ServiceAccount {namespace}/{name} failed")]
    TokenRequest {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The token server did not give a credential.
    #[error("exchange at the token server for {service} failed")]
    Exchange {
        service: String,
        #[source]
        source: Box<ExchangeError>,
    },
    /// A write to the API failed.
    #[error("{action} {namespace}/{name} failed")]
    Write {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl Error {
    /// A short label for metrics and Events.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Error::NotLeader => "not_leader",
            Error::StoresClosed => "shutdown",
            Error::TokenRequest { .. } => "token_request",
            Error::Exchange { source, .. } => source.reason(),
            Error::Write { source, .. } if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 409) => {
                "conflict"
            }
            Error::Write { .. } => "api_write",
        }
    }
}

/// Everything a reconcile needs.
pub(crate) struct Context<E> {
    pub settings: Settings,
    pub client: kube::Client,
    pub namespaces: Store<Namespace>,
    pub secrets: Store<Secret>,
    /// True once both caches hold a complete list. Reconciles wait on this,
    /// not on `Store::wait_until_ready`: that future keeps only the last
    /// waiter's waker, so of several reconciles waiting at once all but one
    /// would sleep forever.
    pub caches_ready: tokio::sync::watch::Receiver<bool>,
    pub exchange: E,
    pub leadership: Arc<Leadership>,
    pub metrics: Arc<Metrics>,
    pub recorder: Option<Recorder>,
    /// `--dry-run`: Secrets that would be applied are collected here, and
    /// nothing is written.
    pub dry_run: Option<Mutex<Vec<Secret>>>,
    /// Consecutive failures per ServiceAccount, for the backoff.
    pub failures: Mutex<HashMap<ObjectRef<ServiceAccount>, u32>>,
    /// What this replica last wrote per ServiceAccount. The Secret watch
    /// may lag behind our own write; without this, a reconcile triggered by
    /// the ServiceAccount patch would see no Secret yet and exchange again.
    pub written: Mutex<HashMap<ObjectRef<ServiceAccount>, (Written, Instant)>>,
    /// When this replica last added its entry to each ServiceAccount, for
    /// the same reason: the ServiceAccount watch may not show it yet.
    pub attached: Mutex<HashMap<ObjectRef<ServiceAccount>, Instant>>,
}

/// Reconciles one ServiceAccount, and records a failure as a Warning Event
/// on it.
pub(crate) async fn reconcile<E: Exchange>(
    sa: Arc<ServiceAccount>,
    ctx: Arc<Context<E>>,
) -> Result<Action, Error> {
    let result = reconcile_service_account(&sa, &ctx, clock::now()).await;
    match &result {
        Ok(_) => {
            ctx.lock_failures()
                .remove(&ObjectRef::from_obj(sa.as_ref()));
        }
        Err(Error::NotLeader | Error::StoresClosed) => {}
        Err(error) => report(&sa, &ctx, error).await,
    }
    result
}

/// Retries with a jittered, doubling backoff per ServiceAccount.
pub(crate) fn error_policy<E: Exchange>(
    sa: Arc<ServiceAccount>,
    error: &Error,
    ctx: Arc<Context<E>>,
) -> Action {
    ctx.metrics.failed(error.reason());
    let attempts = {
        let mut failures = ctx.lock_failures();
        let n = failures
            .entry(ObjectRef::from_obj(sa.as_ref()))
            .or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    Action::requeue(backoff(
        attempts,
        ctx.settings.max_backoff,
        random_fraction(),
    ))
}

/// `FIRST_BACKOFF * 2^(attempts-1)`, capped at `max`, scaled into
/// `[1/2, 1]` of itself by `fraction` (in `[0, 1)`) so retries spread out.
pub(crate) fn backoff(attempts: u32, max: Duration, fraction: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let base = FIRST_BACKOFF.saturating_mul(1 << exponent).min(max);
    base.mul_f64(0.5 + fraction.clamp(0.0, 1.0) / 2.0)
}

fn random_fraction() -> f64 {
    let mut byte = [0u8; 2];
    if aws_lc_rs::rand::fill(&mut byte).is_err() {
        return 0.5;
    }
    f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX)
}

impl<E> Context<E> {
    #[allow(clippy::type_complexity)] // a map guard, named once here
    fn lock_written(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ServiceAccount>, (Written, Instant)>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_attached(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ServiceAccount>, Instant>> {
        self.attached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ServiceAccount>, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn may_write(&self) -> Result<(), Error> {
        if self.dry_run.is_some() || self.leadership.is_leading() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }
}

/// When a written credential should be refreshed: `threshold` before it
/// expires, or at half its life.
pub(crate) fn refresh_at(written: Written, threshold: Option<Duration>) -> u64 {
    match threshold {
        Some(t) => written.expires_at.saturating_sub(t.as_secs()),
        None => written.issued_at + written.expires_at.saturating_sub(written.issued_at) / 2,
    }
}

async fn reconcile_service_account<E: Exchange>(
    sa: &ServiceAccount,
    ctx: &Context<E>,
    now: u64,
) -> Result<Action, Error> {
    ctx.caches_ready
        .clone()
        .wait_for(|ready| *ready)
        .await
        .map_err(|_| Error::StoresClosed)?;
    let namespace = sa.namespace().unwrap_or_default();
    let name = sa.name_any();
    let settings = &ctx.settings;
    let secret_name = pull_secret::secret_name(&settings.secret_name, &name);
    let cached = ctx.namespaces.get(&ObjectRef::new(&namespace));
    let selected = cached
        .as_ref()
        .is_some_and(|ns| settings.namespaces.selects(ns))
        && settings.service_accounts.selects(&name)
        && sa.meta().deletion_timestamp.is_none();
    tracing::debug!(
        namespace,
        service_account = name,
        cached = cached.is_some(),
        selected,
        "reconciling"
    );
    let existing = ctx
        .secrets
        .get(&ObjectRef::new(&secret_name).within(&namespace));

    let key = ObjectRef::from_obj(sa);
    if !selected {
        ctx.lock_written().remove(&key);
        ctx.lock_attached().remove(&key);
        remove(ctx, sa, &secret_name, existing.as_deref()).await?;
        ctx.metrics.forget(&namespace, &name);
        return Ok(Action::await_change());
    }

    let stored = existing
        .as_deref()
        .and_then(|s| pull_secret::written(settings, s));
    // Our own recent write counts until the watch shows it; past the grace
    // a Secret still missing from the store was deleted, and is rewritten.
    let recent = ctx
        .lock_written()
        .get(&key)
        .filter(|(_, at)| at.elapsed() < WATCH_LAG_GRACE)
        .map(|(w, at)| (*w, WATCH_LAG_GRACE.saturating_sub(at.elapsed())));
    let (latest, recheck) = match (stored, recent) {
        (Some(s), Some((r, left))) if r.expires_at > s.expires_at => (Some(r), Some(left)),
        (None, Some((r, left))) => (Some(r), Some(left)),
        (s, _) => (s, None),
    };
    let fresh =
        latest.filter(|w| now < refresh_at(*w, settings.refresh_threshold) && now < w.expires_at);
    let written = match fresh {
        Some(written) => written,
        None => {
            ctx.may_write()?;
            let credentials = obtain(ctx, sa, &namespace, &name, now).await?;
            let secret = pull_secret::build(settings, sa, &credentials);
            apply(ctx, &namespace, &secret_name, secret).await?;
            ctx.metrics.refreshed();
            let written = Written {
                issued_at: credentials.iter().map(|c| c.issued_at).min().unwrap_or(now),
                expires_at: credentials
                    .iter()
                    .map(|c| c.expires_at)
                    .min()
                    .unwrap_or(now),
            };
            ctx.lock_written()
                .insert(key.clone(), (written, Instant::now()));
            written
        }
    };
    let listed = sa
        .image_pull_secrets
        .as_ref()
        .is_some_and(|l| l.iter().any(|r| r.name == secret_name));
    let attached_at = ctx.lock_attached().get(&key).copied();
    let mut recheck = recheck.filter(|_| fresh.is_some());
    match attached_at.map(|at| WATCH_LAG_GRACE.saturating_sub(at.elapsed())) {
        Some(left) if !listed && !left.is_zero() => {
            recheck = Some(recheck.map_or(left, |r| r.min(left)));
        }
        _ if !listed => {
            attach(ctx, sa, &secret_name).await?;
            ctx.lock_attached().insert(key, Instant::now());
        }
        _ => {}
    }
    ctx.metrics.track(&namespace, &name, written.expires_at);
    let due = refresh_at(written, settings.refresh_threshold);
    let mut wait = Duration::from_secs(due.saturating_sub(now));
    if let Some(left) = recheck {
        wait = wait.min(left);
    }
    Ok(Action::requeue(wait.max(MIN_REQUEUE)))
}

/// A token for the ServiceAccount, then one credential per registry.
async fn obtain<E: Exchange>(
    ctx: &Context<E>,
    sa: &ServiceAccount,
    namespace: &str,
    name: &str,
    now: u64,
) -> Result<Vec<Credential>, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![ctx.settings.audience.clone()]),
            expiration_seconds: i64::try_from(ctx.settings.token_expiration.as_secs()).ok(),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let reply = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(|source| Error::TokenRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })?;
    let token = Token::new(reply.status.and_then(|s| s.token).unwrap_or_default());
    let mut credentials = Vec::with_capacity(ctx.settings.registries.len());
    for registry in &ctx.settings.registries {
        let credential = ctx
            .exchange
            .exchange(&token, &registry.service, now)
            .await
            .map_err(|source| Error::Exchange {
                service: registry.service.clone(),
                source: Box::new(source),
            })?;
        credentials.push(credential);
    }
    tracing::info!(namespace, service_account = name, uid = ?sa.metadata.uid, "credential exchanged");
    Ok(credentials)
}

/// Writes the Secret by server-side apply, taking every field it sets.
async fn apply<E>(
    ctx: &Context<E>,
    namespace: &str,
    name: &str,
    secret: Secret,
) -> Result<(), Error> {
    if let Some(collected) = &ctx.dry_run {
        collected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(secret);
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams::apply(MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&secret))
        .await
        .map(drop)
        .map_err(|source| Error::Write {
            action: "applying Secret",
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })
}

/// Adds our entry to the ServiceAccount's `imagePullSecrets`, keeping the rest.
async fn attach<E>(ctx: &Context<E>, sa: &ServiceAccount, secret_name: &str) -> Result<(), Error> {
    let list = sa.image_pull_secrets.clone().unwrap_or_default();
    if list.iter().any(|r| r.name == secret_name) {
        return Ok(());
    }
    let mut updated = list;
    updated.push(LocalObjectReference {
        name: secret_name.to_owned(),
    });
    patch_pull_secrets(ctx, sa, updated, "adding the pull Secret to ServiceAccount").await
}

/// Deletes our Secret and our `imagePullSecrets` entry; touches nothing else.
async fn remove<E>(
    ctx: &Context<E>,
    sa: &ServiceAccount,
    secret_name: &str,
    existing: Option<&Secret>,
) -> Result<(), Error> {
    let listed = sa
        .image_pull_secrets
        .as_ref()
        .is_some_and(|l| l.iter().any(|r| r.name == secret_name));
    let ours = existing.is_some_and(pull_secret::is_ours);
    if !listed && !ours {
        return Ok(());
    }
    ctx.may_write()?;
    if ctx.dry_run.is_some() {
        return Ok(());
    }
    if listed {
        let kept = sa
            .image_pull_secrets
            .iter()
            .flatten()
            .filter(|r| r.name != secret_name)
            .cloned()
            .collect();
        patch_pull_secrets(
            ctx,
            sa,
            kept,
            "removing the pull Secret from ServiceAccount",
        )
        .await?;
    }
    if let Some(secret) = existing.filter(|s| pull_secret::is_ours(s)) {
        let namespace = sa.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let params = DeleteParams {
            preconditions: secret
                .meta()
                .uid
                .clone()
                .map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
            ..DeleteParams::default()
        };
        match api.delete(secret_name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::Write {
                    action: "deleting Secret",
                    namespace,
                    name: secret_name.to_owned(),
                    source: Box::new(source),
                });
            }
        }
        tracing::info!(namespace = %sa.namespace().unwrap_or_default(), secret = secret_name, "pull Secret removed");
    }
    Ok(())
}

/// A merge patch of `imagePullSecrets`, guarded by the resourceVersion read.
async fn patch_pull_secrets<E>(
    ctx: &Context<E>,
    sa: &ServiceAccount,
    list: Vec<LocalObjectReference>,
    action: &'static str,
) -> Result<(), Error> {
    ctx.may_write()?;
    if ctx.dry_run.is_some() {
        return Ok(());
    }
    let namespace = sa.namespace().unwrap_or_default();
    let name = sa.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "metadata": {"resourceVersion": sa.resource_version()},
        "imagePullSecrets": list,
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|source| Error::Write {
            action,
            namespace,
            name,
            source: Box::new(source),
        })
}

/// A Warning Event on the ServiceAccount, and a log line. Neither carries
/// a token: errors never include one.
async fn report<E>(sa: &ServiceAccount, ctx: &Context<E>, error: &Error) {
    let detail = error_chain(error);
    // A conflict is retried at once from fresher state: not a failed refresh.
    if error.reason() == "conflict" {
        tracing::debug!(
            namespace = %sa.namespace().unwrap_or_default(),
            service_account = %sa.name_any(),
            error = %detail,
            "conflict; retrying"
        );
        return;
    }
    tracing::warn!(
        namespace = %sa.namespace().unwrap_or_default(),
        service_account = %sa.name_any(),
        reason = error.reason(),
        error = %detail,
        "refresh failed"
    );
    let Some(recorder) = &ctx.recorder else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "RefreshFailed".to_owned(),
        note: Some(truncate(&detail, 1024)),
        action: "Refresh".to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &sa.object_ref(&())).await {
        tracing::warn!(error = %error_chain(&e), "could not record an Event");
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_at_half_life_or_before_the_threshold() {
        let w = Written {
            issued_at: 1000,
            expires_at: 4600,
        };
        assert_eq!(refresh_at(w, None), 2800);
        assert_eq!(refresh_at(w, Some(Duration::from_secs(600))), 4000);
        assert_eq!(refresh_at(w, Some(Duration::from_secs(9999))), 0);
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, max, 1.0), FIRST_BACKOFF);
        assert_eq!(backoff(1, max, 0.0), FIRST_BACKOFF / 2);
        assert_eq!(backoff(3, max, 1.0), FIRST_BACKOFF * 4);
        assert_eq!(backoff(40, max, 1.0), max);
        let r = random_fraction();
        assert!((0.0..=1.0).contains(&r));
    }

    #[test]
    fn long_event_notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
