//! The `tls` section: HTTPS, and client certificates when a client CA is set.

use super::check::Check;
use super::file::TlsEntry;
use crate::identity::certificate::CertificateRules;
use crate::tls::{TlsError, TlsFiles, TlsSettings};

/// Loads the TLS files, or records why not at the key naming the bad file.
pub(super) fn tls(t: &TlsEntry, c: &mut Check) -> Option<TlsSettings> {
    let files = TlsFiles {
        cert: c.path(&t.cert.value),
        key: c.path(&t.key.value),
        client_ca: t.client_ca.as_ref().map(|ca| c.path(&ca.value)),
    };
    match TlsSettings::load(files) {
        Ok(settings) => Some(settings),
        Err(e) => {
            let (key, at) = match (&e, &t.client_ca) {
                (TlsError::ClientCa { .. }, Some(ca)) => ("tls.client_ca", ca),
                (TlsError::Key { .. }, _) => ("tls.key", &t.key),
                _ => ("tls.cert", &t.cert),
            };
            c.fail_with(key, at, &e);
            None
        }
    }
}

/// What makes a client certificate a node: the kubelet convention unless
/// the `tls` section says otherwise.
pub(super) fn certificate_rules(t: Option<&TlsEntry>, c: &mut Check) -> CertificateRules {
    let mut rules = CertificateRules::default();
    let Some(t) = t else { return rules };
    for (key, value, slot) in [
        (
            "tls.node_common_name_prefix",
            &t.node_common_name_prefix,
            &mut rules.node_common_name_prefix,
        ),
        (
            "tls.node_organization",
            &t.node_organization,
            &mut rules.node_organization,
        ),
    ] {
        if let Some(v) = value {
            if v.value.is_empty() {
                c.fail(key, v, "must not be empty");
            }
            *slot = v.value.clone();
        }
    }
    rules
}
