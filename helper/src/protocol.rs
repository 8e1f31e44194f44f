//! The docker-credential-helpers wire protocol: the action in `argv[1]`, the
//! payload on stdin, JSON on stdout.

use std::io::Read;

use serde::{Deserialize, Serialize};

/// The exact text clients treat as "this helper has nothing for that registry".
pub const NOT_FOUND: &str = "credentials not found in native keychain";

/// The username that marks `Secret` as an identity (refresh) token.
pub const IDENTITY_TOKEN_USERNAME: &str = "<token>";

/// Longest stdin payload read.
const MAX_STDIN: u64 = 64 * 1024;

/// The reply to `get`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// The server URL as asked.
    #[serde(rename = "ServerURL")]
    pub server_url: String,
    /// `<token>` for an identity token, else a username.
    #[serde(rename = "Username")]
    pub username: String,
    /// The secret.
    #[serde(rename = "Secret")]
    pub secret: String,
}

/// Reads the stdin payload, bounded: a larger one is an error that says so.
pub fn read_stdin() -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STDIN {
        return Err(std::io::Error::other(format!(
            "input on stdin is larger than {} KiB",
            MAX_STDIN / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("input on stdin is not UTF-8"))
}

/// Validates a `store` payload: `{"ServerURL","Username","Secret"}`.
pub fn parse_store(payload: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Store {
        #[serde(rename = "ServerURL")]
        server_url: String,
    }
    serde_json::from_str::<Store>(payload)
        .map(|s| s.server_url)
        .map_err(|e| {
            format!("store expects {{\"ServerURL\",\"Username\",\"Secret\"}} on stdin: {e}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_use_docker_field_names() {
        let c = Credentials {
            server_url: "r".into(),
            username: "<token>".into(),
            secret: "s".into(),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"ServerURL":"r","Username":"<token>","Secret":"s"}"#
        );
    }

    #[test]
    fn store_payload() {
        assert_eq!(
            parse_store(r#"{"ServerURL":"r","Username":"u","Secret":"s"}"#).unwrap(),
            "r"
        );
        assert!(parse_store("nonsense").is_err());
    }
}
