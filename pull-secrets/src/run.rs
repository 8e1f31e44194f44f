//! The three ways the controller runs: continuously (with leader
//! election), once (`--once`, optionally `--dry-run`), and `--cleanup`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};

use crate::caches::{self, Caches, Readiness, SecretCaches, SecretSelector};
use crate::config::{Scope, Settings};
use crate::events::Events;
use crate::exchange::Exchange;
use crate::leader::{self, Leadership, error_chain};
use crate::metrics::Metrics;
use crate::pull_secret::{self, Owner};
use crate::reconcile::{self, Context};

/// How many ServiceAccounts are reconciled at once.
const CONCURRENCY: u16 = 8;

/// Attempts at removing our entry from a ServiceAccount that keeps changing.
const CLEANUP_ATTEMPTS: usize = 5;

/// Why a run failed as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("listing {what} {} failed", where_(.namespace.as_deref()))]
    List {
        what: &'static str,
        /// `None`: across the cluster.
        namespace: Option<String>,
        #[source]
        source: kube::Error,
    },
    #[error("{failed} of {total} ServiceAccounts failed")]
    Partial { failed: usize, total: usize },
}

fn where_(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "across the cluster".to_owned(),
    }
}

/// Shared by the continuous run and the operations endpoints.
#[derive(Debug)]
pub(crate) struct Health {
    /// Set once the API answered.
    pub ready: AtomicBool,
    pub metrics: Arc<Metrics>,
}

/// Runs until `shutdown` resolves: the lease loop, and the controller
/// while this replica leads.
pub(crate) async fn continuously<E: Exchange + Clone>(
    settings: Settings,
    client: kube::Client,
    exchange: E,
    identity: String,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let election = &settings.leader_election;
    let lease_namespace = election
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_namespace);
    let leadership = if election.enabled {
        let leadership = Arc::new(Leadership::new());
        tokio::spawn(leader::run(
            leases.clone(),
            identity.clone(),
            election.clone(),
            Arc::clone(&leadership),
            Arc::clone(&health.metrics),
        ));
        leadership
    } else {
        health.metrics.set_leader(true);
        Arc::new(Leadership::always())
    };
    // Ready once the API answers (`/version` needs no grant); the
    // controller's own caches fill later.
    match client.apiserver_version().await {
        Ok(_) => health.ready.store(true, Ordering::SeqCst),
        Err(e) => tracing::warn!(error = %error_chain(&e), "the Kubernetes API did not answer"),
    }
    loop {
        tokio::select! {
            () = leadership.acquired() => {}
            () = &mut shutdown => break,
        }
        health.ready.store(true, Ordering::SeqCst);
        let task = tokio::spawn(control(
            settings.clone(),
            client.clone(),
            exchange.clone(),
            identity.clone(),
            Arc::clone(&leadership),
            Arc::clone(&health.metrics),
        ));
        tokio::select! {
            () = leadership.lost() => {
                // Stop at once: nothing more is written by this replica.
                task.abort();
                tracing::warn!("stopped the controller: this replica no longer leads");
            }
            () = &mut shutdown => {
                task.abort();
                break;
            }
        }
    }
    if election.enabled {
        leader::release(&leases, &identity, election).await;
    }
}

