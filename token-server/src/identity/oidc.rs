//! OIDC ID tokens (CI systems such as GitHub Actions or GitLab): their
//! claims as a principal.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::subject_token::SubjectTokenError;
use super::{Kind, Principal};

/// Maps an OIDC token: the name from `name_claim`, every scalar top-level
/// claim as `claims.NAME`.
pub(crate) fn principal(
    claims: &Map<String, Value>,
    issuer_name: &str,
    name_claim: &str,
) -> Result<Principal, SubjectTokenError> {
    let name = claims
        .get(name_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(SubjectTokenError::Claim("name claim"))?;
    let mut attributes = BTreeMap::new();
    attributes.insert("issuer".to_owned(), issuer_name.to_owned());
    for (k, v) in claims {
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        attributes.insert(format!("claims.{k}"), value);
    }
    Ok(Principal {
        kind: Kind::Oidc,
        name: name.to_owned(),
        attributes,
    })
}
