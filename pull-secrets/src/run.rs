//! The three ways the controller runs: continuously (with leader
//! election), once (`--once`, optionally `--dry-run`), and `--cleanup`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::config::Settings;
use crate::exchange::Exchange;
use crate::leader::{self, Leadership, error_chain};
use crate::metrics::Metrics;
use crate::pull_secret::{self, MANAGED_SELECTOR};
use crate::reconcile::{self, Context};

/// How many ServiceAccounts are reconciled at once.
const CONCURRENCY: u16 = 8;

/// Attempts at removing our entry from a ServiceAccount that keeps changing.
const CLEANUP_ATTEMPTS: usize = 5;

/// Why a run failed as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("listing {what} failed")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{failed} of {total} ServiceAccounts failed")]
    Partial { failed: usize, total: usize },
    #[error("cleanup of {namespace}/{name} failed")]
    Cleanup {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
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
    // Ready once the API answers; the controller's own caches fill later.
    match Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
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

/// The controller: ServiceAccounts are the reconciled objects; our Secrets
/// (through their owner reference) and namespaces (by mapping to their
/// ServiceAccounts) trigger them too.
async fn control<E: Exchange>(
    settings: Settings,
    client: kube::Client,
    exchange: E,
    identity: String,
    leadership: Arc<Leadership>,
    metrics: Arc<Metrics>,
) {
    let namespace_watch = match settings.namespaces.label_selector() {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    let (namespaces, namespace_writer) = reflector::store::<Namespace>();
    let namespace_events = reflector(
        namespace_writer,
        watcher(Api::<Namespace>::all(client.clone()), namespace_watch),
    )
    .default_backoff()
    .touched_objects();
    let (secrets, secret_writer) = reflector::store::<Secret>();
    let secret_events = reflector(
        secret_writer,
        watcher(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().labels(MANAGED_SELECTOR),
        ),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().concurrency(CONCURRENCY));
    let service_accounts = controller.store();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: pull_secret::MANAGER.to_owned(),
            instance: Some(identity),
        },
    );
    // One waiter for both caches, which then tells every reconcile.
    let (ready_tx, caches_ready) = tokio::sync::watch::channel(false);
    let (namespace_cache, secret_cache) = (namespaces.clone(), secrets.clone());
    tokio::spawn(async move {
        if namespace_cache.wait_until_ready().await.is_ok()
            && secret_cache.wait_until_ready().await.is_ok()
        {
            let _ = ready_tx.send(true);
        }
    });
    let ctx = Arc::new(Context {
        settings,
        client,
        namespaces,
        secrets,
        caches_ready,
        exchange,
        leadership,
        metrics,
        recorder: Some(recorder),
        dry_run: None,
        failures: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        attached: Mutex::new(HashMap::new()),
    });
    // A resync reads only the caches unless something is due, so it costs
    // no API requests.
    let every = ctx.settings.resync_interval;
    let resync = futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some(((), ()))
    });
    controller
        .reconcile_all_on(resync)
        .owns_stream(secret_events)
        .watches_stream(namespace_events, move |namespace: Namespace| {
            in_namespace(&service_accounts, &namespace.name_any())
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(error = %error_chain(&error), "reconcile not done");
            }
        })
        .await;
}

fn in_namespace(store: &Store<ServiceAccount>, namespace: &str) -> Vec<ObjectRef<ServiceAccount>> {
    store
        .state()
        .iter()
        .filter(|sa| sa.namespace().as_deref() == Some(namespace))
        .map(|sa| ObjectRef::from_obj(sa.as_ref()))
        .collect()
}

