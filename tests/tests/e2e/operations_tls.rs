//! The TLS certificate is reloaded from disk: a replacement (same CA, new
//! key and serial) is served within a few seconds, connections opened
//! before keep working, and unusable files are refused while the previous
//! certificate stays.

use std::time::{Duration, Instant};

use regauth_e2e::ops::{TlsProbe, pem_certificate_der, wait_for_log};
use regauth_e2e::pki::TestPki;
use regauth_e2e::token_server::SERVICE;

use crate::support::standalone_server;

/// The file poll interval is 2 s; allow for a slow machine.
const RELOAD_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn a_replaced_certificate_is_served_and_open_connections_survive() {
    let pki = TestPki::new();
    let s = standalone_server(|b| b.tls(pki.server_tls(false)));
    let server = &s.server;
    let (port, ca) = (server.port(), server.server_ca_pem());
    let old = pem_certificate_der(&pki.server.cert_pem);

    let mut kept = TlsProbe::connect(port, ca).expect("TLS handshake");
    assert_eq!(kept.server_certificate(), old.as_ref());
    let first = kept.get("/healthz").expect("GET /healthz");
    assert_eq!((first.status, first.text().as_str()), (200, "ok\n"));

    // Unusable files are refused and the old certificate stays.
    let tls = server.dir().join("tls");
    std::fs::write(tls.join("server.crt"), "not a certificate\n").unwrap();
    wait_for_log(
        || server.stderr(),
        "TLS files changed but do not load; keeping the previous certificate",
        1,
        RELOAD_WITHIN,
    );
    let probe = TlsProbe::connect(port, ca).expect("handshake with a garbage cert file");
    assert_eq!(probe.server_certificate(), old.as_ref());

    // A new certificate from the same CA replaces it.
    let next = pki.server_ca.issue_server();
    let new = pem_certificate_der(&next.cert_pem);
    assert_ne!(new, old);
    std::fs::write(tls.join("server.key"), &next.key_pem).unwrap();
    std::fs::write(tls.join("server.crt"), &next.cert_pem).unwrap();
    let written = Instant::now();
    loop {
        let probe = TlsProbe::connect(port, ca).expect("handshake during the reload");
        if probe.server_certificate() == new.as_ref() {
            break;
        }
        assert!(
            written.elapsed() < RELOAD_WITHIN,
            "the new certificate was not served within {RELOAD_WITHIN:?}\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.stderr().contains("TLS certificate reloaded"),
        "{}",
        server.logs()
    );

    // The connection opened before the reload still works.
    let again = kept
        .get("/healthz")
        .expect("GET /healthz on the kept connection");
    assert_eq!((again.status, again.text().as_str()), (200, "ok\n"));
    assert_eq!(kept.server_certificate(), old.as_ref());
    // And a new client trusting the CA gets tokens.
    let reply = server.client_with_cert(None).password_grant(
        "alice",
        &s.alice_password,
        SERVICE,
        "",
        false,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
}
