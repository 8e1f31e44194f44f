//! Reconciling one (namespace, ServiceAccount): idempotent, reading state
//! only from the reflector stores and this replica's memory of what it
//! wrote.
//!
//! **What it touches.** The Secret is created with a plain create (a 409
//! means the name is taken) carrying a controller reference to the
//! ServiceAccount, and afterwards changed or deleted only while it carries
//! that reference (or is the very object this replica created): see
//! [`pull_secret::owner`]. A Secret with our name that belongs to someone
//! else is left as it is and reported. Nothing is ever force-applied.
//!
//! **When it refreshes.** From memory: the credentials this replica last
//! wrote, with the lifetime the token server gave them. A Secret whose
//! fields no longer hold exactly that is rewritten (with the remembered
//! credential while it is fresh, without asking the token server). Nothing
//! a namespace user may edit (annotations, labels) decides anything. A
//! replica that starts, or takes over, has no memory: it rewrites each
//! Secret once.
//!
//! **The ServiceAccount.** `imagePullSecrets` has no merge key, so
//! server-side apply treats it as one atomic field and a forced apply of our
//! one entry would replace the whole list, dropping entries other people
//! own. Instead the controller writes the list it read, plus or minus its
//! own entry, with a merge patch that carries the `resourceVersion` it read:
//! if anyone changed the ServiceAccount meanwhile, the API answers 409 and
//! the reconcile is retried from the fresher state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{LocalObjectReference, Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::caches::{Caches, Readiness, SecretCaches};
use crate::clock;
use crate::config::{Scope, Settings};
use crate::events::Events;
use crate::exchange::{Credential, Exchange, ExchangeError};
use crate::leader::{Leadership, error_chain};
use crate::metrics::Metrics;
use crate::pull_secret::{self, Lifetime, MANAGER, Owner};
use crate::tokens::Tokens;

/// The shortest wait before a refresh, so a credential with a tiny lifetime
/// cannot spin the controller.
const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// How long this replica trusts its own write over a watch that has not
/// shown it yet.
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
    /// A Secret with our name exists that the controller cannot prove it
    /// wrote: it is left alone.
    #[error(
        "Secret {namespace}/{name} exists and was not written by this controller \
         (it has no controller reference to the ServiceAccount); it is left as it is"
    )]
    Foreign { namespace: String, name: String },
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
            Error::Foreign { .. } => "foreign_secret",
            Error::Write { source, .. } if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 409) => {
                "conflict"
            }
            Error::Write { .. } => "api_write",
        }
    }

    /// How long the token server asked us to wait, if it did.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Exchange { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

/// What this replica last wrote for one ServiceAccount.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// The ServiceAccount it was written for: a recreated one is another.
    sa_uid: Option<String>,
    /// The credentials, as the token server issued them.
    credentials: Arc<[Credential]>,
    lifetime: Lifetime,
    /// The uid of the Secret if this replica created it: proof of ownership
    /// that no one else can forge.
    created: Option<String>,
    /// When it was written, for the watch-lag grace.
    at: Instant,
}

/// Everything a reconcile needs.
pub(crate) struct Context<E> {
    pub settings: Settings,
    pub client: kube::Client,
    /// Namespaces, when the controller may read them (cluster scope).
    pub namespaces: Option<Store<Namespace>>,
    pub secrets: SecretCaches,
    /// When the caches of each namespace (or of the cluster) are complete.
    pub caches_ready: Readiness,
    pub exchange: E,
    pub leadership: Arc<Leadership>,
    pub metrics: Arc<Metrics>,
    pub events: Option<Events>,
    /// `--dry-run`: Secrets that would be written are collected here, and
    /// nothing is written.
    pub dry_run: Option<Mutex<Vec<Secret>>>,
    /// Consecutive failures per ServiceAccount, for the backoff.
    pub failures: Mutex<HashMap<ObjectRef<ServiceAccount>, u32>>,
    /// What this replica last wrote per ServiceAccount: the only source of
    /// truth about freshness.
    pub written: Mutex<HashMap<ObjectRef<ServiceAccount>, Written>>,
    /// When this replica last added its entry to each ServiceAccount: the
    /// ServiceAccount watch may not show it yet.
    pub attached: Mutex<HashMap<ObjectRef<ServiceAccount>, Instant>>,
    /// ServiceAccount tokens, reused across retries.
    pub tokens: Tokens,
}

