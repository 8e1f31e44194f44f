//! The stub's storage: objects, one global `resourceVersion` counter (as
//! etcd's revision), a bounded history of changes for watches, and the
//! write semantics (create, update, merge patch, server-side apply, delete).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::managed_fields::Ownership;
use super::resources::{RESOURCES, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use crate::oidc_issuer::claims::random_uuid;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// One committed write, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resource version the write produced.
    pub rv: u64,
    /// The object's type.
    pub resource: ResourceType,
    /// What happened.
    pub kind: ChangeKind,
    /// The object before (for selectors: leaving a selection is a delete).
    pub old: Option<Value>,
    /// The object after (for a delete: the last state, at `rv`).
    pub new: Value,
}

/// What a delete requires of the object (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object's `metadata.uid`.
    pub uid: Option<String>,
    /// The object's `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

/// (type, namespace or `""`, name).
type Key = (ResourceType, String, String);

/// Where a watch starts: the kept changes after the requested version,
/// then the live feed.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// Objects, history and the change feed.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Changes up to and including this version are no longer kept.
    compacted: u64,
    feed: broadcast::Sender<Arc<Change>>,
}

/// Capacity of the live change feed; a watcher that falls this far behind
/// is told its version expired.
const FEED_CAPACITY: usize = 16 * 1024;

