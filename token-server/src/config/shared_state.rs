//! `shared_state`, `shared_state_ca_file`, `revocation_unavailable` and
//! `revocation_max_staleness`: what a fleet of replicas shares, and what
//! happens when it is out of reach.

use std::time::Duration;

use super::check::Check;
use super::file::ConfigFile;
use crate::secret::Secret;
use crate::settings::{RevocationUnavailable, SharedStateSettings};
use crate::shared::endpoint::Endpoint;

/// How long a replica without Redis serves from the revocations it holds,
/// by default.
pub(super) const DEFAULT_REVOCATION_STALENESS: Duration = Duration::from_secs(60);

/// The shared-state settings, or `None` when every replica keeps its own.
pub(super) fn shared_state(file: &ConfigFile, c: &mut Check) -> Option<SharedStateSettings> {
    let Some(url) = &file.shared_state else {
        if let Some(ca) = &file.shared_state_ca_file {
            c.fail("shared_state_ca_file", ca, "needs shared_state");
        }
        return None;
    };
    // The URL may hold a password: messages name its parts, never echo it.
    let endpoint = match Endpoint::parse(&url.value) {
        Ok(e) => e,
        Err(e) => {
            c.fail("shared_state", url, e.to_string());
            return None;
        }
    };
    let ca = match &file.shared_state_ca_file {
        None => None,
        Some(at) if !endpoint.tls() => {
            c.fail(
                "shared_state_ca_file",
                at,
                "applies only to a rediss:// or rediss+sentinel:// shared_state",
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
        endpoint,
        ca,
    })
}

/// What to do with credentials once the revocations held are too old.
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

/// How long a replica without Redis serves from what it holds.
pub(super) fn revocation_staleness(file: &ConfigFile, c: &mut Check) -> Duration {
    c.duration(
        "revocation_max_staleness",
        &file.revocation_max_staleness,
        DEFAULT_REVOCATION_STALENESS,
        true,
    )
}
