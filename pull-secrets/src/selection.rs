//! Which namespaces and ServiceAccounts get a pull Secret.

use k8s_openapi::api::core::v1::Namespace;

/// Which namespaces: a list of names, a label selector, or all; minus the
/// exclusions either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamespaceSelection {
    rule: Rule,
    exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    All,
    Names(Vec<String>),
    /// Evaluated by the API server (the namespace watch carries it).
    Labels(String),
}

impl NamespaceSelection {
    /// Every namespace but `exclude`.
    pub(crate) fn all(exclude: Vec<String>) -> Self {
        Self {
            rule: Rule::All,
            exclude,
        }
    }

    /// Exactly `names`, but `exclude`.
    pub(crate) fn names(names: Vec<String>, exclude: Vec<String>) -> Self {
        Self {
            rule: Rule::Names(names),
            exclude,
        }
    }

    /// The namespaces whose labels match `selector`, but `exclude`.
    pub(crate) fn selector(selector: &str, exclude: Vec<String>) -> Result<Self, String> {
        check_label_selector(selector)?;
        Ok(Self {
            rule: Rule::Labels(selector.trim().to_owned()),
            exclude,
        })
    }

    /// The configured names, when the selection is a list of names.
    pub(crate) fn listed(&self) -> Option<&[String]> {
        match &self.rule {
            Rule::Names(names) => Some(names),
            _ => None,
        }
    }

    /// Whether `name` is selected, judged by name alone (when the
    /// controller may not read namespaces): only a list of names can say.
    pub(crate) fn selects_name(&self, name: &str) -> bool {
        self.listed()
            .is_some_and(|names| names.iter().any(|n| n == name))
            && !self.exclude.iter().any(|e| e == name)
    }

    /// The label selector for the namespace watch, when there is one.
    pub(crate) fn label_selector(&self) -> Option<&str> {
        match &self.rule {
            Rule::Labels(s) => Some(s),
            _ => None,
        }
    }

    /// Whether `namespace`, as the (selector-filtered) watch delivered it,
    /// is selected. A namespace being deleted is not: its Secrets go with it.
    pub(crate) fn selects(&self, namespace: &Namespace) -> bool {
        let name = namespace.metadata.name.as_deref().unwrap_or_default();
        let terminating = namespace.metadata.deletion_timestamp.is_some();
        let listed = match &self.rule {
            Rule::Names(names) => names.iter().any(|n| n == name),
            Rule::All | Rule::Labels(_) => true,
        };
        listed && !terminating && !self.exclude.iter().any(|e| e == name)
    }
}

/// Which ServiceAccounts in a selected namespace: always by name, so that
/// RBAC `resourceNames` can confine the controller to their Secrets and
/// tokens (the config refuses `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceAccountSelection(Vec<String>);

impl ServiceAccountSelection {
    pub(crate) fn new(names: Vec<String>) -> Self {
        Self(names)
    }

    pub(crate) fn selects(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }

    /// The configured names.
    pub(crate) fn names(&self) -> &[String] {
        &self.0
    }
}

/// Checks the grammar of a label selector (`a=b`, `a!=b`, `a`, `!a`,
/// `a in (x,y)`, `a notin (x)`, joined by commas), so `check-config`
/// catches what the API would refuse at run time.
fn check_label_selector(selector: &str) -> Result<(), String> {
    if selector.trim().is_empty() {
        return Err("must not be empty; leave it out to select every namespace".into());
    }
    let mut depth = 0usize;
    let mut parts = vec![String::new()];
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced ')'")?,
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    for part in &parts {
        check_requirement(part.trim()).map_err(|e| format!("{part:?}: {e}"))?;
    }
    Ok(())
}

fn check_requirement(part: &str) -> Result<(), String> {
    if let Some(key) = part.strip_prefix('!') {
        return check_key(key.trim());
    }
    for op in ["!=", "==", "="] {
        if let Some((key, value)) = part.split_once(op) {
            check_key(key.trim())?;
            return check_value(value.trim());
        }
    }
    for op in [" notin ", " in "] {
        if let Some((key, set)) = part.split_once(op) {
            check_key(key.trim())?;
            let inner = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or("a set must be written (a,b)")?;
            return inner.split(',').try_for_each(|v| check_value(v.trim()));
        }
    }
    check_key(part)
}

fn check_key(key: &str) -> Result<(), String> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            let ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !ok {
                return Err(format!("bad key prefix in {key:?}"));
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("a label key is missing".into());
    }
    check_value(name)
}

fn check_value(value: &str) -> Result<(), String> {
    let chars_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends_ok = value.is_empty()
        || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if value.len() <= 63 && chars_ok && ends_ok {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label key or value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.to_owned());
        ns
    }

    #[test]
    fn names_exclusions_and_terminating_namespaces() {
        let all = NamespaceSelection::all(vec!["kube-system".into()]);
        assert!(all.selects(&namespace("team-a")));
        assert!(!all.selects(&namespace("kube-system")));
        let named = NamespaceSelection::names(vec!["team-a".into()], Vec::new());
        assert!(named.selects(&namespace("team-a")) && !named.selects(&namespace("team-b")));
        let mut going = namespace("team-a");
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(!all.selects(&going));
        // By name alone only a list of names selects.
        assert!(named.selects_name("team-a") && !named.selects_name("team-b"));
        assert!(!all.selects_name("team-a"));
        let excluded = NamespaceSelection::names(vec!["team-a".into()], vec!["team-a".into()]);
        assert!(!excluded.selects_name("team-a"));
    }

    #[test]
    fn selector_grammar() {
        for good in [
            "a=b",
            "a==b",
            "a!=b",
            "a",
            "!a",
            "env in (prod, dev)",
            "example.com/team notin (x),z",
        ] {
            assert!(
                NamespaceSelection::selector(good, Vec::new()).is_ok(),
                "{good}"
            );
        }
        for bad in ["", "a b", "=b", "a in x", "a in (x", "a)", "-a", "x/=y"] {
            assert!(
                NamespaceSelection::selector(bad, Vec::new()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn service_accounts_by_name_only() {
        let named = ServiceAccountSelection::new(vec!["default".into(), "builder".into()]);
        assert!(named.selects("builder") && !named.selects("deployer"));
        assert_eq!(named.names().len(), 2);
        // A literal "*" is no wildcard (the config refuses it anyway).
        assert!(!ServiceAccountSelection::new(vec!["*".into()]).selects("anything"));
    }
}