impl Store {
    /// An empty store keeping the last `history_limit` changes.
    pub fn new(history_limit: usize) -> Self {
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 1,
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Drops all history, as a compaction does: every watch or continue
    /// token from before now is expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Oldest version a watch may still start from.
    fn oldest_watchable(&self) -> u64 {
        self.compacted
    }

    /// A live feed of changes from now on, with the current objects of
    /// `rt` that match: what a watch without a resource version starts with.
    pub fn snapshot_and_feed(
        &self,
        rt: ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (u64, Vec<Value>, broadcast::Receiver<Arc<Change>>) {
        let objects = self
            .list(rt, ns, labels, fields, None)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        (self.rv, objects, self.feed.subscribe())
    }

    /// One object.
    pub fn get(&self, rt: ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&(rt, ns.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt.plural, name))
    }

    /// Objects of `rt` (in `ns`, or everywhere for `None`) matching the
    /// selectors, in key order, starting after `after` (a continue key).
    pub fn list(
        &self,
        rt: ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        after: Option<&(String, String)>,
    ) -> Vec<((String, String), Value)> {
        self.objects
            .iter()
            .filter(|((t, n, _), _)| *t == rt && ns.is_none_or(|ns| ns == n))
            .filter(|((_, n, name), _)| after.is_none_or(|a| (n, name) > (&a.0, &a.1)))
            .filter(|(_, v)| labels.matches(v) && fields.matches(v))
            .map(|((_, n, name), v)| ((n.clone(), name.clone()), v.clone()))
            .collect()
    }

    /// Whether a version is still covered by the history.
    pub fn is_expired(&self, rv: u64) -> bool {
        rv < self.oldest_watchable()
    }

    /// The kept changes after `rv` and a receiver for later ones, taken
    /// together so nothing falls between them.
    pub fn watch_from(&self, rv: u64) -> Result<WatchStart, ApiError> {
        if self.is_expired(rv) {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.oldest_watchable()
            )));
        }
        let past = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((past, self.feed.subscribe()))
    }

    /// The live change feed alone.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.feed.subscribe()
    }

    /// Creates an object in `ns` (`""` for cluster-scoped types).
    pub fn create(
        &mut self,
        rt: ResourceType,
        ns: &str,
        body: &Value,
        manager: &str,
        now: &str,
    ) -> Result<Value, ApiError> {
        let mut object = rt.normalize(body).map_err(ApiError::bad_request)?;
        let meta = &mut object["metadata"];
        if meta["name"].as_str().is_none_or(str::is_empty) {
            let prefix = meta["generateName"].as_str().unwrap_or_default().to_owned();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            meta["name"] = format!("{prefix}{}", &random_uuid()[..5]).into();
        }
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        check_name(&name)?;
        self.check_namespace(rt, ns, meta)?;
        validate(rt, &name, &object, None)?;
        let key = (rt, ns.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt.plural, &name));
        }
        object["metadata"]["uid"] = random_uuid().into();
        object["metadata"]["creationTimestamp"] = now.into();
        if rt.kind == "Namespace" {
            object["status"] = json!({"phase": "Active"});
        }
        let mut owned = Ownership::default();
        owned.update(&Value::Null, &object, manager);
        owned.store(&mut object, &rt.api_version(), now);
        Ok(self.commit(key, None, Some(object)))
    }

    /// Replaces an object (`PUT`). A `resourceVersion` in the body must be
    /// the current one; without one the update is unconditional.
    pub fn replace(
        &mut self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        body: &Value,
        manager: &str,
        now: &str,
    ) -> Result<Value, ApiError> {
        let current = self.get(rt, ns, name)?;
        let object = rt.normalize(body).map_err(ApiError::bad_request)?;
        if object["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        check_version(rt, name, &current, &object)?;
        self.write(rt, ns, name, current, object, manager, now)
    }

    /// An RFC 7386 merge patch. A `metadata.resourceVersion` in the patch is
    /// a precondition.
    pub fn merge_patch(
        &mut self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        patch: &Value,
        manager: &str,
        now: &str,
    ) -> Result<Value, ApiError> {
        let current = self.get(rt, ns, name)?;
        check_version(rt, name, &current, patch)?;
        let mut merged = current.clone();
        merge(&mut merged, patch);
        let object = rt.normalize(&merged).map_err(ApiError::bad_request)?;
        if object["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request("metadata.name cannot be patched"));
        }
        self.write(rt, ns, name, current, object, manager, now)
    }

    /// Server-side apply of `config` by `manager`; creates the object when
    /// it does not exist.
    #[allow(clippy::too_many_arguments)] // the API's own parameters
    pub fn apply(
        &mut self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        config: &Value,
        manager: &str,
        force: bool,
        now: &str,
    ) -> Result<Value, ApiError> {
        if config["apiVersion"].as_str() != Some(rt.api_version().as_str())
            || config["kind"].as_str() != Some(rt.kind)
        {
            return Err(ApiError::bad_request(format!(
                "apply needs apiVersion {} and kind {}",
                rt.api_version(),
                rt.kind
            )));
        }
        if config["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if manager.is_empty() {
            return Err(ApiError::bad_request(
                "PATCH with application/apply-patch+yaml requires fieldManager",
            ));
        }
        rt.normalize(config).map_err(ApiError::bad_request)?;
        let current = self.get(rt, ns, name).ok();
        let mut owned = current.as_ref().map(Ownership::of).unwrap_or_default();
        let base = current.clone().unwrap_or(Value::Null);
        let merged = owned
            .apply(&base, config, manager, force)
            .map_err(|conflicts| {
                let list: Vec<String> = conflicts
                    .iter()
                    .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
                    .collect();
                ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {} conflict{}: {}",
                        list.len(),
                        if list.len() == 1 { "" } else { "s" },
                        list.join(", ")
                    ),
                )
            })?;
        let mut object = rt.normalize(&merged).map_err(ApiError::bad_request)?;
        object["metadata"]["name"] = name.into();
        validate(rt, name, &object, current.as_ref())?;
        match current {
            None => {
                self.check_namespace(rt, ns, &mut object["metadata"])?;
                object["metadata"]["uid"] = random_uuid().into();
                object["metadata"]["creationTimestamp"] = now.into();
                owned.store(&mut object, &rt.api_version(), now);
                Ok(self.commit((rt, ns.to_owned(), name.to_owned()), None, Some(object)))
            }
            Some(current) => {
                keep_identity(&current, &mut object);
                check_immutable(rt, &current, &object)?;
                if same_content(&current, &object) {
                    return Ok(current);
                }
                owned.store(&mut object, &rt.api_version(), now);
                Ok(self.commit(
                    (rt, ns.to_owned(), name.to_owned()),
                    Some(current),
                    Some(object),
                ))
            }
        }
    }

    /// Deletes an object, if it still matches `preconditions` (its `uid`
    /// and `resourceVersion`, each when given; 409 otherwise, as the API's
    /// `Preconditions.Check`). Deleting a namespace deletes everything in
    /// it first.
    pub fn delete(
        &mut self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Value, ApiError> {
        let current = self.get(rt, ns, name)?;
        for (field, wanted, key) in [
            ("UID", &preconditions.uid, "uid"),
            (
                "ResourceVersion",
                &preconditions.resource_version,
                "resourceVersion",
            ),
        ] {
            let actual = current["metadata"][key].as_str().unwrap_or_default();
            if let Some(wanted) = wanted
                && wanted != actual
            {
                return Err(ApiError::precondition_failed(
                    rt.plural, name, field, wanted, actual,
                ));
            }
        }
        if rt.kind == "Namespace" {
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|(t, n, _)| t.namespaced && n == name)
                .cloned()
                .collect();
            for key in inside {
                let old = self.objects.get(&key).cloned();
                self.commit(key, old, None);
            }
        }
        Ok(self.commit((rt, ns.to_owned(), name.to_owned()), Some(current), None))
    }

    #[allow(clippy::too_many_arguments)] // one write's full context
    fn write(
        &mut self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        current: Value,
        mut object: Value,
        manager: &str,
        now: &str,
    ) -> Result<Value, ApiError> {
        keep_identity(&current, &mut object);
        check_immutable(rt, &current, &object)?;
        validate(rt, name, &object, Some(&current))?;
        if same_content(&current, &object) {
            return Ok(current);
        }
        let mut owned = Ownership::of(&current);
        owned.update(&current, &object, manager);
        owned.store(&mut object, &rt.api_version(), now);
        Ok(self.commit(
            (rt, ns.to_owned(), name.to_owned()),
            Some(current),
            Some(object),
        ))
    }

    fn check_namespace(
        &self,
        rt: ResourceType,
        ns: &str,
        meta: &mut Value,
    ) -> Result<(), ApiError> {
        let given = meta["namespace"].as_str().unwrap_or_default();
        if !rt.namespaced {
            if !given.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{} is not namespaced",
                    rt.plural
                )));
            }
            return Ok(());
        }
        if !given.is_empty() && given != ns {
            return Err(ApiError::bad_request(
                "the namespace of the object does not match the namespace on the request",
            ));
        }
        let namespaces = RESOURCES[0];
        if !self
            .objects
            .contains_key(&(namespaces, String::new(), ns.to_owned()))
        {
            return Err(ApiError::not_found("namespaces", ns));
        }
        meta["namespace"] = ns.into();
        Ok(())
    }

    /// Stores (or removes) an object at a new resource version and tells
    /// the watches. Returns the object as committed.
    fn commit(&mut self, key: Key, old: Option<Value>, new: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let (kind, mut object) = match (&old, new) {
            (_, Some(new)) => (
                if old.is_some() {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                },
                new,
            ),
            (Some(old), None) => (ChangeKind::Deleted, old.clone()),
            (None, None) => unreachable!("a commit writes or deletes something"),
        };
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        if kind == ChangeKind::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        let change = Arc::new(Change {
            rv,
            resource: key.0,
            kind,
            old,
            new: object.clone(),
        });
        self.history.push_back(Arc::clone(&change));
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // No receivers is fine: nobody watches yet.
        let _ = self.feed.send(change);
        object
    }
}