/// One pass over every ServiceAccount, then return. With `dry_run`, nothing
/// is written and the Secrets that would be applied are returned.
pub(crate) async fn once<E: Exchange>(
    settings: Settings,
    client: kube::Client,
    exchange: E,
    dry_run: bool,
) -> Result<Vec<Secret>, RunError> {
    let mut namespace_list = ListParams::default();
    if let Some(selector) = settings.namespaces.label_selector() {
        namespace_list = namespace_list.labels(selector);
    }
    let namespaces = list_all::<Namespace>(&client, &namespace_list, "namespaces").await?;
    let secrets = list_all::<Secret>(
        &client,
        &ListParams::default().labels(MANAGED_SELECTOR),
        "Secrets",
    )
    .await?;
    let service_accounts =
        list_all::<ServiceAccount>(&client, &ListParams::default(), "ServiceAccounts").await?;
    let ctx = Arc::new(Context {
        settings,
        client,
        namespaces: filled(namespaces),
        secrets: filled(secrets),
        caches_ready: tokio::sync::watch::channel(true).1,
        exchange,
        leadership: Arc::new(Leadership::always()),
        metrics: Arc::new(Metrics::default()),
        recorder: None,
        dry_run: dry_run.then(|| Mutex::new(Vec::new())),
        failures: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        attached: Mutex::new(HashMap::new()),
    });
    let total = service_accounts.len();
    let mut failed = 0;
    for sa in service_accounts {
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

/// Every object of a type, cluster-wide, matching `params`.
async fn list_all<K>(
    client: &kube::Client,
    params: &ListParams,
    what: &'static str,
) -> Result<Vec<K>, RunError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::all(client.clone())
        .list(params)
        .await
        .map(|list| list.items)
        .map_err(|source| RunError::List { what, source })
}

/// A store holding exactly `items`, ready.
fn filled<K>(items: Vec<K>) -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut writer = reflector::store::Writer::<K>::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    for item in items {
        writer.apply_watcher_event(&watcher::Event::InitApply(item));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    writer.as_reader()
}

/// What `--cleanup` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Cleaned {
    pub secrets: usize,
    pub service_accounts: usize,
}

/// Removes every Secret carrying our label and every `imagePullSecrets`
/// entry that names our Secret for that ServiceAccount; nothing else.
pub(crate) async fn cleanup(
    settings: &Settings,
    client: kube::Client,
) -> Result<Cleaned, RunError> {
    let mut cleaned = Cleaned::default();
    let service_accounts =
        list_all::<ServiceAccount>(&client, &ListParams::default(), "ServiceAccounts").await?;
    for sa in service_accounts {
        let ours = pull_secret::secret_name(&settings.secret_name, &sa.name_any());
        if detach(&client, sa, &ours).await? {
            cleaned.service_accounts += 1;
        }
    }
    let secrets = list_all::<Secret>(
        &client,
        &ListParams::default().labels(MANAGED_SELECTOR),
        "Secrets",
    )
    .await?;
    for secret in secrets.iter().filter(|s| pull_secret::is_ours(s)) {
        let namespace = secret.namespace().unwrap_or_default();
        let name = secret.name_any();
        match Api::<Secret>::namespaced(client.clone(), &namespace)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => cleaned.secrets += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(RunError::Cleanup {
                    namespace,
                    name,
                    source,
                });
            }
        }
    }
    Ok(cleaned)
}

/// Drops `secret_name` from the ServiceAccount's `imagePullSecrets`,
/// re-reading it after a conflict. Returns whether it was listed.
async fn detach(
    client: &kube::Client,
    mut sa: ServiceAccount,
    secret_name: &str,
) -> Result<bool, RunError> {
    let namespace = sa.namespace().unwrap_or_default();
    let name = sa.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    for attempt in 1..=CLEANUP_ATTEMPTS {
        let list = sa.image_pull_secrets.clone().unwrap_or_default();
        if !list.iter().any(|r| r.name == secret_name) {
            return Ok(false);
        }
        let kept: Vec<_> = list.into_iter().filter(|r| r.name != secret_name).collect();
        let patch = json!({
            "metadata": {"resourceVersion": sa.resource_version()},
            "imagePullSecrets": kept,
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < CLEANUP_ATTEMPTS => {
                sa = api.get(&name).await.map_err(|source| RunError::Cleanup {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
            Err(source) => {
                return Err(RunError::Cleanup {
                    namespace,
                    name,
                    source,
                });
            }
        }
    }
    Ok(false)
}
