//! Strict `application/x-www-form-urlencoded` parsing for query strings and
//! POST bodies. Repeated keys are kept (GET sends `scope` several times) and
//! anything that does not decode to UTF-8 is an error, not a replacement
//! character.

use percent_encoding::percent_decode;

/// Why a form could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// A key or value is not valid UTF-8 after percent-decoding.
    #[error("parameter is not valid UTF-8")]
    NotUtf8,
    /// More pairs than any real client sends.
    #[error("too many parameters (more than {0})")]
    TooMany(usize),
}

/// Most key/value pairs accepted in one form.
pub const MAX_PAIRS: usize = 128;

/// The decoded pairs of a form, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Parses `input`.
    pub fn parse(input: &[u8]) -> Result<Self, FormError> {
        let mut pairs = Vec::new();
        for part in input.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_PAIRS {
                return Err(FormError::TooMany(MAX_PAIRS));
            }
            let (k, v) = match part.iter().position(|&b| b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &[][..]),
            };
            pairs.push((decode(k)?, decode(v)?));
        }
        Ok(Form(pairs))
    }

    /// The first value of `key`; empty values count as absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every pair whose key starts with `prefix`, prefix removed.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|k| (k, v.as_str())))
    }

    /// Every value of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn decode(raw: &[u8]) -> Result<String, FormError> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_repeats_and_plus() {
        let f = Form::parse(b"scope=repository%3Aa%3Apull&scope=b+c&service=&x").unwrap();
        assert_eq!(
            f.all("scope").collect::<Vec<_>>(),
            ["repository:a:pull", "b c"]
        );
        assert_eq!(f.get("service"), None);
        assert_eq!(f.get("x"), None);
        assert_eq!(f.get("missing"), None);
    }

    #[test]
    fn rejects_invalid_utf8_and_floods() {
        assert_eq!(Form::parse(b"a=%ff%fe"), Err(FormError::NotUtf8));
        assert_eq!(Form::parse(b"a=\xff"), Err(FormError::NotUtf8));
        let many = "a=b&".repeat(MAX_PAIRS + 1);
        assert_eq!(
            Form::parse(many.as_bytes()),
            Err(FormError::TooMany(MAX_PAIRS))
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Form::parse(&bytes);
        }
    }
}
