//! Authorization as kube-apiserver's RBAC authorizer decides it, for the
//! roles and bindings a test loads (normally the shipped manifests).
//!
//! Modelled exactly as the API documents it:
//! - a request is allowed when any rule of any role bound to the user, one
//!   of its groups or its ServiceAccount allows it; there is no deny;
//! - a ClusterRoleBinding grants everywhere, a RoleBinding only in its own
//!   namespace (whether it refers to a Role or a ClusterRole);
//! - `resourceNames` restricts `get`, `update`, `patch` and `delete` by the
//!   name in the path; it restricts `list` and `watch` only when the request
//!   carries a `fieldSelector` with `metadata.name=NAME` (or `==`), and a
//!   list without one never matches such a rule; it never matches `create`
//!   on a collection, whose name is not known at authorization time. A
//!   `create` on a subresource (`serviceaccounts/NAME/token`) carries the
//!   parent's name;
//! - a server-side apply is a `patch`, and one that creates the object must
//!   also be allowed `create` (checked without a name, as a `create`);
//! - `system:masters` may do anything; every authenticated user is in
//!   `system:authenticated`, a ServiceAccount also in `system:serviceaccounts`
//!   and `system:serviceaccounts:NAMESPACE`; discovery paths (`/api`,
//!   `/apis`, `/version`) are open to every authenticated user, as the
//!   default `system:discovery` binding makes them.
//!
//! **Not modelled:** aggregated ClusterRoles, `nonResourceURLs` rules,
//! the `bind`, `escalate` and `impersonate` verbs, and `deletecollection`.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use serde_json::Value;

/// The group whose members bypass authorization, as in a real cluster.
pub const MASTERS: &str = "system:masters";

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name (`system:serviceaccount:NS:NAME` for a ServiceAccount).
    pub name: String,
    /// The groups, besides the ones every user of its kind is in.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user with no groups of its own.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            groups: Vec::new(),
        }
    }

    /// The ServiceAccount `namespace/name`, as its token authenticates it.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self::new(&format!("system:serviceaccount:{namespace}:{name}"))
    }

    /// Every group the user is in, implicit ones included.
    fn all_groups(&self) -> Vec<String> {
        let mut groups = self.groups.clone();
        if self.name == super::ANONYMOUS {
            groups.push("system:unauthenticated".to_owned());
            return groups;
        }
        groups.push("system:authenticated".to_owned());
        if let Some(rest) = self.name.strip_prefix("system:serviceaccount:")
            && let Some((namespace, _)) = rest.split_once(':')
        {
            groups.push("system:serviceaccounts".to_owned());
            groups.push(format!("system:serviceaccounts:{namespace}"));
        }
        groups
    }
}

/// What a resource request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: String,
    /// The API group (`""` for core).
    pub group: String,
    /// The resource plural.
    pub resource: String,
    /// The subresource (`""` for none).
    pub subresource: String,
    /// The namespace (`""` for cluster scope).
    pub namespace: String,
    /// The object's name as the authorizer knows it (`""` when unknown).
    pub name: String,
}

impl Attributes {
    /// `resource` or `resource/subresource`, as rules name it.
    fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// The API's Forbidden message for this request.
    pub fn forbidden_message(&self, user: &str) -> String {
        let object = if self.name.is_empty() || matches!(self.verb.as_str(), "list" | "watch") {
            self.resource_path()
        } else {
            format!("{} \"{}\"", self.resource_path(), self.name)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!(
            "{object} is forbidden: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            self.verb,
            self.resource_path(),
            self.group
        )
    }
}

/// One binding: who, which rules, where.
#[derive(Debug, Clone)]
struct Binding {
    /// `None` for a ClusterRoleBinding.
    namespace: Option<String>,
    subjects: Vec<Subject>,
    rules: Vec<PolicyRule>,
}

/// The loaded roles and bindings.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    cluster_roles: Vec<ClusterRole>,
    roles: Vec<Role>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    role_bindings: Vec<RoleBinding>,
}

