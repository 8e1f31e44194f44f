//! Reading a JWT's claims without verifying it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The claims of a compact JWS, **unverified**: for describing a token, or
/// reading the lifetime of one the token server just issued over TLS. Never
/// base a trust decision on them. `None` when `token` is not three
/// dot-separated parts with a base64url JSON object in the middle.
pub fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()? {
        serde_json::Value::Object(claims) => Some(claims),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_text_never_panics() {
        for text in [
            "..",
            "...",
            "a.\u{0}.b",
            ".e30.",
            "\u{feff}.e30.x",
            &"a.".repeat(10_000),
        ] {
            let _ = unverified_claims(text);
        }
    }

    #[test]
    fn claims_of_well_formed_tokens_only() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"a","exp":5}"#);
        let claims = unverified_claims(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!(claims["exp"], 5);
        for bad in [
            "",
            "opaque",
            "a.b",
            "e30.!!!.sig",
            &format!("e30.{payload}.sig.extra"),
            &format!("e30.{}.sig", URL_SAFE_NO_PAD.encode("[1]")),
        ] {
            assert!(unverified_claims(bad).is_none(), "{bad:?}");
        }
    }
}
