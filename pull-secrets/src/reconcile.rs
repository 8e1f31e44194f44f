//! Reconciling one (namespace, ServiceAccount): idempotent, reading state
//! only from the reflector stores and this replica's memory of what it
//! obtained and wrote.
//!
//! **What it touches.** The Secret is created with a plain create carrying
//! a controller reference to the ServiceAccount, and afterwards changed or
//! deleted only while it carries that reference (or is the very object
//! this replica created): see [`pull_secret::owner`]. A Secret with our
//! name that belongs to someone else is left as it is and reported, before
//! anything is minted for it. An `imagePullSecrets` entry with our name is
//! removed only where it provably is ours: beside our Secret, or where this
//! replica wrote that Secret. ServiceAccounts the config does not name, and
//! entries the controller never wrote, are never touched. Nothing is ever
//! force-applied.
//!
//! **When it refreshes.** From memory: the credentials this replica last
//! obtained, with the lifetime the token server gave them, refreshed at the
//! point [`refresh::refresh_at`] sets (never spinning, whatever the config
//! or the token server say). A Secret whose fields no longer hold exactly
//! that is rewritten (with the remembered credential while it is valid,
//! without asking the token server); one whose data cannot change in place
//! (made `immutable`, or of another type) is deleted with preconditions and
//! created anew. A credential obtained but not yet written (the write
//! failed) is written on the next try, not obtained again. Nothing a
//! namespace user may edit (annotations, labels) decides anything. A
//! replica that starts, or takes over, has no memory: it rewrites each
//! Secret once.
//!
//! **Retries** wait as [`retry`] says, whatever triggers the next
//! reconcile.
//!
//! **The ServiceAccount.** `imagePullSecrets` has no merge key, so
//! server-side apply treats it as one atomic field and a forced apply of our
//! one entry would replace the whole list, dropping entries other people
//! own. Instead the controller writes the list it read, plus or minus its
//! own entry, with a merge patch that carries the `resourceVersion` it read:
//! if anyone changed the ServiceAccount meanwhile, the API answers 409 and
//! the reconcile is retried from the fresher state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::refresh::{self, Clamp, RefreshPoint};
use crate::retry::Retries;
use crate::tokens::Tokens;

/// The shortest wait before a reconcile is run again.
const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// How long this replica trusts its own write over a watch that has not
/// shown it yet.
const WATCH_LAG_GRACE: Duration = Duration::from_secs(10);

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

/// What this replica obtained for one ServiceAccount, and whether it wrote
/// it: the only source of truth about freshness.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// The ServiceAccount it was obtained for: a recreated one is another.
    sa_uid: Option<String>,
    /// The credentials, as the token server issued them.
    credentials: Arc<[Credential]>,
    lifetime: Lifetime,
    /// When to obtain new ones.
    refresh: RefreshPoint,
    /// When this replica last wrote them into the Secret; `None` until a
    /// write succeeded.
    written: Option<Instant>,
    /// The uid of the Secret if this replica created it: proof of ownership
    /// that no one else can forge.
    created: Option<String>,
}

impl Held {
    /// Whether the Secret `existing` holds exactly these credentials.
    fn in_secret(
        &self,
        settings: &Settings,
        sa: &ServiceAccount,
        existing: Option<&Secret>,
    ) -> bool {
        existing.is_some_and(|s| {
            pull_secret::holds(s, &pull_secret::build(settings, sa, &self.credentials), sa)
        })
    }
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
    /// The ServiceAccounts being retried, and until when they wait.
    pub retries: Retries,
    /// What this replica holds per ServiceAccount.
    pub held: Mutex<HashMap<ObjectRef<ServiceAccount>, Held>>,
    /// When this replica last added its entry to each ServiceAccount: the
    /// ServiceAccount watch may not show it yet.
    pub attached: Mutex<HashMap<ObjectRef<ServiceAccount>, Instant>>,
    /// ServiceAccount tokens, reused across retries.
    pub tokens: Tokens,
    /// Whether a clamped refresh point was logged, per kind: once is
    /// enough (the metric counts each).
    clamp_logged: [AtomicBool; 2],
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
            retries: Retries::default(),
            held: Mutex::default(),
            attached: Mutex::default(),
            tokens: Tokens::default(),
            clamp_logged: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }
}

