//! The ordered access policy: for each requested resource the first matching
//! rule decides, and a resource no rule matches is denied.
//!
//! Granting never fails. A denial is an empty action list, which the token
//! carries as an absent `access` entry; only bad credentials are errors.

pub mod glob;

use serde::Serialize;

use crate::identity::{Kind, Principal};
use crate::scope::Scope;
pub use glob::{Glob, GlobError};

/// What a rule grants on the resources it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actions {
    /// `*`: every action that was asked for.
    All,
    /// Exactly these actions (intersected with the request).
    Only(Vec<String>),
}

/// One compiled policy rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Free text shown in logs when this rule decides.
    pub comment: String,
    /// Principal kind this rule applies to; `None` matches every kind.
    pub kind: Option<Kind>,
    /// Pattern for the principal name.
    pub name: Glob,
    /// Every listed attribute must exist and match its pattern.
    pub attributes: Vec<(String, Glob)>,
    /// Pattern for the resource type (usually `repository`).
    pub resource_type: Glob,
    /// Pattern for the resource name; may use `${variables}`.
    pub resource: Glob,
    /// What the rule grants.
    pub actions: Actions,
}

impl Rule {
    fn matches_principal(&self, p: &Principal) -> bool {
        self.kind.is_none_or(|k| k == p.kind)
            && self.name.matches_plain(&p.name)
            && self
                .attributes
                .iter()
                .all(|(key, g)| p.attributes.get(key).is_some_and(|v| g.matches_plain(v)))
    }

    fn matches_resource(&self, p: &Principal, scope: &Scope) -> bool {
        self.resource_type.matches_plain(&scope.resource_type)
            && self.resource.matches(&scope.name, &|v| p.variable(v))
    }
}

/// One `access` entry of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Resource type.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Resource name.
    pub name: String,
    /// Granted actions; never empty in an issued token.
    pub actions: Vec<String>,
}

/// The decision for one requested scope, kept for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the rule that decided, or `None` when nothing matched.
    pub rule: Option<usize>,
    /// What was granted (possibly no actions).
    pub grant: Grant,
}

/// An ordered list of rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Builds a policy from rules in priority order.
    pub fn new(rules: Vec<Rule>) -> Self {
        Policy { rules }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides every requested scope for `principal`.
    pub fn decide(&self, principal: &Principal, scopes: &[Scope]) -> Vec<Decision> {
        scopes
            .iter()
            .map(|s| self.decide_one(principal, s))
            .collect()
    }

    fn decide_one(&self, principal: &Principal, scope: &Scope) -> Decision {
        let found =
            self.rules.iter().enumerate().find(|(_, r)| {
                r.matches_principal(principal) && r.matches_resource(principal, scope)
            });
        let actions = match found.map(|(_, r)| &r.actions) {
            None => Vec::new(),
            Some(Actions::All) => scope.actions.clone(),
            Some(Actions::Only(allowed)) => scope
                .actions
                .iter()
                .filter(|a| allowed.contains(a))
                .cloned()
                .collect(),
        };
        Decision {
            rule: found.map(|(i, _)| i),
            grant: Grant {
                resource_type: scope.resource_type.clone(),
                name: scope.name.clone(),
                actions,
            },
        }
    }
}

/// The non-empty grants of a set of decisions: what goes into the token.
pub fn granted(decisions: &[Decision]) -> Vec<Grant> {
    decisions
        .iter()
        .filter(|d| !d.grant.actions.is_empty())
        .map(|d| d.grant.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rule(kind: Option<Kind>, name: &str, resource: &str, actions: Actions) -> Rule {
        Rule {
            comment: String::new(),
            kind,
            name: Glob::new(name).unwrap(),
            attributes: Vec::new(),
            resource_type: Glob::new("repository").unwrap(),
            resource: Glob::new(resource).unwrap(),
            actions,
        }
    }

    fn account(name: &str) -> Principal {
        Principal {
            kind: Kind::Account,
            name: name.into(),
            attributes: BTreeMap::new(),
        }
    }

    fn scope(s: &str) -> Scope {
        s.parse().unwrap()
    }

    fn only(a: &[&str]) -> Actions {
        Actions::Only(a.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn first_match_wins() {
        let policy = Policy::new(vec![
            rule(None, "*", "public/**", only(&["pull"])),
            rule(Some(Kind::Account), "*", "**", Actions::All),
        ]);
        let d = policy.decide(&account("alice"), &[scope("repository:public/x:pull,push")]);
        assert_eq!(d[0].rule, Some(0));
        assert_eq!(
            d[0].grant.actions,
            ["pull"],
            "the later, wider rule must not apply"
        );
    }

    #[test]
    fn variables_bind_to_the_principal() {
        let policy = Policy::new(vec![rule(
            Some(Kind::Account),
            "*",
            "${name}/**",
            Actions::All,
        )]);
        let alice = account("alice");
        let d = policy.decide(
            &alice,
            &[
                scope("repository:alice/demo:pull,push"),
                scope("repository:bob/demo:pull,push"),
            ],
        );
        assert_eq!(d[0].grant.actions, ["pull", "push"]);
        assert!(d[1].grant.actions.is_empty());
        assert_eq!(d[1].rule, None);
        assert_eq!(granted(&d).len(), 1);
    }

    #[test]
    fn actions_are_intersected() {
        let policy = Policy::new(vec![rule(None, "*", "**", only(&["pull", "delete"]))]);
        let d = policy.decide(&account("a"), &[scope("repository:x:push,pull")]);
        assert_eq!(d[0].grant.actions, ["pull"]);
        let d = policy.decide(&account("a"), &[scope("repository:x:push")]);
        assert!(d[0].grant.actions.is_empty());
    }

    #[test]
    fn deny_by_default() {
        let policy = Policy::default();
        let d = policy.decide(&account("alice"), &[scope("repository:alice/demo:pull")]);
        assert!(granted(&d).is_empty());
    }

    #[test]
    fn kind_and_attributes_must_match() {
        let mut r = rule(Some(Kind::Account), "*", "**", Actions::All);
        r.attributes
            .push(("team".into(), Glob::new("dev-*").unwrap()));
        let policy = Policy::new(vec![r]);
        let mut dev = account("d");
        dev.attributes.insert("team".into(), "dev-a".into());
        let s = [scope("repository:x:pull")];
        assert_eq!(policy.decide(&dev, &s)[0].grant.actions, ["pull"]);
        assert!(policy.decide(&account("n"), &s)[0].grant.actions.is_empty());
        assert!(
            policy.decide(&Principal::anonymous(), &s)[0]
                .grant
                .actions
                .is_empty()
        );
    }

    #[test]
    fn anonymous_has_no_name_variable() {
        let policy = Policy::new(vec![rule(None, "*", "${name}**", Actions::All)]);
        let d = policy.decide(&Principal::anonymous(), &[scope("repository:x:pull")]);
        assert!(d[0].grant.actions.is_empty());
    }

    #[test]
    fn catalog_needs_an_explicit_rule() {
        let mut r = rule(None, "admin", "catalog", Actions::All);
        r.resource_type = Glob::new("registry").unwrap();
        let policy = Policy::new(vec![r, rule(None, "*", "**", Actions::All)]);
        let d = policy.decide(&account("admin"), &[scope("registry:catalog:*")]);
        assert_eq!(d[0].grant.actions, ["*"]);
        let d = policy.decide(&account("alice"), &[scope("registry:catalog:*")]);
        assert!(d[0].grant.actions.is_empty());
    }
}
