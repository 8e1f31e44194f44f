//! The audit trail: one `regauth::audit` event for every token issued,
//! credential exchanged, or request refused.
//!
//! Events name the principal, the service, the client, what was asked and
//! what was granted, and the token's `jti`, with a refresh token's own as
//! `refresh_jti`; never a token, password or key.
//!
//! Every field that a request can influence is recorded as a string value,
//! never through `Display`: the text format then writes it quoted with
//! control characters escaped, and the JSON format as a JSON string, so a
//! newline in a client ID, an annotation or a token's subject cannot start a
//! forged log line.

use std::fmt::Write;

use super::ask::Ask;
use super::error::TokenError;
use crate::authenticate::{AuthError, Peer};
use crate::identity::Principal;
use crate::policy::{Decision, Grant};
use crate::scope::Scope;

/// What was issued, for the audit event.
pub struct Issued<'a> {
    /// The grant used.
    pub grant: &'static str,
    /// The access token's ID.
    pub jti: &'a str,
    /// The signing key's ID.
    pub kid: &'a str,
    /// The ID of the refresh token that went with it (minted, or handed
    /// back to the caller who presented it), if one did: what `revoke
    /// --jti` takes.
    pub refresh_jti: Option<&'a str>,
}

/// A token was issued (possibly with nothing granted: denial is not an error).
pub fn issued(principal: &Principal, ask: &Ask, decisions: &[Decision], peer: &Peer, t: &Issued) {
    let rules: Vec<String> = decisions
        .iter()
        .map(|d| d.rule.map_or_else(|| "none".to_owned(), |r| r.to_string()))
        .collect();
    let fully = decisions
        .iter()
        .zip(&ask.scopes)
        .all(|(d, s)| d.grant.actions.len() == s.actions.len());
    tracing::info!(
        target: "regauth::audit",
        outcome = if fully { "granted" } else { "partially_denied" },
        grant = t.grant,
        kind = principal.kind.as_str(),
        sub = principal.subject().as_str(),
        service = ask.service.as_str(),
        client = client(peer).as_str(),
        client_id = ask.client_id.as_deref().unwrap_or("-"),
        requested = requested(&ask.scopes).as_str(),
        granted = granted(decisions.iter().map(|d| &d.grant)).as_str(),
        rules = rules.join(",").as_str(),
        jti = t.jti,
        kid = t.kid,
        refresh = t.refresh_jti.is_some(),
        refresh_jti = t.refresh_jti.unwrap_or("-"),
        "token issued"
    );
}

/// A subject token was exchanged for a credential (RFC 8693).
pub fn exchanged(
    principal: &Principal,
    ask: &Ask,
    decisions: &[Decision],
    annotations: &[(String, String)],
    peer: &Peer,
    jti: &str,
) {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::info!(
        target: "regauth::audit",
        outcome = "exchanged",
        grant = "token_exchange",
        kind = principal.kind.as_str(),
        sub = principal.subject().as_str(),
        issuer = principal.attributes.get("issuer").map_or("-", String::as_str),
        service = ask.service.as_str(),
        client = client(peer).as_str(),
        requested = requested(&ask.scopes).as_str(),
        granted = granted(decisions.iter().map(|d| &d.grant)).as_str(),
        annotations = annotations.join(",").as_str(),
        jti,
        refresh_jti = jti,
        "credential issued for a subject token"
    );
}

/// A request was refused.
pub fn rejected(e: &TokenError, grant: &'static str, username: Option<&str>, peer: &Peer) {
    // Usernames are logged only when they look like account names, so a
    // password typed into the user field never reaches the log.
    let user = username.filter(|u| {
        u.len() <= 64
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    });
    let outcome = match e {
        TokenError::Auth(AuthError::Throttled(_)) => "throttled",
        _ => "rejected",
    };
    tracing::info!(
        target: "regauth::audit",
        outcome,
        reason = e.reason(),
        grant,
        user = user.unwrap_or("-"),
        client = client(peer).as_str(),
        // Error messages quote whatever the request sent with `{:?}`.
        "token request rejected: {e}"
    );
}

fn client(peer: &Peer) -> String {
    peer.addr.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

fn requested(scopes: &[Scope]) -> String {
    let mut out = String::new();
    for (i, s) in scopes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{s}");
    }
    out
}

/// The non-empty grants, `type:name:actions`, space-separated: the reply's
/// `scope` and the audit's `granted`.
pub fn granted<'a>(grants: impl Iterator<Item = &'a Grant>) -> String {
    let mut out = String::new();
    for g in grants.filter(|g| !g.actions.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(
            out,
            "{}:{}:{}",
            g.resource_type,
            g.name,
            g.actions.join(",")
        );
    }
    out
}
