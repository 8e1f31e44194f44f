//! Field ownership for server-side apply, kept in `metadata.managedFields`
//! in the API's `FieldsV1` form (`{"f:data": {"f:key": {}}}`).
//!
//! Granularity: every map is recursed into, and a list is one field owned
//! as a whole (an atomic list). That is exact for the fields the controller
//! applies (labels, annotations and `data` keys of a Secret, and
//! `ownerReferences`, which it always writes whole); list types keyed by a
//! field (`x-kubernetes-list-type: map`) are not merged per item.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// A path to an owned field: map keys from the object's root.
pub type FieldPath = Vec<String>;

/// Metadata fields that identify or describe an object rather than being
/// set by a writer; nobody owns them.
const SYSTEM_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "selfLink",
];

/// Who owns what, per (manager, operation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership(BTreeMap<(String, String), BTreeSet<FieldPath>>);

/// One apply conflict: another manager owns a field with another value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager that owns the field.
    pub manager: String,
    /// The field, as `.a.b`.
    pub field: String,
}

impl Ownership {
    /// Reads `metadata.managedFields` of a stored object.
    pub fn of(object: &Value) -> Self {
        let mut owned = BTreeMap::new();
        for entry in object["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let manager = entry["manager"].as_str().unwrap_or_default().to_owned();
            let operation = entry["operation"].as_str().unwrap_or("Update").to_owned();
            let mut paths = BTreeSet::new();
            decode(&entry["fieldsV1"], &mut Vec::new(), &mut paths);
            owned.insert((manager, operation), paths);
        }
        Self(owned)
    }

