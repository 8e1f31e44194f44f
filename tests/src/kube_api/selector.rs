//! Label selectors (`labelSelector=`) and the two field selectors the stub
//! understands (`metadata.name`, `metadata.namespace`), with the API's
//! grammar: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`,
//! joined by commas.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses the query parameter's value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self(requirements))
    }

    /// Whether an object (its `metadata.labels`) matches.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        })
    }
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let bad = || format!("unable to parse requirement: {part:?}");
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(
            label_key(key.trim()).ok_or_else(bad)?,
        ));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            label_key(key.trim()).ok_or_else(bad)?,
            label_value(value.trim()).ok_or_else(bad)?,
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(
            label_key(key.trim()).ok_or_else(bad)?,
            label_value(value.trim()).ok_or_else(bad)?,
        ));
    }
    for (word, negate) in [(" notin ", true), (" in ", false)] {
        if let Some((key, set)) = part.split_once(word) {
            let set = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(bad)?;
            let values = set
                .split(',')
                .map(|v| label_value(v.trim()).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            let key = label_key(key.trim()).ok_or_else(bad)?;
            return Ok(if negate {
                Requirement::NotIn(key, values)
            } else {
                Requirement::In(key, values)
            });
        }
    }
    Ok(Requirement::Exists(label_key(part).ok_or_else(bad)?))
}

/// A label key: optional DNS prefix and `/`, then a name of at most 63
/// characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
fn label_key(key: &str) -> Option<String> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !prefix_ok {
                return None;
            }
            name
        }
        None => key,
    };
    (!name.is_empty() && label_value(name).is_some()).then(|| key.to_owned())
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9._-]`
/// starting and ending alphanumeric.
fn label_value(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some(String::new());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ends_ok = value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    (value.len() <= 63 && ends_ok && value.chars().all(ok_char)).then(|| value.to_owned())
}

/// A field selector on `metadata.name` and/or `metadata.namespace`
/// (equality only), which is all the stub supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    name: Option<String>,
    namespace: Option<String>,
}

impl FieldSelector {
    /// Parses the query parameter's value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut selector = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value) = part
                .split_once("==")
                .or_else(|| part.split_once('='))
                .ok_or_else(|| format!("unsupported field selector {part:?}"))?;
            match field.trim() {
                "metadata.name" => selector.name = Some(value.trim().to_owned()),
                "metadata.namespace" => selector.namespace = Some(value.trim().to_owned()),
                other => return Err(format!("field label not supported: {other}")),
            }
        }
        Ok(selector)
    }

    /// Whether an object matches.
    pub fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        self.name
            .as_deref()
            .is_none_or(|n| meta["name"].as_str() == Some(n))
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| meta["namespace"].as_str().unwrap_or_default() == n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    #[test]
    fn every_operator() {
        let obj = labelled(json!({"team": "a", "env": "prod", "example.com/pull": "on"}));
        for (selector, expected) in [
            ("", true),
            ("team=a", true),
            ("team==a", true),
            ("team=b", false),
            ("team!=b", true),
            ("team", true),
            ("!team", false),
            ("missing", false),
            ("!missing", true),
            ("env in (prod,staging)", true),
            ("env notin (prod)", false),
            ("missing notin (x)", true),
            ("team=a,env in (prod, dev),example.com/pull=on", true),
            ("team=a,env=dev", false),
        ] {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&obj), expected, "{selector}");
        }
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for bad in ["a b", "=x", "a in x", "a=(b", "-a=b", "x/=y", "a=b c"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(FieldSelector::parse("spec.x=1").is_err());
    }

    #[test]
    fn field_selectors_on_name_and_namespace() {
        let obj = json!({"metadata": {"name": "n", "namespace": "ns"}});
        assert!(
            FieldSelector::parse("metadata.name=n")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace=other")
                .unwrap()
                .matches(&obj)
        );
    }
}
