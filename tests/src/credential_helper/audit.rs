//! Reading the token server's audit log (`regauth::audit` lines on stderr)
//! to count what the helper and its clients did at the server.

use std::time::{Duration, Instant};

use crate::token_server::TokenServer;

/// The OAuth2 `client_id` the helper sends.
pub const HELPER_CLIENT_ID: &str = "docker-credential-regauth";
/// The `client_id` skopeo (containers/image) sends with its POST refresh grant.
pub const SKOPEO_CLIENT_ID: &str = "containers/image";

/// The server's audit lines so far.
pub fn audit_lines(server: &TokenServer) -> Vec<String> {
    format!("{}\n{}", server.stdout(), server.stderr())
        .lines()
        .filter(|l| l.contains("regauth::audit"))
        .map(str::to_owned)
        .collect()
}

/// The value of `key=value` or `key="value"` in a tracing text line.
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let needle = format!(" {key}=");
    let start = line.find(&needle)? + needle.len();
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => return Some(value),
                c => value.push(c),
            }
        }
        return Some(value);
    }
    Some(rest.split(' ').next().unwrap_or_default().to_owned())
}

/// True for a line recording a credential the helper obtained: an RFC 8693
/// exchange (`outcome="exchanged"`) or a grant with the helper's client ID
/// (password and client-certificate grants).
pub fn is_helper_exchange(line: &str) -> bool {
    log_field(line, "outcome").as_deref() == Some("exchanged")
        || log_field(line, "client_id").as_deref() == Some(HELPER_CLIENT_ID)
}

/// How many credentials the helper obtained at `server` so far.
pub fn helper_exchanges(server: &TokenServer) -> usize {
    audit_lines(server)
        .iter()
        .filter(|l| is_helper_exchange(l))
        .count()
}

/// Polls until `count()` reaches `at_least` (a log line is written just
/// before the reply, so it normally already has) and returns the count.
pub fn wait_for_count(mut count: impl FnMut() -> usize, at_least: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = count();
        if n >= at_least || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_recognises_helper_grants() {
        let exchange = "2026-01-01T00:00:00Z  INFO regauth::audit: credential issued for a subject token outcome=\"exchanged\" kind=kubernetes sub=system:serviceaccount:a:b";
        let password = "x INFO regauth::audit: token issued outcome=\"granted\" kind=account client_id=\"docker-credential-regauth\" requested= granted= refresh=true";
        let skopeo = "x INFO request{id=3 method=POST path=/token}: regauth::audit: token issued outcome=\"granted\" kind=account client_id=\"containers/image\" refresh=true";
        assert_eq!(log_field(exchange, "kind").as_deref(), Some("kubernetes"));
        assert_eq!(log_field(password, "requested").as_deref(), Some(""));
        assert_eq!(log_field(password, "refresh").as_deref(), Some("true"));
        assert_eq!(log_field(password, "nope"), None);
        assert_eq!(log_field(skopeo, "method").as_deref(), Some("POST"));
        assert!(is_helper_exchange(exchange) && is_helper_exchange(password));
        assert!(!is_helper_exchange(skopeo));
        assert_eq!(
            log_field(r#"a msg="say \"hi\"" b=1"#, "msg").as_deref(),
            Some("say \"hi\"")
        );
    }
}
