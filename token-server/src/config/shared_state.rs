//! `shared_state`, `shared_state_ca_file` and `revocation_unavailable`: what
//! a fleet of replicas shares, and what happens when it is out of reach.

use super::check::Check;
use super::file::ConfigFile;
use crate::secret::Secret;
use crate::settings::{RevocationUnavailable, SharedStateSettings};

/// The shared-state settings, or `None` when every replica keeps its own.
pub(super) fn shared_state(file: &ConfigFile, c: &mut Check) -> Option<SharedStateSettings> {
    let Some(url) = &file.shared_state else {
        if let Some(ca) = &file.shared_state_ca_file {
            c.fail("shared_state_ca_file", ca, "needs shared_state");
        }
        return None;
    };
    // The URL may hold a password: messages name its parts, never echo it.
    let tls = match url.value.split_once("://").map(|(scheme, _)| scheme) {
        Some("redis") => false,
        Some("rediss") => true,
        _ => {
            c.fail(
                "shared_state",
                url,
                "must be a redis://HOST:PORT/DB or rediss://HOST:PORT/DB URL",
            );
            return None;
        }
    };
    if let Err(e) = redis::Client::open(url.value.as_str()) {
        c.fail(
            "shared_state",
            url,
            format!("is not a usable Redis URL ({:?})", e.kind()),
        );
        return None;
    }
    let ca = match &file.shared_state_ca_file {
        None => None,
        Some(at) if !tls => {
            c.fail(
                "shared_state_ca_file",
                at,
                "applies only to a rediss:// shared_state",
            );
            None
        }
        Some(at) => match std::fs::read(c.path(&at.value)) {
            Ok(pem) => Some(pem),
            Err(e) => {
                c.fail_with("shared_state_ca_file", at, &e);
                None
            }
        },
    };
    Some(SharedStateSettings {
        url: Secret::new(url.value.clone()),
        ca,
    })
}

/// What to do with a credential whose revocation status cannot be read.
pub(super) fn revocation_unavailable(file: &ConfigFile, c: &mut Check) -> RevocationUnavailable {
    match &file.revocation_unavailable {
        None => RevocationUnavailable::Deny,
        Some(v) => match v.value.as_str() {
            "deny" => RevocationUnavailable::Deny,
            "allow" => RevocationUnavailable::Allow,
            other => {
                c.fail(
                    "revocation_unavailable",
                    v,
                    format!("must be deny or allow, not {other:?}"),
                );
                RevocationUnavailable::Deny
            }
        },
    }
}