/// The type's own validation, as a 422 naming the object.
fn validate(
    rt: ResourceType,
    name: &str,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    rt.validate(object, old).map_err(|message| {
        let kind = if rt.group.is_empty() {
            rt.kind.to_owned()
        } else {
            format!("{}.{}", rt.kind, rt.group)
        };
        ApiError::invalid(format!("{kind} \"{name}\" is invalid: {message}"))
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist \
             of lower case alphanumeric characters, '-' or '.', and must start and end with an \
             alphanumeric character"
        )))
    }
}

/// A `metadata.resourceVersion` in `request` must match the stored one.
fn check_version(
    rt: ResourceType,
    name: &str,
    current: &Value,
    request: &Value,
) -> Result<(), ApiError> {
    match request["metadata"]["resourceVersion"].as_str() {
        Some(rv)
            if !rv.is_empty() && current["metadata"]["resourceVersion"].as_str() != Some(rv) =>
        {
            Err(ApiError::stale(rt.plural, name))
        }
        _ => Ok(()),
    }
}

/// Fields a write cannot change.
fn keep_identity(current: &Value, object: &mut Value) {
    for field in ["uid", "creationTimestamp", "namespace", "managedFields"] {
        match current["metadata"].get(field) {
            Some(value) => object["metadata"][field] = value.clone(),
            None => {
                if let Some(meta) = object["metadata"].as_object_mut() {
                    meta.remove(field);
                }
            }
        }
    }
    if current["kind"] == "Namespace" {
        object["status"] = current["status"].clone();
    }
}

fn check_immutable(rt: ResourceType, current: &Value, object: &Value) -> Result<(), ApiError> {
    if rt.kind == "Secret" && current["type"] != object["type"] {
        return Err(ApiError::invalid("type: Invalid value: field is immutable"));
    }
    // As the API's ValidateSecretUpdate: once `immutable: true` is set, it
    // stays set and `data` cannot change (metadata still can).
    if rt.kind == "Secret" && current["immutable"] == Value::Bool(true) {
        let name = current["metadata"]["name"].as_str().unwrap_or_default();
        if object["immutable"] != Value::Bool(true) {
            return Err(ApiError::invalid(format!(
                "Secret \"{name}\" is invalid: immutable: Forbidden: field is immutable when `immutable` is set"
            )));
        }
        if current["data"] != object["data"] {
            return Err(ApiError::invalid(format!(
                "Secret \"{name}\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
            )));
        }
    }
    Ok(())
}

