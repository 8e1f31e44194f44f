//! The docker-credential-helpers wire protocol: the action in `argv[1]`, the
//! payload on stdin, JSON on stdout.

use std::io::Read;

use regauth_client::Secret;
use serde::{Deserialize, Serialize};

/// The exact text clients treat as "this helper has nothing for that registry".
pub const NOT_FOUND: &str = "credentials not found in native keychain";

/// The username that marks `Secret` as an identity (refresh) token.
pub(crate) const IDENTITY_TOKEN_USERNAME: &str = "<token>";

/// Longest stdin payload read.
const MAX_STDIN: u64 = 64 * 1024;

/// The reply to `get`: `{"ServerURL","Username","Secret"}`, in that order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Credentials {
    /// The server URL as asked.
    #[serde(rename = "ServerURL")]
    pub server_url: String,
    /// `<token>` for an identity token, else a username.
    #[serde(rename = "Username")]
    pub username: String,
    /// The secret.
    #[serde(rename = "Secret")]
    pub secret: Secret,
}

/// Why stdin could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Reading failed.
    #[error("cannot read stdin")]
    Read(#[source] std::io::Error),
    /// More than the limit arrived.
    #[error("input on stdin is larger than {} KiB", MAX_STDIN / 1024)]
    TooLarge,
    /// Not UTF-8.
    #[error("input on stdin is not UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

/// Reads a payload from `input` (stdin), bounded: a larger one is an error
/// that says so.
pub fn read_input(input: impl Read) -> Result<String, InputError> {
    let mut bytes = Vec::new();
    input
        .take(MAX_STDIN + 1)
        .read_to_end(&mut bytes)
        .map_err(InputError::Read)?;
    if bytes.len() as u64 > MAX_STDIN {
        return Err(InputError::TooLarge);
    }
    String::from_utf8(bytes).map_err(InputError::NotUtf8)
}

/// A `store` payload that is not `{"ServerURL","Username","Secret"}`.
#[derive(Debug, thiserror::Error)]
#[error("store expects {{\"ServerURL\",\"Username\",\"Secret\"}} on stdin")]
pub struct StoreError(#[source] serde_json::Error);

/// Validates a `store` payload; returns its server URL.
pub(crate) fn parse_store(payload: &str) -> Result<String, StoreError> {
    #[derive(Deserialize)]
    struct Store {
        #[serde(rename = "ServerURL")]
        server_url: String,
    }
    serde_json::from_str::<Store>(payload)
        .map(|s| s.server_url)
        .map_err(StoreError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_use_docker_field_names_and_hide_the_secret_from_debug() {
        let c = Credentials {
            server_url: "r".into(),
            username: "<token>".into(),
            secret: Secret::from("s3cret"),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"ServerURL":"r","Username":"<token>","Secret":"s3cret"}"#
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn store_payload() {
        assert_eq!(
            parse_store(r#"{"ServerURL":"r","Username":"u","Secret":"s"}"#).unwrap(),
            "r"
        );
        assert!(parse_store("nonsense").is_err());
    }

    #[test]
    fn input_is_bounded_and_utf8() {
        assert_eq!(read_input(&b"host:5000\n"[..]).unwrap(), "host:5000\n");
        let big = vec![b'a'; MAX_STDIN as usize + 1];
        assert!(matches!(read_input(&big[..]), Err(InputError::TooLarge)));
        assert!(matches!(
            read_input(&[0xff, 0xfe][..]),
            Err(InputError::NotUtf8(_))
        ));
    }
}
