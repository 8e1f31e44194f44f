//! Reading a compact JWS (a subject token) before its signature is checked:
//! exactly three parts, a header and claims that are JSON objects with no
//! duplicate member at any depth, an accepted `alg`, and no `crit`.
//!
//! A JSON parser that lets a later duplicate win would let a token say one
//! thing to the verifier and another to whoever reads the claims after it;
//! refusing duplicates everywhere closes that gap.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::subject_token::SubjectTokenError;

/// Longest subject token accepted.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Signature algorithms accepted from issuers.
pub const ALLOWED_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// A subject token's parts, parsed but not verified.
#[derive(Debug)]
pub struct Unverified {
    /// The signature algorithm the header names (one of [`ALLOWED_ALGORITHMS`]).
    pub alg: Algorithm,
    /// The key ID the header names.
    pub kid: Option<String>,
    /// The claims.
    pub claims: Map<String, Value>,
}

impl Unverified {
    /// The `iss` claim.
    pub fn issuer(&self) -> Result<&str, SubjectTokenError> {
        self.claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(SubjectTokenError::Claim("iss"))
    }
}

/// Parses `token`'s header and claims. Reads `alg` before anything else, so
/// `none`, HMAC and unknown algorithms are refused by name.
pub fn parse(token: &str) -> Result<Unverified, SubjectTokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(SubjectTokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SubjectTokenError::Malformed);
    };
    let header = object(header)?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Algorithm::RS256,
        Some("ES256") => Algorithm::ES256,
        Some("PS256") => Algorithm::PS256,
        Some("EdDSA") => Algorithm::EdDSA,
        _ => return Err(SubjectTokenError::Algorithm),
    };
    // RFC 7515 4.1.11: a recipient that does not understand every listed
    // extension must reject the token, and an empty list is invalid; this
    // server understands none.
    if header.contains_key("crit") {
        return Err(SubjectTokenError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(SubjectTokenError::Malformed),
    };
    Ok(Unverified {
        alg,
        kid,
        claims: object(payload)?,
    })
}

/// Decodes one base64url part into a JSON object without duplicate members.
fn object(part: &str) -> Result<Map<String, Value>, SubjectTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| SubjectTokenError::Malformed)?;
    match strict_json(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(SubjectTokenError::Malformed),
        // The visitor accepts every JSON type, so the only data error it
        // raises is the duplicate; syntax and EOF errors are malformed input.
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(SubjectTokenError::DuplicateMember)
        }
        Err(_) => Err(SubjectTokenError::Malformed),
    }
}

/// Parses JSON, refusing an object that names a member twice, at any depth.
pub fn strict_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    Ok(serde_json::from_slice::<Strict>(bytes)?.0)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate member {key:?}")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token(header: &str, claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn duplicates_are_refused_at_every_depth() {
        for claims in [
            r#"{"iss":"a","iss":"b"}"#,
            r#"{"iss":"a","kubernetes.io":{"namespace":"x","namespace":"kube-system"}}"#,
            r#"{"iss":"a","kubernetes.io":{"node":{"name":"n1","name":"n2"}}}"#,
            r#"{"iss":"a","list":[{"k":1,"k":2}]}"#,
        ] {
            let err = parse(&token(r#"{"alg":"ES256"}"#, claims)).unwrap_err();
            assert!(
                matches!(err, SubjectTokenError::DuplicateMember),
                "{claims}: {err:?}"
            );
        }
        let err = parse(&token(r#"{"alg":"ES256","alg":"none"}"#, r#"{"iss":"a"}"#)).unwrap_err();
        assert!(matches!(err, SubjectTokenError::DuplicateMember), "{err:?}");
        let ok = parse(&token(
            r#"{"alg":"ES256","kid":"k"}"#,
            r#"{"iss":"a","kubernetes.io":{"namespace":"x","pod":{"name":"p"}},"n":1.5}"#,
        ))
        .unwrap();
        assert_eq!(ok.kid.as_deref(), Some("k"));
        assert_eq!(ok.issuer().unwrap(), "a");
        assert_eq!(ok.claims["kubernetes.io"]["namespace"], "x");
    }

    #[test]
    fn crit_is_refused_even_when_empty() {
        for header in [
            r#"{"alg":"ES256","crit":["urn:x:unknown"],"urn:x:unknown":1}"#,
            r#"{"alg":"ES256","crit":[]}"#,
        ] {
            let err = parse(&token(header, r#"{"iss":"a"}"#)).unwrap_err();
            assert!(matches!(err, SubjectTokenError::CriticalHeader), "{header}");
        }
    }

    #[test]
    fn alg_shape_and_size_are_checked_first() {
        for (header, claims) in [
            (r#"{"alg":"none"}"#, r#"{}"#),
            (r#"{"alg":"HS256"}"#, r#"{}"#),
            (r#"{}"#, r#"{}"#),
        ] {
            assert!(matches!(
                parse(&token(header, claims)),
                Err(SubjectTokenError::Algorithm)
            ));
        }
        for bad in [
            "a.b",
            "a.b.c.d",
            "!!.e30.c2ln",
            &token(r#"{"alg":"ES256","kid":7}"#, "{}"),
            &token(r#"{"alg":"ES256"}"#, "[1]"),
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(parse(bad), Err(SubjectTokenError::Malformed)),
                "{bad:.40}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn strict_json_agrees_with_serde_json_without_duplicates(
            v in proptest::collection::btree_map("[a-z]{1,4}", any::<i64>(), 0..8)
        ) {
            let text = serde_json::to_vec(&v).unwrap();
            prop_assert_eq!(strict_json(&text).unwrap(), serde_json::from_slice::<Value>(&text).unwrap());
        }
    }
}