impl Rbac {
    /// Adds the RBAC objects among `documents` (other kinds are skipped);
    /// namespaced ones without a namespace go to `namespace`, as
    /// `kubectl apply -n NAMESPACE` would put them.
    pub fn load(&mut self, documents: &[Value], namespace: &str) -> Result<(), String> {
        for doc in documents {
            if doc["apiVersion"] != "rbac.authorization.k8s.io/v1" {
                continue;
            }
            let mut doc = doc.clone();
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            if matches!(kind.as_str(), "Role" | "RoleBinding")
                && doc["metadata"]["namespace"]
                    .as_str()
                    .is_none_or(str::is_empty)
            {
                doc["metadata"]["namespace"] = namespace.into();
            }
            let bad = |e: serde_json::Error| format!("{kind}: {e}");
            match kind.as_str() {
                "ClusterRole" => self
                    .cluster_roles
                    .push(serde_json::from_value(doc).map_err(bad)?),
                "Role" => self.roles.push(serde_json::from_value(doc).map_err(bad)?),
                "ClusterRoleBinding" => self
                    .cluster_role_bindings
                    .push(serde_json::from_value(doc).map_err(bad)?),
                "RoleBinding" => self
                    .role_bindings
                    .push(serde_json::from_value(doc).map_err(bad)?),
                other => return Err(format!("unknown RBAC kind {other}")),
            }
        }
        Ok(())
    }

    /// Whether `user` may do `request`.
    pub fn allows(&self, user: &UserInfo, request: &Attributes) -> bool {
        let groups = user.all_groups();
        if groups.iter().any(|g| g == MASTERS) {
            return true;
        }
        self.bindings()
            .filter(|b| {
                b.namespace
                    .as_deref()
                    .is_none_or(|ns| ns == request.namespace)
            })
            .filter(|b| b.subjects.iter().any(|s| names(s, user, &groups)))
            .any(|b| b.rules.iter().any(|r| rule_allows(r, request)))
    }

    fn bindings(&self) -> impl Iterator<Item = Binding> + '_ {
        let cluster = self.cluster_role_bindings.iter().map(|b| Binding {
            namespace: None,
            subjects: b.subjects.clone().unwrap_or_default(),
            rules: self.rules_of(&b.role_ref.kind, &b.role_ref.name, None),
        });
        let namespaced = self.role_bindings.iter().map(|b| {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            Binding {
                rules: self.rules_of(&b.role_ref.kind, &b.role_ref.name, Some(&ns)),
                namespace: Some(ns),
                subjects: b.subjects.clone().unwrap_or_default(),
            }
        });
        cluster.chain(namespaced)
    }

    /// The rules of the role a binding refers to; a missing role grants
    /// nothing, as in the API.
    fn rules_of(&self, kind: &str, name: &str, namespace: Option<&str>) -> Vec<PolicyRule> {
        match kind {
            "ClusterRole" => self
                .cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name))
                .and_then(|r| r.rules.clone())
                .unwrap_or_default(),
            "Role" => self
                .roles
                .iter()
                .find(|r| {
                    r.metadata.name.as_deref() == Some(name)
                        && r.metadata.namespace.as_deref() == namespace
                })
                .and_then(|r| r.rules.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// Whether a binding subject names this user.
fn names(subject: &Subject, user: &UserInfo, groups: &[String]) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => groups.contains(&subject.name),
        "ServiceAccount" => {
            let namespace = subject.namespace.as_deref().unwrap_or_default();
            user.name == format!("system:serviceaccount:{namespace}:{}", subject.name)
        }
        _ => false,
    }
}

fn rule_allows(rule: &PolicyRule, request: &Attributes) -> bool {
    let any = |list: &Option<Vec<String>>, value: &str| {
        list.iter().flatten().any(|v| v == "*" || v == value)
    };
    let resource = request.resource_path();
    let resource_ok = rule.resources.iter().flatten().any(|r| {
        *r == "*"
            || *r == resource
            || r.strip_prefix("*/")
                .is_some_and(|sub| !request.subresource.is_empty() && sub == request.subresource)
    });
    if !rule.verbs.iter().any(|v| v == "*" || *v == request.verb)
        || !any(&rule.api_groups, &request.group)
        || !resource_ok
    {
        return false;
    }
    match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(allowed) => {
            // A collection create has no name when it is authorized.
            let named = !(request.verb == "create" && request.subresource.is_empty());
            named && !request.name.is_empty() && allowed.contains(&request.name)
        }
    }
}