/// How a reconcile ended, when it did not fail.
#[derive(Debug)]
enum Outcome {
    /// Everything is as it should be (until the action).
    Done(Action),
    /// Waiting out a failure's backoff before asking again.
    Waiting(Action),
}

/// Reconciles one ServiceAccount, and records a failure as a Warning Event
/// on it.
pub(crate) async fn reconcile<E: Exchange>(
    sa: Arc<ServiceAccount>,
    ctx: Arc<Context<E>>,
) -> Result<Action, Error> {
    match reconcile_service_account(&sa, &ctx, clock::now()).await {
        Ok(Outcome::Done(action)) => {
            ctx.retries.succeeded(&ObjectRef::from_obj(sa.as_ref()));
            Ok(action)
        }
        // Still failing, as far as the backoff knows.
        Ok(Outcome::Waiting(action)) => Ok(action),
        Err(error @ (Error::NotLeader | Error::StoresClosed)) => Err(error),
        Err(error) => {
            report(&sa, &ctx, &error).await;
            Err(error)
        }
    }
}

/// Counts the failure and waits as [`Retries::failed`] says.
pub(crate) fn error_policy<E: Exchange>(
    sa: Arc<ServiceAccount>,
    error: &Error,
    ctx: Arc<Context<E>>,
) -> Action {
    ctx.metrics.failed(error.reason());
    Action::requeue(ctx.retries.failed(
        ObjectRef::from_obj(sa.as_ref()),
        ctx.settings.max_backoff,
        error.retry_after(),
    ))
}

