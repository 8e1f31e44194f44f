//! Kubernetes service-account tokens: their claims as a principal.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::subject_token::SubjectTokenError;
use super::{Kind, Principal};

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Maps a projected service-account token: `sub` must agree with the
/// `kubernetes.io` claim, so the two cannot be mixed from different accounts.
pub(crate) fn principal(
    claims: &Map<String, Value>,
    issuer_name: &str,
) -> Result<Principal, SubjectTokenError> {
    let k8s = claims
        .get("kubernetes.io")
        .ok_or(SubjectTokenError::Claim("kubernetes.io"))?;
    let namespace =
        text(k8s, "/namespace").ok_or(SubjectTokenError::Claim("kubernetes.io.namespace"))?;
    let sa = text(k8s, "/serviceaccount/name")
        .ok_or(SubjectTokenError::Claim("kubernetes.io.serviceaccount"))?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(SubjectTokenError::Claim("sub"))?;
    let expected = format!("system:serviceaccount:{namespace}:{sa}");
    if sub != expected {
        return Err(SubjectTokenError::SubjectMismatch);
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("issuer".to_owned(), issuer_name.to_owned());
    attributes.insert("namespace".to_owned(), namespace.to_owned());
    attributes.insert("service_account".to_owned(), sa.to_owned());
    for (attr, pointer) in [
        ("service_account_uid", "/serviceaccount/uid"),
        ("pod", "/pod/name"),
        ("pod_uid", "/pod/uid"),
        ("node", "/node/name"),
        ("node_uid", "/node/uid"),
    ] {
        if let Some(v) = text(k8s, pointer) {
            attributes.insert(attr.to_owned(), v.to_owned());
        }
    }
    Ok(Principal {
        kind: Kind::Kubernetes,
        name: expected,
        attributes,
    })
}
