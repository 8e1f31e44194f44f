//! The `policy` section: ordered rules, compiled once.

use super::check::Check;
use super::file::RuleEntry;
use crate::identity::Kind;
use crate::policy::{Actions, Glob, Rule};

/// Compiles policy rule `i`.
pub(super) fn rule(i: usize, r: &RuleEntry, c: &mut Check) -> Rule {
    let key = |field: &str| format!("policy[{i}].{field}");
    let kind = r.kind.as_ref().and_then(|k| match k.value.as_str() {
        "*" => None,
        "account" => Some(Kind::Account),
        "kubernetes" => Some(Kind::Kubernetes),
        "oidc" => Some(Kind::Oidc),
        "node" => Some(Kind::Node),
        "anonymous" => Some(Kind::Anonymous),
        other => {
            c.fail(
                key("kind"),
                k,
                format!(
                    "unknown kind {other:?}; use account, kubernetes, oidc, node, anonymous or *"
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
