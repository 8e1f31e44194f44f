//! Where the controller reads Secrets and ServiceAccounts from, within what
//! its RBAC allows.
//!
//! Secrets are listed and watched by name: one field selector
//! `metadata.name=<secret_name>-<service account>` per configured
//! ServiceAccount name. That is the only way RBAC `resourceNames` can
//! confine a list or watch, so the controller can read no other Secret.
//! The caches then show every Secret with one of our names, ours or not,
//! which is what deciding ownership needs; nothing is selected by a label,
//! which anyone may remove.
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
use crate::pull_secret;

/// One list or watch of Secrets: `fieldSelector=metadata.name=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretSelector(String);

impl SecretSelector {
    /// One per configured ServiceAccount name.
    pub(crate) fn all(settings: &Settings) -> Vec<Self> {
        settings
            .service_accounts
            .names()
            .iter()
            .map(|n| Self(pull_secret::secret_name(&settings.secret_name, n)))
            .collect()
    }

    fn field_selector(&self) -> String {
        format!("metadata.name={}", self.0)
    }

    /// As a watcher config.
    pub(crate) fn watch_config(&self) -> watcher::Config {
        watcher::Config::default().fields(&self.field_selector())
    }

    /// As list parameters.
    pub(crate) fn list_params(&self) -> ListParams {
        ListParams::default().fields(&self.field_selector())
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

/// The ServiceAccounts a change to Secret `namespace/name` concerns: the
/// configured names whose Secret has that name.
pub(crate) fn service_accounts_for(
    settings: &Settings,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<ServiceAccount>> {
    settings
        .service_accounts
        .names()
        .iter()
        .filter(|sa| pull_secret::secret_name(&settings.secret_name, sa) == name)
        .map(|sa| ObjectRef::new(sa).within(namespace))
        .collect()
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
