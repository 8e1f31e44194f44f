//! `TokenRequest` and the service-account issuer's OIDC discovery, as
//! kube-apiserver serves them: tokens carry the real claim shape and are
//! signed with the stub's key, whose JWKS is published at
//! `/openid/v1/jwks`.

use serde_json::{Value, json};

use super::status::ApiError;
use crate::oidc_issuer::claims::random_uuid;
use crate::oidc_issuer::keys::IssuerKey;

/// The path of the discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// The path of the key set.
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// The API's minimum `expirationSeconds`.
pub const MIN_EXPIRATION: i64 = 600;
/// The lifetime when the request names none.
const DEFAULT_EXPIRATION: i64 = 3600;
/// The API's maximum (2^32 seconds).
const MAX_EXPIRATION: i64 = 1 << 32;

/// The discovery document of the issuer at `issuer`.
pub fn discovery(issuer: &str, key: &IssuerKey) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [key.alg().name()],
    })
}

/// The key set.
pub fn jwks(key: &IssuerKey) -> Value {
    json!({"keys": [key.jwk()]})
}

/// Answers a `TokenRequest` for the service account `sa` (as stored) in
/// `namespace`: validates the spec, mints the token, and returns the
/// `TokenRequest` with its `status`. `iat` is now, in seconds since the epoch.
pub fn token_request(
    key: &IssuerKey,
    issuer: &str,
    sa: &Value,
    body: &Value,
    iat: i64,
) -> Result<Value, ApiError> {
    if body["apiVersion"] != "authentication.k8s.io/v1" || body["kind"] != "TokenRequest" {
        return Err(ApiError::bad_request(
            "the body must be an authentication.k8s.io/v1 TokenRequest",
        ));
    }
    let spec = &body["spec"];
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION,
        v => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    if expiration < MIN_EXPIRATION {
        return Err(ApiError::invalid(format!(
            "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration less than 10 minutes"
        )));
    }
    if expiration > MAX_EXPIRATION {
        return Err(ApiError::invalid(format!(
            "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration greater than 2^32 seconds"
        )));
    }
    let audiences: Vec<String> = match &spec["audiences"] {
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("spec.audiences must be strings"))?,
        _ => vec![issuer.to_owned()],
    };
    let namespace = sa["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = sa["metadata"]["name"].as_str().unwrap_or_default();
    let uid = sa["metadata"]["uid"].as_str().unwrap_or_default();
    let exp = iat + expiration;
    let claims = json!({
        "aud": audiences,
        "exp": exp,
        "iat": iat,
        "iss": issuer,
        "jti": random_uuid(),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uid},
        },
        "nbf": iat,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    });
    let token = key.sign(&claims);
    let expires = k8s_openapi::jiff::Timestamp::from_second(exp)
        .map_err(|e| ApiError::invalid(format!("spec.expirationSeconds: {e}")))?;
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": null},
        "status": {"token": token, "expirationTimestamp": expires.to_string()},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::unverified_claims;
    use crate::oidc_issuer::KeyAlg;

    fn request(expiration: i64) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": ["registry.test"], "expirationSeconds": expiration}})
    }

    #[test]
    fn mints_the_real_claim_shape_and_enforces_the_minimum_lifetime() {
        let key = IssuerKey::generate(KeyAlg::Es256);
        let sa = json!({"metadata": {"name": "default", "namespace": "team-a", "uid": "u-1"}});
        let reply = token_request(
            &key,
            "http://issuer",
            &sa,
            &request(600),
            crate::oidc_issuer::claims::now(),
        )
        .unwrap();
        let claims = unverified_claims(reply["status"]["token"].as_str().unwrap());
        assert_eq!(claims["sub"], "system:serviceaccount:team-a:default");
        assert_eq!(claims["aud"], json!(["registry.test"]));
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], "u-1");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            600
        );
        let err = token_request(
            &key,
            "http://issuer",
            &sa,
            &request(599),
            crate::oidc_issuer::claims::now(),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
    }
}