    /// Writes the ownership into `object`'s `metadata.managedFields`, with
    /// `time` (RFC 3339) on entries and `api_version` of the object.
    pub fn store(&self, object: &mut Value, api_version: &str, time: &str) {
        let entries: Vec<Value> = self
            .0
            .iter()
            .filter(|(_, paths)| !paths.is_empty())
            .map(|((manager, operation), paths)| {
                json!({
                    "manager": manager,
                    "operation": operation,
                    "apiVersion": api_version,
                    "time": time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": encode(paths),
                })
            })
            .collect();
        if entries.is_empty() {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("managedFields");
            }
        } else {
            object["metadata"]["managedFields"] = Value::Array(entries);
        }
    }

    /// The fields `manager` owns through apply.
    pub fn applied_by(&self, manager: &str) -> BTreeSet<FieldPath> {
        self.0
            .get(&(manager.to_owned(), "Apply".to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Applies `config` for `manager` onto `current` (`Value::Null` when the
    /// object does not exist yet). Returns the merged object, or the
    /// conflicts when `force` is false and another manager owns a field the
    /// config sets to a different value.
    pub fn apply(
        &mut self,
        current: &Value,
        config: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, Vec<Conflict>> {
        let mut wanted = BTreeSet::new();
        leaves(config, &mut Vec::new(), &mut wanted);
        let key = (manager.to_owned(), "Apply".to_owned());
        let mut conflicts = Vec::new();
        for ((other, operation), paths) in &self.0 {
            if (other, operation) == (&key.0, &key.1) {
                continue;
            }
            for path in paths.intersection(&wanted) {
                if lookup(current, path) != lookup(config, path) {
                    conflicts.push(Conflict {
                        manager: other.clone(),
                        field: format!(".{}", path.join(".")),
                    });
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        let mut merged = if current.is_null() {
            json!({})
        } else {
            current.clone()
        };
        for path in &wanted {
            if let Some(value) = lookup(config, path) {
                set(&mut merged, path, value.clone());
            }
        }
        // Fields this manager applied before and no longer applies are
        // removed, unless someone else also owns them.
        let previous = self.0.get(&key).cloned().unwrap_or_default();
        for path in previous.difference(&wanted) {
            let shared = self
                .0
                .iter()
                .any(|(k, paths)| *k != key && paths.contains(path));
            if !shared {
                remove(&mut merged, path);
            }
        }
        // Applied fields are now this manager's alone (force took them over;
        // without conflicts, equal values stay shared as the API does).
        if force {
            for (k, paths) in &mut self.0 {
                if *k != key {
                    paths.retain(|p| !wanted.contains(p));
                }
            }
        }
        self.0.insert(key, wanted);
        Ok(merged)
    }

    /// Records a non-apply write by `manager`: every field whose value
    /// changed between `before` and `after` becomes its (operation
    /// `Update`), and is taken from everyone else; removed fields are
    /// dropped from every set.
    pub fn update(&mut self, before: &Value, after: &Value, manager: &str) {
        let (mut old, mut new) = (BTreeSet::new(), BTreeSet::new());
        leaves(before, &mut Vec::new(), &mut old);
        leaves(after, &mut Vec::new(), &mut new);
        let changed: BTreeSet<FieldPath> = new
            .iter()
            .filter(|p| lookup(before, p) != lookup(after, p))
            .cloned()
            .collect();
        for paths in self.0.values_mut() {
            paths.retain(|p| new.contains(p) && !changed.contains(p));
        }
        self.0
            .entry((manager.to_owned(), "Update".to_owned()))
            .or_default()
            .extend(changed);
    }
}

/// Every leaf field of `value`: maps are recursed into, anything else
/// (scalars, lists) is a leaf. System metadata is left out.
fn leaves(value: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() || prefix.is_empty() => {
            for (key, child) in map {
                let system = prefix.len() == 1
                    && prefix[0] == "metadata"
                    && SYSTEM_FIELDS.contains(&key.as_str());
                let top_level_type = prefix.is_empty() && (key == "apiVersion" || key == "kind");
                if system || top_level_type || child.is_null() {
                    continue;
                }
                prefix.push(key.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn set(value: &mut Value, path: &[String], leaf: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cursor = value;
    for key in parents {
        if !cursor.get(key).is_some_and(Value::is_object) {
            cursor[key] = json!({});
        }
        cursor = &mut cursor[key];
    }
    cursor[last] = leaf;
}

/// Removes the field at `path`, then any map left empty above it.
fn remove(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(Value::Object(map)) = lookup_mut(value, parents) {
        map.remove(last);
        if map.is_empty() && !parents.is_empty() {
            remove(value, parents);
        }
    }
}

fn lookup_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

fn encode(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut cursor = &mut root;
        for key in path {
            let entry = cursor
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else {
                unreachable!("every node written here is an object")
            };
            cursor = next;
        }
    }
    Value::Object(root)
}

/// A leaf is an empty object (`"f:key": {}`); `".": {}` marks a node that
/// is owned itself besides its children.
fn decode(fields: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Value::Object(map) = fields else { return };
    if map.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (key, child) in map {
        if key == "." {
            out.insert(prefix.clone());
        } else if let Some(name) = key.strip_prefix("f:") {
            prefix.push(name.to_owned());
            decode(child, prefix, out);
            prefix.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": data})
    }

    #[test]
    fn apply_creates_and_owns_then_drops_what_it_no_longer_applies() {
        let mut owned = Ownership::default();
        let first = owned
            .apply(
                &Value::Null,
                &secret(json!({"a": "1", "b": "2"})),
                "ctl",
                false,
            )
            .unwrap();
        assert_eq!(first["data"], json!({"a": "1", "b": "2"}));
        let second = owned
            .apply(&first, &secret(json!({"a": "3"})), "ctl", false)
            .unwrap();
        assert_eq!(second["data"], json!({"a": "3"}));
    }

    #[test]
    fn a_foreign_field_survives_and_a_conflict_needs_force() {
        let mut owned = Ownership::default();
        let ours = owned
            .apply(&Value::Null, &secret(json!({"a": "1"})), "ctl", false)
            .unwrap();
        let mut theirs = ours.clone();
        theirs["data"]["x"] = "9".into();
        theirs["data"]["a"] = "changed".into();
        owned.update(&ours, &theirs, "kubectl-edit");
        // Re-applying "a" conflicts with kubectl-edit, which now owns it.
        let conflicts = owned
            .apply(&theirs, &secret(json!({"a": "1"})), "ctl", false)
            .unwrap_err();
        assert_eq!(conflicts[0].manager, "kubectl-edit");
        assert_eq!(conflicts[0].field, ".data.a");
        let forced = owned
            .apply(&theirs, &secret(json!({"a": "1"})), "ctl", true)
            .unwrap();
        assert_eq!(forced["data"], json!({"a": "1", "x": "9"}));
    }

    #[test]
    fn managed_fields_round_trip_through_fields_v1() {
        let mut owned = Ownership::default();
        let mut object = owned
            .apply(
                &Value::Null,
                &json!({"metadata": {"name": "s", "labels": {"l": "v"}}, "type": "Opaque", "data": {".dockerconfigjson": "e30="}}),
                "ctl",
                false,
            )
            .unwrap();
        owned.store(&mut object, "v1", "2026-01-01T00:00:00Z");
        let fields = &object["metadata"]["managedFields"][0]["fieldsV1"];
        assert_eq!(fields["f:data"]["f:.dockerconfigjson"], json!({}));
        assert_eq!(fields["f:metadata"]["f:labels"]["f:l"], json!({}));
        assert!(fields["f:metadata"].get("f:name").is_none());
        assert_eq!(Ownership::of(&object), owned);
    }
}
