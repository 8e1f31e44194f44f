//! The `policy` section: ordered rules, compiled once, and the actions each
//! resource type knows, so a typo such as `pussh` is an error rather than a
//! rule that grants nothing.

use std::collections::BTreeMap;

use super::check::Check;
use super::file::{ConfigFile, RuleEntry, S};
use crate::identity::Kind;
use crate::policy::{Actions, Glob, Policy, Rule};

/// The registry's own resource types and their actions (`*` is always
/// allowed). distribution grants `registry:catalog:*` only.
const BUILT_IN: [(&str, &[&str]); 2] = [
    ("repository", &["pull", "push", "delete"]),
    ("registry", &[]),
];

/// Known actions by resource type: the built-in ones and those the config
/// declares under `resource_types`.
pub(super) struct ResourceTypes(BTreeMap<String, Vec<String>>);

impl ResourceTypes {
    pub(super) fn new(declared: &BTreeMap<String, S<Vec<String>>>, c: &mut Check) -> Self {
        let mut known: BTreeMap<String, Vec<String>> = BUILT_IN
            .iter()
            .map(|(t, a)| ((*t).to_owned(), a.iter().map(|a| (*a).to_owned()).collect()))
            .collect();
        for (name, actions) in declared {
            let key = format!("resource_types.{name}");
            if known.contains_key(name) && BUILT_IN.iter().any(|(t, _)| t == name) {
                c.fail(key, actions, "is built in; its actions cannot be changed");
                continue;
            }
            if let Some(bad) = actions
                .value
                .iter()
                .find(|a| a.is_empty() || !a.bytes().all(|b| b.is_ascii_lowercase()))
            {
                c.fail(
                    key,
                    actions,
                    format!("invalid action {bad:?}; use lowercase letters"),
                );
                continue;
            }
            known.insert(name.clone(), actions.value.clone());
        }
        ResourceTypes(known)
    }

    /// The actions a rule of type pattern `type_glob` may name: its type's,
    /// or, for a pattern, those of every known type it matches; `None` for
    /// a type nobody declared, which is not checked.
    fn actions_for(&self, type_glob: &Glob) -> Option<Vec<&str>> {
        let matching: Vec<&Vec<String>> = self
            .0
            .iter()
            .filter(|(t, _)| type_glob.matches_plain(t))
            .map(|(_, a)| a)
            .collect();
        if matching.is_empty() {
            return None;
        }
        Some(matching.into_iter().flatten().map(String::as_str).collect())
    }
}

/// Compiles every rule, in order.
pub(super) fn policy(file: &ConfigFile, c: &mut Check) -> Policy {
    let types = ResourceTypes::new(&file.resource_types, c);
    Policy::new(
        file.policy
            .iter()
            .enumerate()
            .map(|(i, r)| rule(i, r, &types, c))
            .collect(),
    )
}

/// Compiles policy rule `i`.
fn rule(i: usize, r: &RuleEntry, types: &ResourceTypes, c: &mut Check) -> Rule {
    let key = |field: &str| format!("policy[{i}].{field}");
    let kind = r.kind.as_ref().and_then(|k| match k.value.as_str() {
        "*" => None,
        "account" => Some(Kind::Account),
        "kubernetes" => Some(Kind::Kubernetes),
        "oidc" => Some(Kind::Oidc),
        "node" => Some(Kind::Node),
        "certificate" => Some(Kind::Certificate),
        "anonymous" => Some(Kind::Anonymous),
        other => {
            c.fail(
                key("kind"),
                k,
                format!(
                    "unknown kind {other:?}; use account, kubernetes, oidc, node, certificate, anonymous or *"
                ),
            );
            None
        }
    });
    let name = match &r.name {
        Some(n) => {
            let g = c.glob(key("name"), n);
            if g.variables().next().is_some() {
                c.fail(key("name"), n, "variables are only allowed in `resource`");
            }
            g
        }
        // A rule with no `name` must also match the nameless anonymous caller.
        None => Glob::any(),
    };
    let attributes = r
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), c.glob(format!("policy[{i}].attributes.{k}"), v)))
        .collect();
    let resource_type = match &r.resource_type {
        Some(t) => c.glob(key("type"), t),
        None => Glob::literal("repository"),
    };
    let resource = c.glob(key("resource"), &r.resource);
    let actions = if r.actions.value.is_empty() {
        c.fail(
            key("actions"),
            &r.actions,
            "list at least one action, or \"*\" for all",
        );
        Actions::Only(Vec::new())
    } else if r.actions.value.iter().any(|a| a == "*") {
        Actions::All
    } else {
        if let Some(known) = types.actions_for(&resource_type)
            && let Some(bad) = r
                .actions
                .value
                .iter()
                .find(|a| !known.contains(&a.as_str()))
        {
            let mut allowed = known.clone();
            allowed.push("\"*\"");
            c.fail(
                key("actions"),
                &r.actions,
                format!(
                    "unknown action {bad:?} for type {}; use {}",
                    resource_type.as_str(),
                    allowed.join(", ")
                ),
            );
        }
        Actions::Only(r.actions.value.clone())
    };
    Rule {
        comment: r.comment.clone().unwrap_or_default(),
        kind,
        name,
        attributes,
        resource_type,
        resource,
        actions,
    }
}