impl<E> Context<E> {
    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ServiceAccount>, Held>> {
        self.held
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

    /// Drops what is kept for every ServiceAccount `exists` says is gone.
    pub(crate) fn forget_missing(&self, exists: impl Fn(&ObjectRef<ServiceAccount>) -> bool) {
        self.lock_held().retain(|sa, _| exists(sa));
        self.lock_attached().retain(|sa, _| exists(sa));
        self.retries.retain(&exists);
        self.tokens.retain(&exists);
        self.metrics
            .retain(|namespace, name| exists(&ObjectRef::new(name).within(namespace)));
    }

    /// Drops what is kept for `sa` (it left the selection).
    fn forget(&self, sa: &ObjectRef<ServiceAccount>, namespace: &str, name: &str) {
        self.lock_held().remove(sa);
        self.lock_attached().remove(sa);
        self.tokens.forget(sa);
        self.metrics.forget(namespace, name);
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

    /// Counts a refresh point moved later than the config asked, and says
    /// why once per kind.
    fn note_clamp(&self, clamp: Clamp, lifetime: Lifetime) {
        self.metrics.refresh_clamped();
        let kind = match clamp {
            Clamp::Threshold => 0,
            Clamp::ShortLived => 1,
        };
        if self.clamp_logged[kind].swap(true, Ordering::Relaxed) {
            return;
        }
        let lifetime_seconds = lifetime.expires_at.saturating_sub(lifetime.issued_at);
        match clamp {
            Clamp::Threshold => tracing::warn!(
                refresh_threshold = ?self.settings.refresh_threshold,
                lifetime_seconds,
                "refresh_threshold is not shorter than half the lifetime of the token server's \
                 credentials: they are refreshed at half their life instead \
                 (regauth_pull_secrets_refresh_clamped_total counts each)"
            ),
            Clamp::ShortLived => tracing::warn!(
                lifetime_seconds,
                min_refresh_age_seconds = refresh::MIN_REFRESH_AGE.as_secs(),
                "the token server's credentials live so briefly that they are refreshed no \
                 sooner than min_refresh_age_seconds after each exchange \
                 (regauth_pull_secrets_refresh_clamped_total counts each)"
            ),
        }
    }
}

/// When the credential a pull would use from `existing` expires, as far as
/// this replica can tell: what it obtained when the Secret still holds it;
/// otherwise the `exp` claimed by the credential in it (unverified, so
/// never later than what this replica last obtained), and `now` when there
/// is no readable credential at all.
fn served_expiry(
    existing: Option<&Secret>,
    holding: Option<&Held>,
    last: Option<&Held>,
    now: u64,
) -> u64 {
    if let Some(h) = holding {
        return h.lifetime.expires_at;
    }
    let claimed = existing
        .and_then(pull_secret::claimed_expiry)
        .unwrap_or(now);
    last.map_or(claimed, |h| claimed.min(h.lifetime.expires_at))
}

async fn reconcile_service_account<E: Exchange>(
    sa: &ServiceAccount,
    ctx: &Context<E>,
    now: u64,
) -> Result<Outcome, Error> {
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
        .lock_held()
        .get(&key)
        .filter(|h| h.sa_uid == sa.metadata.uid)
        .cloned();
    let owner = pull_secret::owner(
        existing.as_deref(),
        sa,
        last.as_ref().and_then(|h| h.created.as_deref()),
    );
    tracing::debug!(
        namespace,
        service_account = name,
        selected,
        ?owner,
        "reconciling"
    );

    if !selected {
        let wrote_it = last.as_ref().is_some_and(|h| h.written.is_some());
        remove(ctx, sa, &secret_name, existing.as_deref(), owner, wrote_it).await?;
        ctx.forget(&key, &namespace, &name);
        return Ok(Outcome::Done(Action::await_change()));
    }
    if owner == Owner::Someone {
        // Not ours: no credential of ours is served from it, and none is
        // minted for it.
        ctx.metrics.forget(&namespace, &name);
        ctx.metrics.set_conflict(&namespace, &name, true);
        // Reported again once per backoff, not per edit of the
        // ServiceAccount.
        if let Some(left) = ctx.retries.wait_left(&key) {
            return Ok(Outcome::Waiting(Action::requeue(left.max(MIN_REQUEUE))));
        }
        return Err(Error::Foreign {
            namespace,
            name: secret_name,
        });
    }
    ctx.metrics.set_conflict(&namespace, &name, false);

    // The credentials to serve: those held, until their refresh point; past
    // it, still those while valid if the Secret lost them (a repair needs
    // no exchange, so a token server outage cannot stop it; the refresh
    // follows on the next round); else new ones.
    let in_secret = last
        .as_ref()
        .is_some_and(|h| h.in_secret(settings, sa, existing.as_deref()));
    let reusable = last
        .as_ref()
        .filter(|h| now < h.refresh.at || (now < h.lifetime.expires_at && !in_secret));
    let (held, holding) = match reusable {
        Some(h) => (h.clone(), in_secret),
        None => {
            ctx.may_write()?;
            if let Some(left) = ctx.retries.wait_left(&key) {
                let holding = last.as_ref().filter(|_| in_secret);
                ctx.metrics.track(
                    &namespace,
                    &name,
                    served_expiry(existing.as_deref(), holding, last.as_ref(), now),
                );
                return Ok(Outcome::Waiting(Action::requeue(left.max(MIN_REQUEUE))));
            }
            let credentials = obtain(ctx, sa, &namespace, &name, now).await?;
            let lifetime = Lifetime::of(&credentials);
            let refresh = refresh::refresh_at(lifetime, settings.refresh_threshold, now);
            if let Some(clamp) = refresh.clamped {
                ctx.note_clamp(clamp, lifetime);
            }
            let held = Held {
                sa_uid: sa.metadata.uid.clone(),
                credentials,
                lifetime,
                refresh,
                written: None,
                created: last.as_ref().and_then(|h| h.created.clone()),
            };
            // Kept before the write: a failed write costs no new exchange.
            ctx.lock_held().insert(key.clone(), held.clone());
            let holding = held.in_secret(settings, sa, existing.as_deref());
            (held, holding)
        }
    };
    ctx.metrics.track(
        &namespace,
        &name,
        served_expiry(
            existing.as_deref(),
            holding.then_some(&held),
            Some(&held),
            now,
        ),
    );
    // Our own write counts until the watch shows it; past the grace a
    // Secret that still differs (or is missing) is rewritten.
    let lagging = held
        .written
        .map(|at| WATCH_LAG_GRACE.saturating_sub(at.elapsed()))
        .filter(|left| !holding && !left.is_zero());
    let mut recheck = lagging;
    if !holding && lagging.is_none() {
        if now < held.lifetime.expires_at {
            ctx.may_write()?;
            let desired = pull_secret::build(settings, sa, &held.credentials);
            let stored = write(ctx, sa, existing.as_deref(), desired).await?;
            if held.written.is_none() {
                ctx.metrics.refreshed();
            }
            let mut held_now = ctx.lock_held();
            if let Some(h) = held_now.get_mut(&key) {
                h.written = Some(Instant::now());
                if let Stored::Created(uid) = stored {
                    h.created = uid;
                }
            }
            drop(held_now);
            ctx.metrics
                .track(&namespace, &name, held.lifetime.expires_at);
        } else {
            // Expired before its refresh point (the token server's
            // credentials live less than the least refresh age): nothing
            // valid to write until the next exchange.
            recheck = Some(Duration::from_secs(held.refresh.at.saturating_sub(now)));
        }
    }
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
    let mut wait = Duration::from_secs(held.refresh.at.saturating_sub(now));
    if let Some(left) = recheck {
        wait = wait.min(left);
    }
    Ok(Outcome::Done(Action::requeue(wait.max(MIN_REQUEUE))))
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

/// How [`write`] stored the Secret.
#[derive(Debug)]
enum Stored {
    /// Created by this replica, with this uid.
    Created(Option<String>),
    /// Patched in place.
    Patched,
    /// Nothing written (`--dry-run`).
    DryRun,
}

/// Writes `desired`: a create when there is no Secret; else a merge patch
/// of our fields guarded by the `resourceVersion` read; or, when the
/// Secret's data cannot change in place (another type, or made
/// `immutable`), a delete with uid and `resourceVersion` preconditions and a
/// create.
async fn write<E>(
    ctx: &Context<E>,
    sa: &ServiceAccount,
    existing: Option<&Secret>,
    desired: Secret,
) -> Result<Stored, Error> {
    if let Some(collected) = &ctx.dry_run {
        collected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(desired);
        return Ok(Stored::DryRun);
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
        Some(current) if pull_secret::changes_in_place(current, &desired) => api
            .patch(
                &name,
                &patch_params(),
                &Patch::Merge(pull_secret::update_patch(current, &desired)),
            )
            .await
            .map(|_| Stored::Patched)
            .map_err(|source| failed("updating Secret", source)),
        Some(current) => {
            delete(&api, current)
                .await
                .map_err(|source| failed("deleting Secret to create it anew", source))?;
            tracing::info!(
                namespace,
                secret = name,
                "pull Secret deleted to be created anew: its data cannot change in place"
            );
            create(&api, &desired)
                .await
                .map_err(|source| failed("creating Secret anew", source))
        }
        // A 409 means the name was taken after the cache was read: the
        // next reconcile sees the Secret and judges whose it is.
        None => create(&api, &desired)
            .await
            .map_err(|source| failed("creating Secret", source)),
    }
}

async fn create(api: &Api<Secret>, desired: &Secret) -> Result<Stored, kube::Error> {
    let created = api.create(&post_params(), desired).await?;
    Ok(Stored::Created(created.metadata.uid))
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

/// Removes what is provably ours: our Secret, and the entry naming it, but
/// the entry only beside our Secret or where this replica wrote that
/// Secret itself (`wrote_it`, though it is gone now). An entry with our
/// name anywhere else may be anyone's (the Secret they will create, or
/// theirs already): it is left, as is every ServiceAccount the config does
/// not name, whose Secret the controller never watches.
pub(crate) async fn remove<E>(
    ctx: &Context<E>,
    sa: &ServiceAccount,
    secret_name: &str,
    existing: Option<&Secret>,
    owner: Owner,
    wrote_it: bool,
) -> Result<(), Error> {
    let listed = sa
        .image_pull_secrets
        .as_ref()
        .is_some_and(|l| l.iter().any(|r| r.name == secret_name));
    let detach = listed && (owner == Owner::Us || (owner == Owner::Absent && wrote_it));
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
