//! The registry scope grammar: `type[(class)]:name:action[,action...]`.
//!
//! Resource names may begin with `host:port/`, so a scope is split at its
//! first and last colon, never at every colon. The optional `(class)` is
//! accepted and dropped, as registries ignore it.

use std::fmt;
use std::str::FromStr;

/// Longest scope string accepted; real repository names stay far below it.
pub const MAX_SCOPE_LEN: usize = 512;

/// Why a scope string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The string is longer than [`MAX_SCOPE_LEN`].
    #[error("scope is longer than {MAX_SCOPE_LEN} bytes")]
    TooLong,
    /// Fewer than three colon-separated parts.
    #[error("scope {0:?} is not of the form type:name:actions")]
    Shape(String),
    /// The resource type has characters outside `[a-z0-9]` or an unclosed class.
    #[error("scope {0:?} has an invalid resource type")]
    Type(String),
    /// The resource name is empty or has characters a repository name cannot have.
    #[error("scope {0:?} has an invalid resource name")]
    Name(String),
    /// An action is empty or not made of `[a-z*]`.
    #[error("scope {0:?} has an invalid action list")]
    Actions(String),
}

/// One action on a resource, such as `pull` or `push`; `*` is kept as is.
pub type Action = String;

/// A parsed resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Resource type, e.g. `repository` or `registry`.
    pub resource_type: String,
    /// Resource name, e.g. `alice/demo` or `localhost:5000/alice/demo`.
    pub name: String,
    /// Requested actions, deduplicated, in request order.
    pub actions: Vec<Action>,
}

impl Scope {
    /// True for `registry:catalog:*`, the scope that lists repositories.
    pub fn is_catalog(&self) -> bool {
        self.resource_type == "registry" && self.name == "catalog"
    }
}

fn valid_type(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn valid_name(n: &str) -> bool {
    // Repository names are lowercase path components with separators; a
    // registry host prefix may add uppercase, digits and a `:port`.
    !n.is_empty()
        && !n.starts_with('/')
        && !n.ends_with('/')
        && !n.contains("//")
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
}

fn valid_action(a: &str) -> bool {
    a == "*" || (!a.is_empty() && a.bytes().all(|b| b.is_ascii_lowercase()))
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong);
        }
        let shape = || ScopeError::Shape(s.to_owned());
        let (type_part, rest) = s.split_once(':').ok_or_else(shape)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(shape)?;

        let resource_type = match type_part.split_once('(') {
            Some((t, class))
                if class.ends_with(')') && !class[..class.len() - 1].contains(['(', ')']) =>
            {
                t
            }
            Some(_) => return Err(ScopeError::Type(s.to_owned())),
            None => type_part,
        };
        if !valid_type(resource_type) {
            return Err(ScopeError::Type(s.to_owned()));
        }
        if !valid_name(name) {
            return Err(ScopeError::Name(s.to_owned()));
        }
        let mut parsed: Vec<Action> = Vec::new();
        for a in actions.split(',') {
            if !valid_action(a) {
                return Err(ScopeError::Actions(s.to_owned()));
            }
            if !parsed.iter().any(|p| p == a) {
                parsed.push(a.to_owned());
            }
        }
        Ok(Scope {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions: parsed,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.resource_type,
            self.name,
            self.actions.join(",")
        )
    }
}

/// Parses every scope in `values`, where each value may itself hold several
/// space-separated scopes (the OAuth2 form) or be repeated (the GET form).
/// Requests for the same resource are merged so each appears once.
pub fn parse_all<'a, I>(values: I, max: usize) -> Result<Vec<Scope>, ScopeListError>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut out: Vec<Scope> = Vec::new();
    for value in values {
        for raw in value.split_ascii_whitespace() {
            let scope: Scope = raw.parse()?;
            if let Some(existing) = out
                .iter_mut()
                .find(|e| e.resource_type == scope.resource_type && e.name == scope.name)
            {
                for a in scope.actions {
                    if !existing.actions.contains(&a) {
                        existing.actions.push(a);
                    }
                }
            } else {
                if out.len() == max {
                    return Err(ScopeListError::TooMany(max));
                }
                out.push(scope);
            }
        }
    }
    Ok(out)
}

/// Why a list of scopes was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeListError {
    /// One scope did not parse.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// More distinct resources than the server accepts in one request.
    #[error("more than {0} scopes in one request")]
    TooMany(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Scope {
        s.parse().unwrap()
    }

    #[test]
    fn parses_plain_repository_scope() {
        let s = p("repository:alice/demo:pull,push");
        assert_eq!(s.resource_type, "repository");
        assert_eq!(s.name, "alice/demo");
        assert_eq!(s.actions, ["pull", "push"]);
    }

    #[test]
    fn host_port_names_keep_their_colon() {
        let s = p("repository:localhost:5000/alice/demo:pull");
        assert_eq!(s.name, "localhost:5000/alice/demo");
        assert_eq!(s.actions, ["pull"]);
    }

    #[test]
    fn class_is_accepted_and_dropped() {
        let s = p("repository(plugin):alice/demo:pull");
        assert_eq!(s.resource_type, "repository");
        assert_eq!(s.to_string(), "repository:alice/demo:pull");
    }

    #[test]
    fn catalog_scope() {
        let s = p("registry:catalog:*");
        assert!(s.is_catalog());
        assert_eq!(s.actions, ["*"]);
    }

    #[test]
    fn duplicate_actions_collapse() {
        assert_eq!(p("repository:a:pull,pull,push").actions, ["pull", "push"]);
    }

    #[test]
    fn malformed_scopes_are_errors() {
        for bad in [
            "",
            "repository",
            "repository:alice",
            ":alice:pull",
            "repository::pull",
            "repository:alice:",
            "repository:alice:pull,,push",
            "Repository:alice:pull",
            "repository(x:alice:pull",
            "repository(a)(b):alice:pull",
            "repository:al ice:pull",
            "repository:/alice:pull",
            "repository:alice//x:pull",
            "repository:alice:PULL",
            "repository:alice\u{e9}:pull",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?} parsed");
        }
        assert_eq!("x".repeat(600).parse::<Scope>(), Err(ScopeError::TooLong));
    }

    #[test]
    fn parse_all_splits_merges_and_bounds() {
        let scopes = parse_all(
            ["repository:a:pull repository:b:push", "repository:a:push"],
            8,
        )
        .unwrap();
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].actions, ["pull", "push"]);
        let many: Vec<String> = (0..5).map(|i| format!("repository:r{i}:pull")).collect();
        assert_eq!(
            parse_all(many.iter().map(String::as_str), 4),
            Err(ScopeListError::TooMany(4))
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Scope>();
        }

        #[test]
        fn display_round_trips(
            t in "[a-z]{1,10}",
            host in proptest::option::of("[a-z0-9.-]{1,12}:[0-9]{1,5}"),
            path in "[a-z0-9]{1,8}(/[a-z0-9._-]{1,8}){0,3}",
            actions in proptest::collection::vec("[a-z]{1,6}|\\*", 1..4),
        ) {
            let name = match host { Some(h) => format!("{h}/{path}"), None => path };
            let text = format!("{t}:{name}:{}", actions.join(","));
            let scope: Scope = text.parse().unwrap();
            prop_assert_eq!(&scope.name, &name);
            let again: Scope = scope.to_string().parse().unwrap();
            prop_assert_eq!(again, scope);
        }
    }
}