impl<E> Context<E> {
    /// A context over `caches`; Events, dry run and the rest are off.
    pub(crate) fn new(
        settings: Settings,
        client: kube::Client,
        caches: Caches,
        exchange: E,
        leadership: Arc<Leadership>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings,
            client,
            namespaces: caches.namespaces,
            secrets: caches.secrets,
            caches_ready: caches.ready,
            exchange,
            leadership,
            metrics,
            events: None,
            dry_run: None,
            failures: Mutex::default(),
            written: Mutex::default(),
            attached: Mutex::default(),
            tokens: Tokens::default(),
        }
    }
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

/// Retries with a jittered, doubling backoff per ServiceAccount, and never
/// sooner than the token server's `Retry-After` (up to `max_backoff`).
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
    Action::requeue(next_try(
        attempts,
        ctx.settings.max_backoff,
        random_fraction(),
        error.retry_after(),
    ))
}

/// The wait before try `attempts + 1`: the jittered backoff, but never
/// shorter than what the token server asked for (`Retry-After`), up to `max`.
pub(crate) fn next_try(
    attempts: u32,
    max: Duration,
    fraction: f64,
    asked: Option<Duration>,
) -> Duration {
    let wait = backoff(attempts, max, fraction);
    wait.max(asked.unwrap_or_default().min(max))
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
    fn lock_written(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ServiceAccount>, Written>> {
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

    /// Drops what is kept for every ServiceAccount `exists` says is gone.
    pub(crate) fn forget_missing(&self, exists: impl Fn(&ObjectRef<ServiceAccount>) -> bool) {
        self.lock_written().retain(|sa, _| exists(sa));
        self.lock_attached().retain(|sa, _| exists(sa));
        self.lock_failures().retain(|sa, _| exists(sa));
        self.tokens.retain(&exists);
        self.metrics
            .retain(|namespace, name| exists(&ObjectRef::new(name).within(namespace)));
    }

    fn may_write(&self) -> Result<(), Error> {
        if self.dry_run.is_some() || self.leadership.is_leading() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Whether `namespace` is selected, as far as this controller may know.
    fn selects_namespace(&self, namespace: &str) -> bool {
        match (&self.namespaces, self.settings.scope) {
            (Some(store), Scope::Cluster) => store
                .get(&ObjectRef::new(namespace))
                .is_some_and(|ns| self.settings.namespaces.selects(&ns)),
            // Without namespace reads, the configured names are the selection.
            _ => self.settings.namespaces.selects_name(namespace),
        }
    }
}

/// When a written credential should be refreshed: `threshold` before it
/// expires, or at half its life.
pub(crate) fn refresh_at(lifetime: Lifetime, threshold: Option<Duration>) -> u64 {
    match threshold {
        Some(t) => lifetime.expires_at.saturating_sub(t.as_secs()),
        None => lifetime
            .issued_at
            .saturating_add(lifetime.expires_at.saturating_sub(lifetime.issued_at) / 2),
    }
}

/// When the credential a pull would use from `existing` expires, as far as
/// this replica can tell: what it wrote when the Secret still holds it;
/// otherwise the `exp` claimed by the credential in it (unverified, so
/// never later than what this replica last wrote), and `now` when there is
/// no readable credential at all.
fn served_expiry(
    existing: Option<&Secret>,
    holding: Option<&Written>,
    last: Option<&Written>,
    now: u64,
) -> u64 {
    if let Some(w) = holding {
        return w.lifetime.expires_at;
    }
    let claimed = existing
        .and_then(pull_secret::claimed_expiry)
        .unwrap_or(now);
    last.map_or(claimed, |w| claimed.min(w.lifetime.expires_at))
}

async fn reconcile_service_account<E: Exchange>(
    sa: &ServiceAccount,
    ctx: &Context<E>,
    now: u64,
) -> Result<Action, Error> {
    let namespace = sa.namespace().unwrap_or_default();
    if !ctx.caches_ready.wait(&namespace).await {
        return Err(Error::StoresClosed);
    }
    let name = sa.name_any();
    let settings = &ctx.settings;
    let secret_name = pull_secret::secret_name(&settings.secret_name, &name);
    let selected = ctx.selects_namespace(&namespace)
        && settings.service_accounts.selects(&name)
        && sa.meta().deletion_timestamp.is_none();
    let existing = ctx.secrets.get(&namespace, &secret_name);
    let key = ObjectRef::from_obj(sa);
    // Memory of another incarnation of this ServiceAccount is void.
    let last = ctx
        .lock_written()
        .get(&key)
        .filter(|w| w.sa_uid == sa.metadata.uid)
        .cloned();
    let owner = pull_secret::owner(
        existing.as_deref(),
        sa,
        last.as_ref().and_then(|w| w.created.as_deref()),
    );
    tracing::debug!(
        namespace,
        service_account = name,
        selected,
        ?owner,
        "reconciling"
    );

    if !selected {
        ctx.lock_written().remove(&key);
        ctx.lock_attached().remove(&key);
        ctx.tokens.forget(&key);
        ctx.metrics.forget(&namespace, &name);
        remove(ctx, sa, &secret_name, existing.as_deref(), owner).await?;
        return Ok(Action::await_change());
    }
    if owner == Owner::Someone {
        // Not ours: no credential of ours is served from it.
        ctx.metrics.forget(&namespace, &name);
        ctx.metrics.set_conflict(&namespace, &name, true);
        return Err(Error::Foreign {
            namespace,
            name: secret_name,
        });
    }
    ctx.metrics.set_conflict(&namespace, &name, false);

    // What this replica wrote, while it is still valid; whether the Secret
    // still holds exactly that; and whether it is not yet due.
    let unexpired = last.as_ref().filter(|w| now < w.lifetime.expires_at);
    let holding = unexpired.filter(|w| {
        existing.as_deref().is_some_and(|s| {
            pull_secret::holds(s, &pull_secret::build(settings, sa, &w.credentials), sa)
        })
    });
    let fresh = unexpired.filter(|w| now < refresh_at(w.lifetime, settings.refresh_threshold));
    ctx.metrics.track(
        &namespace,
        &name,
        served_expiry(existing.as_deref(), holding, last.as_ref(), now),
    );
    // Our own write counts until the watch shows it; past the grace a
    // Secret that still differs (or is missing) is rewritten.
    let lagging = unexpired.filter(|_| holding.is_none()).and_then(|w| {
        let left = WATCH_LAG_GRACE.saturating_sub(w.at.elapsed());
        (!left.is_zero()).then_some((w.lifetime, left))
    });
    let (lifetime, mut recheck) = match (holding.and(fresh), lagging) {
        (Some(w), _) => (w.lifetime, None),
        (None, Some((lifetime, left))) => (lifetime, Some(left)),
        (None, None) => {
            ctx.may_write()?;
            // The type cannot change in place (a Secret with our reference
            // but another type): delete ours; the deletion triggers a
            // reconcile that creates it anew.
            if let Some(current) = existing
                .as_deref()
                .filter(|s| s.type_.as_deref() != Some(pull_secret::DOCKER_CONFIG_JSON))
            {
                if ctx.dry_run.is_none() {
                    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
                    delete(&api, current).await.map_err(|source| Error::Write {
                        action: "deleting Secret of the wrong type",
                        namespace: namespace.clone(),
                        name: secret_name.clone(),
                        source: Box::new(source),
                    })?;
                }
                return Ok(Action::requeue(MIN_REQUEUE));
            }
            // A Secret that no longer holds what was written is repaired
            // with that credential while it is valid, with no exchange, so
            // a token server outage cannot stop the repair; a due one is
            // refreshed on the next round. Only a refresh costs a
            // TokenRequest and an exchange.
            let (credentials, refreshed) = match (holding, unexpired) {
                (None, Some(w)) => (Arc::clone(&w.credentials), false),
                _ => (obtain(ctx, sa, &namespace, &name, now).await?, true),
            };
            let desired = pull_secret::build(settings, sa, &credentials);
            let stored = write(ctx, sa, existing.as_deref(), desired).await?;
            let lifetime = Lifetime::of(&credentials);
            if refreshed {
                ctx.metrics.refreshed();
            }
            let created = match (&stored, existing.as_deref()) {
                (Some(s), None) => s.metadata.uid.clone(),
                _ => last.as_ref().and_then(|w| w.created.clone()),
            };
            ctx.lock_written().insert(
                key.clone(),
                Written {
                    sa_uid: sa.metadata.uid.clone(),
                    credentials,
                    lifetime,
                    created,
                    at: Instant::now(),
                },
            );
            ctx.metrics.track(&namespace, &name, lifetime.expires_at);
            (lifetime, None)
        }
    };
    let listed = sa
        .image_pull_secrets
        .as_ref()
        .is_some_and(|l| l.iter().any(|r| r.name == secret_name));
    let attached_at = ctx.lock_attached().get(&key).copied();
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
    let due = refresh_at(lifetime, settings.refresh_threshold);
    let mut wait = Duration::from_secs(due.saturating_sub(now));
    if let Some(left) = recheck {
        wait = wait.min(left);
    }
    Ok(Action::requeue(wait.max(MIN_REQUEUE)))
}

/// A token for the ServiceAccount (reused while fresh), then one
/// credential per registry.
async fn obtain<E: Exchange>(
    ctx: &Context<E>,
    sa: &ServiceAccount,
    namespace: &str,
    name: &str,
    now: u64,
) -> Result<Arc<[Credential]>, Error> {
    let token = ctx
        .tokens
        .get(&ctx.client, &ctx.settings, sa, now)
        .await
        .map_err(|source| Error::TokenRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })?;
    let mut credentials = Vec::with_capacity(ctx.settings.registries.len());
    for registry in &ctx.settings.registries {
        let credential = match ctx.exchange.exchange(&token, &registry.service, now).await {
            Ok(c) => c,
            Err(source) => {
                // A refused token is not tried again.
                if matches!(source, ExchangeError::Refused { .. }) {
                    ctx.tokens.forget(&ObjectRef::from_obj(sa));
                }
                return Err(Error::Exchange {
                    service: registry.service.clone(),
                    source: Box::new(source),
                });
            }
        };
        credentials.push(credential);
    }
    tracing::info!(namespace, service_account = name, uid = ?sa.metadata.uid, "credential exchanged");
    Ok(credentials.into())
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PostParams::default()
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Writes `desired`: a create when there is no Secret, else a merge patch
/// of our fields guarded by the `resourceVersion` read. Returns the Secret
/// as stored (`None` in a dry run).
async fn write<E>(
    ctx: &Context<E>,
    sa: &ServiceAccount,
    existing: Option<&Secret>,
    desired: Secret,
) -> Result<Option<Secret>, Error> {
    if let Some(collected) = &ctx.dry_run {
        collected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(desired);
        return Ok(None);
    }
    let namespace = sa.namespace().unwrap_or_default();
    let name = desired.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let failed = |action, source| Error::Write {
        action,
        namespace: namespace.clone(),
        name: name.clone(),
        source: Box::new(source),
    };
    match existing {
        None => match api.create(&post_params(), &desired).await {
            Ok(created) => Ok(Some(created)),
            // Taken by a Secret our caches do not show as ours.
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                Err(Error::Foreign {
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
            }
            Err(source) => Err(failed("creating Secret", source)),
        },
        Some(current) => api
            .patch(
                &name,
                &patch_params(),
                &Patch::Merge(pull_secret::update_patch(current, &desired)),
            )
            .await
            .map(Some)
            .map_err(|source| failed("updating Secret", source)),
    }
}

/// Deletes `secret` only if it is still the object read (uid and
/// `resourceVersion` as preconditions).
async fn delete(api: &Api<Secret>, secret: &Secret) -> Result<(), kube::Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&secret.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
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

/// Removes what is ours: our entry (unless the Secret it names belongs to
/// someone else, who may have listed it), and our Secret.
pub(crate) async fn remove<E>(
    ctx: &Context<E>,
    sa: &ServiceAccount,
    secret_name: &str,
    existing: Option<&Secret>,
    owner: Owner,
) -> Result<(), Error> {
    let listed = sa
        .image_pull_secrets
        .as_ref()
        .is_some_and(|l| l.iter().any(|r| r.name == secret_name));
    let detach = listed && owner != Owner::Someone;
    let ours = existing.filter(|_| owner == Owner::Us);
    if !detach && ours.is_none() {
        return Ok(());
    }
    ctx.may_write()?;
    if ctx.dry_run.is_some() {
        return Ok(());
    }
    if detach {
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
    if let Some(secret) = ours {
        let namespace = sa.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        delete(&api, secret).await.map_err(|source| Error::Write {
            action: "deleting Secret",
            namespace: namespace.clone(),
            name: secret_name.to_owned(),
            source: Box::new(source),
        })?;
        tracing::info!(namespace, secret = secret_name, "pull Secret removed");
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
    api.patch(&name, &patch_params(), &Patch::Merge(&patch))
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
    let (reason, action) = match error {
        Error::Foreign { .. } => ("SecretConflict", "Write"),
        _ => ("RefreshFailed", "Refresh"),
    };
    tracing::warn!(
        namespace = %sa.namespace().unwrap_or_default(),
        service_account = %sa.name_any(),
        reason = error.reason(),
        error = %detail,
        "{}",
        if reason == "SecretConflict" { "pull Secret name taken" } else { "refresh failed" }
    );
    let Some(events) = &ctx.events else {
        return;
    };
    // The note starts with the kind of failure, so a new kind gets an
    // Event of its own that names it.
    let note = format!("{}: {detail}", error.reason());
    if let Err(e) = events
        .warn(sa, reason, action, &note, clock::timestamp())
        .await
    {
        tracing::warn!(error = %error_chain(&e), "could not record an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_at_half_life_or_before_the_threshold() {
        let w = Lifetime {
            issued_at: 1000,
            expires_at: 4600,
        };
        assert_eq!(refresh_at(w, None), 2800);
        assert_eq!(refresh_at(w, Some(Duration::from_secs(600))), 4000);
        assert_eq!(refresh_at(w, Some(Duration::from_secs(9999))), 0);
        let huge = Lifetime {
            issued_at: u64::MAX - 1,
            expires_at: u64::MAX,
        };
        assert_eq!(refresh_at(huge, None), u64::MAX - 1);
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
    fn retry_after_is_honoured_up_to_the_longest_backoff() {
        let max = Duration::from_secs(60);
        let asked = Some(Duration::from_secs(7));
        assert_eq!(next_try(1, max, 1.0, asked), Duration::from_secs(7));
        assert_eq!(next_try(1, max, 1.0, None), FIRST_BACKOFF);
        // A longer backoff wins over a short Retry-After.
        assert_eq!(next_try(20, max, 1.0, asked), max);
        // A huge Retry-After is held to max_backoff.
        assert_eq!(
            next_try(1, max, 0.0, Some(Duration::from_secs(86_400))),
            max
        );
    }
}