/// The name the authorizer sees for a `list` or `watch`: the value of a
/// `metadata.name` equality in its field selector, if any.
pub fn name_from_field_selector(selector: &str) -> Option<String> {
    selector.split(',').find_map(|part| {
        let (field, value) = part.split_once("==").or_else(|| part.split_once('='))?;
        if field.trim() == "metadata.name" {
            Some(value.trim().to_owned())
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, resource: &str, ns: &str, name: &str) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn rbac() -> Rbac {
        let docs = vec![
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "ctl"},
            "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ours"],
                 "verbs": ["get", "list", "watch", "patch", "delete", "create"]},
                {"apiGroups": [""], "resources": ["serviceaccounts/token"],
                 "resourceNames": ["default"], "verbs": ["create"]},
            ]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "ctl"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ctl"},
                "subjects": [{"kind": "ServiceAccount", "name": "ctl", "namespace": "sys"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "lease"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "lease"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
                "subjects": [{"kind": "ServiceAccount", "name": "ctl", "namespace": "sys"}]}),
        ];
        let mut rbac = Rbac::default();
        rbac.load(&docs, "sys").unwrap();
        rbac
    }

    #[test]
    fn resource_names_restrict_as_the_api_documents() {
        let rbac = rbac();
        let ctl = UserInfo::service_account("sys", "ctl");
        assert!(rbac.allows(&ctl, &attrs("get", "secrets", "a", "ours")));
        assert!(!rbac.allows(&ctl, &attrs("get", "secrets", "a", "theirs")));
        // list and watch only with a matching field selector.
        assert!(rbac.allows(&ctl, &attrs("list", "secrets", "", "ours")));
        assert!(!rbac.allows(&ctl, &attrs("list", "secrets", "", "")));
        assert!(!rbac.allows(&ctl, &attrs("watch", "secrets", "a", "")));
        // A collection create is never restricted by name, so this rule
        // cannot allow it at all.
        assert!(!rbac.allows(&ctl, &attrs("create", "secrets", "a", "ours")));
        // A subresource create carries its parent's name.
        assert!(rbac.allows(
            &ctl,
            &attrs("create", "serviceaccounts/token", "a", "default")
        ));
        assert!(!rbac.allows(
            &ctl,
            &attrs("create", "serviceaccounts/token", "a", "admin")
        ));
        // A RoleBinding grants in its own namespace only.
        let configmap = |ns: &str| Attributes {
            resource: "configmaps".into(),
            ..attrs("get", "configmaps", ns, "x")
        };
        assert!(rbac.allows(&ctl, &configmap("sys")));
        assert!(!rbac.allows(&ctl, &configmap("other")));
        // Anyone else: nothing; masters: everything.
        assert!(!rbac.allows(
            &UserInfo::new("alice"),
            &attrs("get", "secrets", "a", "ours")
        ));
        let admin = UserInfo {
            name: "admin".into(),
            groups: vec![MASTERS.into()],
        };
        assert!(rbac.allows(&admin, &attrs("list", "secrets", "", "")));
    }

    #[test]
    fn the_name_of_a_list_comes_from_its_field_selector() {
        assert_eq!(
            name_from_field_selector("metadata.name=x").as_deref(),
            Some("x")
        );
        assert_eq!(
            name_from_field_selector("metadata.namespace=a,metadata.name==x").as_deref(),
            Some("x")
        );
        assert_eq!(name_from_field_selector("metadata.name!=x"), None);
        assert_eq!(name_from_field_selector(""), None);
    }

    #[test]
    fn forbidden_messages_read_like_the_apis() {
        assert_eq!(
            attrs("list", "secrets", "", "").forbidden_message("u"),
            "secrets is forbidden: User \"u\" cannot list resource \"secrets\" in API group \"\" at the cluster scope"
        );
        assert_eq!(
            attrs("create", "serviceaccounts/token", "plain", "default").forbidden_message("u"),
            "serviceaccounts/token \"default\" is forbidden: User \"u\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"plain\""
        );
    }
}