/// A watch of Secrets through a reflector writing `store`'s cache.
fn secret_watch(
    client: &kube::Client,
    scope: Option<&str>,
    selector: &SecretSelector,
) -> (
    Store<Secret>,
    BoxStream<'static, Result<Secret, watcher::Error>>,
) {
    let (store, writer) = reflector::store::<Secret>();
    let events = reflector(
        writer,
        watcher(
            caches::api::<Secret>(client, scope),
            selector.watch_config(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .boxed();
    (store, events)
}

/// The controller: ServiceAccounts are the reconciled objects; Secrets with
/// our names and namespaces (by mapping to their ServiceAccounts) trigger
/// them too. In the namespaced scope there is one controller per namespace,
/// each watching only inside it.
async fn control<E: Exchange>(
    settings: Settings,
    client: kube::Client,
    exchange: E,
    identity: String,
    leadership: Arc<Leadership>,
    metrics: Arc<Metrics>,
) {
    let selectors = SecretSelector::all(&settings);
    let (namespaces, namespace_events) = match settings.scope {
        Scope::Cluster => {
            let config = match settings.namespaces.label_selector() {
                Some(selector) => watcher::Config::default().labels(selector),
                None => watcher::Config::default(),
            };
            let (store, writer) = reflector::store::<Namespace>();
            let events = reflector(
                writer,
                watcher(Api::<Namespace>::all(client.clone()), config),
            )
            .default_backoff()
            .touched_objects();
            (Some(store), Some(events))
        }
        Scope::Namespaced => (None, None),
    };
    let mut secret_stores = Vec::new();
    let mut controllers = Vec::new();
    let mut readiness = Readiness::default();
    for scope in caches::scopes(&settings) {
        let mut events = Vec::new();
        let mut stores = Vec::new();
        for selector in &selectors {
            let (store, stream) = secret_watch(&client, scope.as_deref(), selector);
            stores.push(store);
            events.push(stream);
        }
        // One waiter per scope, which then tells every reconcile there.
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        readiness.insert(scope.clone(), ready);
        let (namespaces, scoped) = (namespaces.clone(), SecretCaches::new(stores.clone()));
        tokio::spawn(async move {
            let namespaces_ready = match &namespaces {
                Some(store) => store.wait_until_ready().await.is_ok(),
                None => true,
            };
            if namespaces_ready && scoped.wait_until_ready().await {
                let _ = ready_tx.send(true);
            }
        });
        secret_stores.extend(stores);
        let controller = Controller::new(
            caches::api::<ServiceAccount>(&client, scope.as_deref()),
            watcher::Config::default(),
        )
        .with_config(controller::Config::default().concurrency(CONCURRENCY));
        controllers.push((controller, futures_util::stream::select_all(events)));
    }
    let caches = Caches {
        namespaces,
        secrets: SecretCaches::new(secret_stores),
        ready: readiness,
    };
    let mut context = Context::new(
        settings,
        client.clone(),
        caches,
        exchange,
        leadership,
        metrics,
    );
    context.events = Some(Events::new(client, &identity));
    let ctx = Arc::new(context);
    let mut namespace_events = namespace_events;
    let service_account_stores: Vec<(Option<String>, Store<ServiceAccount>)> =
        caches::scopes(&ctx.settings)
            .into_iter()
            .zip(controllers.iter().map(|(c, _)| c.store()))
            .collect();
    let runs = controllers.into_iter().map(|(controller, secret_events)| {
        let service_accounts = controller.store();
        let by_secret = {
            let settings = ctx.settings.clone();
            move |secret: Secret| {
                let namespace = secret.namespace().unwrap_or_default();
                caches::service_accounts_for(&settings, &namespace, &secret.name_any())
            }
        };
        // A resync reads only the caches unless something is due, so it
        // costs no API requests.
        let every = ctx.settings.resync_interval;
        let resync = futures_util::stream::unfold((), move |()| async move {
            tokio::time::sleep(every).await;
            Some(((), ()))
        });
        let mut controller = controller
            .reconcile_all_on(resync)
            .watches_stream(secret_events, by_secret);
        if let Some(events) = namespace_events.take() {
            controller = controller.watches_stream(events, move |namespace: Namespace| {
                in_namespace(&service_accounts, &namespace.name_any())
            });
        }
        controller
            .run(
                reconcile::reconcile,
                reconcile::error_policy,
                Arc::clone(&ctx),
            )
            .boxed()
    });
    let controlling = futures_util::stream::select_all(runs).for_each(|result| async move {
        match result {
            // A list or watch failed (it is retried with backoff): say so
            // loudly, as a missing grant shows up only here.
            Err(controller::Error::QueueError(error)) => {
                tracing::warn!(error = %error_chain(&error), "listing or watching failed; retrying");
            }
            Err(error) => {
                tracing::debug!(error = %error_chain(&error), "reconcile not done");
            }
            Ok(_) => {}
        }
    });
    tokio::select! {
        () = controlling => {}
        () = forget_deleted(&ctx, &service_account_stores) => {}
    }
}

/// A deleted ServiceAccount is never reconciled again, so what this replica
/// keeps for it (memory, token, metrics) is dropped here, once per resync:
/// otherwise a deleted namespace's expiry would stay in the expiry metric
/// and, once past, raise a false alarm. Only the stores of `stores` (per
/// scope) that have filled judge: one not filled yet (a namespace the
/// controller may not read, say) would make everything in it look deleted.
async fn forget_deleted<E>(ctx: &Context<E>, stores: &[(Option<String>, Store<ServiceAccount>)]) {
    use futures_util::FutureExt as _;
    loop {
        tokio::time::sleep(ctx.settings.resync_interval).await;
        let filled: Vec<&(Option<String>, Store<ServiceAccount>)> = stores
            .iter()
            .filter(|(_, store)| {
                store
                    .wait_until_ready()
                    .now_or_never()
                    .is_some_and(|ready| ready.is_ok())
            })
            .collect();
        ctx.forget_missing(|sa| {
            let mut covering = filled
                .iter()
                .filter(|(scope, _)| scope.is_none() || scope.as_deref() == sa.namespace.as_deref())
                .peekable();
            // Unknown (no filled store covers it) is kept.
            covering.peek().is_none() || covering.any(|(_, store)| store.get(sa).is_some())
        });
    }
}

fn in_namespace(store: &Store<ServiceAccount>, namespace: &str) -> Vec<ObjectRef<ServiceAccount>> {
    store
        .state()
        .iter()
        .filter(|sa| sa.namespace().as_deref() == Some(namespace))
        .map(|sa| ObjectRef::from_obj(sa.as_ref()))
        .collect()
}

/// What a one-shot run reads first: namespaces (cluster scope only), our
/// Secrets and the ServiceAccounts, listed within the controller's scope.
struct Snapshot {
    caches: Caches,
    service_accounts: Vec<ServiceAccount>,
}

async fn snapshot(settings: &Settings, client: &kube::Client) -> Result<Snapshot, RunError> {
    let namespaces = match settings.scope {
        Scope::Cluster => {
            let mut params = ListParams::default();
            if let Some(selector) = settings.namespaces.label_selector() {
                params = params.labels(selector);
            }
            let items = list(
                &Api::<Namespace>::all(client.clone()),
                &params,
                "namespaces",
                None,
            )
            .await?;
            Some(caches::filled(items))
        }
        Scope::Namespaced => None,
    };
    let mut secrets = Vec::new();
    let mut service_accounts = Vec::new();
    for scope in caches::scopes(settings) {
        for selector in SecretSelector::all(settings) {
            let api = caches::api::<Secret>(client, scope.as_deref());
            secrets.extend(list(&api, &selector.list_params(), "Secrets", scope.as_deref()).await?);
        }
        let api = caches::api::<ServiceAccount>(client, scope.as_deref());
        service_accounts.extend(
            list(
                &api,
                &ListParams::default(),
                "ServiceAccounts",
                scope.as_deref(),
            )
            .await?,
        );
    }
    Ok(Snapshot {
        caches: Caches {
            namespaces,
            secrets: SecretCaches::filled(secrets),
            ready: Readiness::now(),
        },
        service_accounts,
    })
}

/// One pass over every ServiceAccount, then return. With `dry_run`, nothing
/// is written and the Secrets that would be written are returned.
pub(crate) async fn once<E: Exchange>(
    settings: Settings,
    client: kube::Client,
    exchange: E,
    dry_run: bool,
) -> Result<Vec<Secret>, RunError> {
    let snapshot = snapshot(&settings, &client).await?;
    let mut context = Context::new(
        settings,
        client,
        snapshot.caches,
        exchange,
        Arc::new(Leadership::always()),
        Arc::new(Metrics::default()),
    );
    context.dry_run = dry_run.then(|| Mutex::new(Vec::new()));
    let ctx = Arc::new(context);
    let total = snapshot.service_accounts.len();
    let mut failed = 0;
    for sa in snapshot.service_accounts {
        if reconcile::reconcile(Arc::new(sa), Arc::clone(&ctx))
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(RunError::Partial { failed, total });
    }
    let collected = ctx
        .dry_run
        .as_ref()
        .map(|c| std::mem::take(&mut *c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
        .unwrap_or_default();
    Ok(collected)
}

/// Every object `api` lists with `params`.
async fn list<K>(
    api: &Api<K>,
    params: &ListParams,
    what: &'static str,
    namespace: Option<&str>,
) -> Result<Vec<K>, RunError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(params)
        .await
        .map(|list| list.items)
        .map_err(|source| RunError::List {
            what,
            namespace: namespace.map(str::to_owned),
            source,
        })
}

/// What `--cleanup` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Cleaned {
    pub secrets: usize,
    pub service_accounts: usize,
}

/// Removes, for every configured ServiceAccount, the Secret with our name
/// that provably is ours, and the `imagePullSecrets` entry naming it;
/// nothing else. A
/// ServiceAccount that changes meanwhile is read again and retried.
pub(crate) async fn cleanup(
    settings: &Settings,
    client: kube::Client,
) -> Result<Cleaned, RunError> {
    let snapshot = snapshot(settings, &client).await?;
    let ctx = Context::new(
        settings.clone(),
        client.clone(),
        snapshot.caches,
        (),
        Arc::new(Leadership::always()),
        Arc::new(Metrics::default()),
    );
    let mut cleaned = Cleaned::default();
    let total = snapshot.service_accounts.len();
    let mut failed = 0;
    for mut sa in snapshot.service_accounts {
        let name = sa.name_any();
        if !settings.service_accounts.selects(&name) {
            continue;
        }
        let namespace = sa.namespace().unwrap_or_default();
        let secret_name = pull_secret::secret_name(&settings.secret_name, &name);
        let existing = ctx.secrets.get(&namespace, &secret_name);
        let owner = pull_secret::owner(existing.as_deref(), &sa, None);
        for attempt in 1..=CLEANUP_ATTEMPTS {
            let listed = sa
                .image_pull_secrets
                .iter()
                .flatten()
                .any(|r| r.name == secret_name);
            // A one-shot run holds no memory: an entry goes only beside our
            // Secret.
            match reconcile::remove(&ctx, &sa, &secret_name, existing.as_deref(), owner, false)
                .await
            {
                Ok(()) => {
                    cleaned.secrets += usize::from(owner == Owner::Us);
                    cleaned.service_accounts += usize::from(listed && owner == Owner::Us);
                    break;
                }
                Err(error) if error.reason() == "conflict" && attempt < CLEANUP_ATTEMPTS => {
                    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
                    match api.get_opt(&name).await {
                        Ok(Some(fresh)) => sa = fresh,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(namespace, service_account = name, error = %error_chain(&e), "cleanup failed");
                            failed += 1;
                            break;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(namespace, service_account = name, error = %error_chain(&error), "cleanup failed");
                    failed += 1;
                    break;
                }
            }
        }
    }
    if failed > 0 {
        return Err(RunError::Partial { failed, total });
    }
    Ok(cleaned)
}
