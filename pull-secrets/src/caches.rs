//! Where the controller reads Secrets and ServiceAccounts from, within what
//! its RBAC allows.
//!
//! Secrets are listed and watched by name: one field selector
//! `metadata.name=<secret_name>-<service account>` per configured
//! ServiceAccount name. That is the only way RBAC `resourceNames` can
//! confine a list or watch, so the controller can read no other Secret.
//! The caches then show every Secret with one of our names, ours or not,
//! which is what deciding ownership needs. With `service_accounts: ["*"]`
//! the names are not known in advance, and the Secrets are watched by our
//! label instead (which needs unrestricted list and watch on Secrets).
//!
//! In the namespaced scope every list and watch is made in each configured
//! namespace; in the cluster scope, across the cluster.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;

use crate::config::{Scope, Settings};
use crate::pull_secret::{self, MANAGED_SELECTOR};

/// How Secrets are selected in one list or watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSelector {
    /// `fieldSelector=metadata.name=NAME`.
    Name(String),
    /// `labelSelector=` our label (with `service_accounts: ["*"]`).
    Label,
}

impl SecretSelector {
    /// The selectors the settings call for.
    pub(crate) fn all(settings: &Settings) -> Vec<Self> {
        match settings.service_accounts.names() {
            Some(names) => names
                .iter()
                .map(|n| Self::Name(pull_secret::secret_name(&settings.secret_name, n)))
                .collect(),
            None => vec![Self::Label],
        }
    }

    /// As a watcher config.
    pub(crate) fn watch_config(&self) -> watcher::Config {
        match self {
            Self::Name(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
            Self::Label => watcher::Config::default().labels(MANAGED_SELECTOR),
        }
    }

    /// As list parameters.
    pub(crate) fn list_params(&self) -> ListParams {
        match self {
            Self::Name(name) => ListParams::default().fields(&format!("metadata.name={name}")),
            Self::Label => ListParams::default().labels(MANAGED_SELECTOR),
        }
    }
}

/// The namespaces lists and watches are made in: `None` for the whole
/// cluster, else each configured namespace.
pub(crate) fn scopes(settings: &Settings) -> Vec<Option<String>> {
    match settings.scope {
        Scope::Cluster => vec![None],
        Scope::Namespaced => settings
            .namespaces
            .listed()
            .unwrap_or_default()
            .iter()
            .map(|n| Some(n.clone()))
            .collect(),
    }
}

/// An `Api` for `scope` (see [`scopes`]).
pub(crate) fn api<K>(client: &kube::Client, scope: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// What a reconcile reads: namespaces (cluster scope only), the Secrets
/// with our names, and when each scope's caches are complete.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caches {
    pub namespaces: Option<Store<k8s_openapi::api::core::v1::Namespace>>,
    pub secrets: SecretCaches,
    pub ready: Readiness,
}

/// When the caches of each scope hold a complete list. Reconciles wait on
/// this, not on `Store::wait_until_ready`: that future keeps only the last
/// waiter's waker, so of several reconciles waiting at once all but one
/// would sleep forever. Each scope is ready on its own, so a namespace the
/// controller may not read (its RoleBinding is missing) holds up no other.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness(HashMap<Option<String>, tokio::sync::watch::Receiver<bool>>);

impl Readiness {
    /// Ready everywhere at once (caches filled by a list).
    pub(crate) fn now() -> Self {
        Self::default()
    }

    /// Scope `scope` (see [`scopes`]) is ready when `ready` says so.
    pub(crate) fn insert(
        &mut self,
        scope: Option<String>,
        ready: tokio::sync::watch::Receiver<bool>,
    ) {
        self.0.insert(scope, ready);
    }

    /// Waits until the caches `namespace` is read from are ready; false
    /// when they were dropped first.
    pub(crate) async fn wait(&self, namespace: &str) -> bool {
        let ready = self
            .0
            .get(&Some(namespace.to_owned()))
            .or_else(|| self.0.get(&None));
        match ready {
            Some(ready) => ready.clone().wait_for(|r| *r).await.is_ok(),
            None => true,
        }
    }
}

/// The Secrets with our names, from one store per list or watch.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecretCaches {
    stores: Vec<Store<Secret>>,
}

impl SecretCaches {
    /// Over `stores`.
    pub(crate) fn new(stores: Vec<Store<Secret>>) -> Self {
        Self { stores }
    }

    /// One store holding exactly `items`, ready.
    pub(crate) fn filled(items: Vec<Secret>) -> Self {
        Self::new(vec![filled(items)])
    }

    /// The Secret `namespace/name`, if a cache holds it.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = ObjectRef::new(name).within(namespace);
        self.stores.iter().find_map(|s| s.get(&key))
    }

    /// Waits until every store has its first complete list; false if one
    /// was dropped first.
    pub(crate) async fn wait_until_ready(&self) -> bool {
        for store in &self.stores {
            if store.wait_until_ready().await.is_err() {
                return false;
            }
        }
        true
    }
}

/// The ServiceAccounts a change to Secret `namespace/name` concerns: those
/// whose Secret has that name, among `known` (a store), or among the
/// configured names.
pub(crate) fn service_accounts_for(
    settings: &Settings,
    known: &Store<ServiceAccount>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<ServiceAccount>> {
    let ours = |sa: &str| pull_secret::secret_name(&settings.secret_name, sa) == name;
    match settings.service_accounts.names() {
        Some(names) => names
            .iter()
            .filter(|n| ours(n))
            .map(|n| ObjectRef::new(n).within(namespace))
            .collect(),
        None => known
            .state()
            .iter()
            .filter(|sa| sa.metadata.namespace.as_deref() == Some(namespace))
            .filter(|sa| sa.metadata.name.as_deref().is_some_and(ours))
            .map(|sa| ObjectRef::from_obj(sa.as_ref()))
            .collect(),
    }
}

/// A store holding exactly `items`, ready.
pub(crate) fn filled<K>(items: Vec<K>) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
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
