//! The `tls` section: HTTPS, and client certificates when a client CA is set.

use super::check::Check;
use super::file::TlsEntry;
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
