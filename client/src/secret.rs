//! [`Secret`]: a token, password or key that never reaches a log.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// A token, password or private key.
///
/// `Debug` prints `***`, and there is no `Display`, so a secret held in a
/// struct that derives `Debug`, or passed to `tracing`, never shows up in a
/// log. Serialization is the bare string, so wire formats that carry the
/// secret (a docker helper reply, a kubelet response, a cache file) stay
/// byte-for-byte what their readers expect. Equality runs in constant time
/// for equal lengths.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value_and_serde_keeps_it() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""hunter2""#);
        let back: Secret = serde_json::from_str(r#""hunter2""#).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.expose(), "hunter2");
    }

    #[test]
    fn equality_compares_the_whole_value() {
        assert_eq!(Secret::from("abc"), Secret::from("abc".to_owned()));
        assert_ne!(Secret::from("abc"), Secret::from("abd"));
        assert_ne!(Secret::from("abc"), Secret::from("abcd"));
        assert!(Secret::default().is_empty());
    }
}