/// Equal but for the resource version: such a write changes nothing and,
/// as in the API, is not committed.
fn same_content(current: &Value, object: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        v
    };
    strip(current) == strip(object)
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in patch {
        if value.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(key);
            }
        } else {
            merge(&mut target[key], value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_api::resources::of;
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn with_namespace() -> Store {
        let mut store = Store::new(8);
        store
            .create(
                of::<Namespace>(),
                "",
                &json!({"metadata": {"name": "team-a"}}),
                "test",
                NOW,
            )
            .unwrap();
        store
    }

    #[test]
    fn every_write_gets_a_new_global_version_and_stale_updates_conflict() {
        let mut store = with_namespace();
        let sa = of::<ServiceAccount>();
        let created = store
            .create(
                sa,
                "team-a",
                &json!({"metadata": {"name": "default"}}),
                "test",
                NOW,
            )
            .unwrap();
        let rv1 = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut changed = created.clone();
        changed["imagePullSecrets"] = json!([{"name": "x"}]);
        let updated = store
            .replace(sa, "team-a", "default", &changed, "test", NOW)
            .unwrap();
        assert_ne!(
            updated["metadata"]["resourceVersion"].as_str(),
            Some(rv1.as_str())
        );
        // The old version is stale now.
        let err = store
            .replace(sa, "team-a", "default", &changed, "test", NOW)
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        let err = store
            .merge_patch(
                sa,
                "team-a",
                "default",
                &json!({"metadata": {"resourceVersion": rv1}, "imagePullSecrets": []}),
                "test",
                NOW,
            )
            .unwrap_err();
        assert_eq!(err.code, 409);
        // A no-op write commits nothing.
        let before = store.resource_version();
        store
            .merge_patch(
                sa,
                "team-a",
                "default",
                &json!({"imagePullSecrets": [{"name": "x"}]}),
                "test",
                NOW,
            )
            .unwrap();
        assert_eq!(store.resource_version(), before);
    }

    #[test]
    fn namespaced_objects_need_their_namespace_and_go_with_it() {
        let mut store = with_namespace();
        let sa = of::<ServiceAccount>();
        let err = store
            .create(
                sa,
                "nope",
                &json!({"metadata": {"name": "default"}}),
                "test",
                NOW,
            )
            .unwrap_err();
        assert_eq!(err.code, 404);
        store
            .create(
                sa,
                "team-a",
                &json!({"metadata": {"name": "default"}}),
                "test",
                NOW,
            )
            .unwrap();
        store
            .delete(of::<Namespace>(), "", "team-a", &Preconditions::default())
            .unwrap();
        assert_eq!(store.get(sa, "team-a", "default").unwrap_err().code, 404);
    }

    /// As the API's `Preconditions.Check`: a delete names the object it
    /// means by uid and version, and a recreated or changed one is spared.
    #[test]
    fn a_delete_meets_both_its_uid_and_its_version_precondition_or_conflicts() {
        let mut store = with_namespace();
        let sa = of::<ServiceAccount>();
        let body = json!({"metadata": {"name": "default"}});
        let made = store.create(sa, "team-a", &body, "test", NOW).unwrap();
        let uid = made["metadata"]["uid"].as_str().unwrap().to_owned();
        let rv = made["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        for (wrong, field) in [
            (
                Preconditions {
                    uid: Some("another-uid".into()),
                    resource_version: Some(rv.clone()),
                },
                "UID in precondition: another-uid",
            ),
            (
                Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: Some("1".into()),
                },
                "ResourceVersion in precondition: 1",
            ),
        ] {
            let err = store.delete(sa, "team-a", "default", &wrong).unwrap_err();
            assert_eq!(err.code, 409);
            assert!(err.message.contains(field), "{}", err.message);
            assert!(store.get(sa, "team-a", "default").is_ok(), "kept");
        }
        let right = Preconditions {
            uid: Some(uid),
            resource_version: Some(rv),
        };
        store.delete(sa, "team-a", "default", &right).unwrap();
        assert_eq!(store.get(sa, "team-a", "default").unwrap_err().code, 404);
    }

    #[test]
    fn history_is_bounded_and_old_versions_expire() {
        let mut store = with_namespace();
        let start = store.resource_version();
        assert!(store.watch_from(start).is_ok());
        for i in 0..20 {
            store
                .create(
                    of::<ServiceAccount>(),
                    "team-a",
                    &json!({"metadata": {"name": format!("sa-{i}")}}),
                    "test",
                    NOW,
                )
                .unwrap();
        }
        assert_eq!(store.watch_from(start).unwrap_err().code, 410);
        let (past, _) = store.watch_from(store.resource_version() - 3).unwrap();
        assert_eq!(past.len(), 3);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }
}
