//! A throwaway test PKI built with rcgen: certificate authorities, a server
//! certificate for 127.0.0.1, and node client certificates in the kubelet
//! convention (`CN=system:node:NAME`, `O=system:nodes`).
//!
//! Every key is a fresh ECDSA P-256 key written as PKCS#8 PEM, so nothing
//! here is shared between test runs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};

use crate::secrets::write_secret_file;

/// The node name of the trusted node certificate in [`TestPki`].
pub const NODE_NAME: &str = "worker-1";
/// The organization kubelet client certificates carry.
pub const NODE_ORGANIZATION: &str = "system:nodes";
/// The DNS SAN of every node certificate [`TestPki`] issues.
pub const NODE_DNS_SAN: &str = "worker-1.nodes.regauth.test";
/// The IP SAN of every node certificate [`TestPki`] issues.
pub const NODE_IP_SAN: &str = "10.20.30.41";

/// The subject CN of a node's client certificate, `system:node:NAME`.
pub fn node_common_name(node: &str) -> String {
    format!("system:node:{node}")
}

/// A certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate chain, leaf first (`CERTIFICATE` blocks).
    pub cert_pem: String,
    /// The private key (`PRIVATE KEY`, PKCS#8).
    pub key_pem: String,
}

impl CertifiedKey {
    /// Key and certificate in one PEM document, as `reqwest::Identity::from_pem` reads it.
    pub fn identity_pem(&self) -> Vec<u8> {
        format!("{}{}", self.key_pem, self.cert_pem).into_bytes()
    }

    /// This certificate as a TLS client identity for reqwest.
    pub fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(&self.identity_pem())
            .unwrap_or_else(|e| panic!("reqwest rejects the test client identity: {e}"))
    }

    /// Writes `DIR/STEM.crt` and `DIR/STEM.key` (mode 0600) and returns both paths,
    /// for tools that take files (`ctr --tlscert/--tlskey`).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).expect("create certificate dir");
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem)
            .unwrap_or_else(|e| panic!("write {}: {e}", cert.display()));
        write_secret_file(&key, self.key_pem.as_bytes());
        (cert, key)
    }
}

/// A self-signed certificate authority that can issue leaf certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// How long a leaf certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from 2024 until 2099.
    Current,
    /// Valid during 2020 only, so long expired.
    Expired,
}

impl Ca {
    /// A new root CA named `common_name` with a fresh key.
    pub fn new(common_name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, Some("regauth e2e"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        let cert = params.self_signed(&key).expect("self-sign CA certificate");
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM), what a verifier trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server certificate with IP SAN 127.0.0.1 (and DNS SAN `localhost`).
    pub fn issue_server(&self) -> CertifiedKey {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name("regauth token server", None);
        params.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().expect("valid DNS name")),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, Validity::Current)
    }

    /// A TLS client certificate for `node`: `CN=system:node:NODE`,
    /// `O=system:nodes`, SANs [`NODE_DNS_SAN`] and [`NODE_IP_SAN`].
    pub fn issue_node(&self, node: &str, validity: Validity) -> CertifiedKey {
        self.issue_client(&node_common_name(node), Some(NODE_ORGANIZATION), validity)
    }

    /// A TLS client certificate with any subject.
    pub fn issue_client(
        &self,
        common_name: &str,
        organization: Option<&str>,
        validity: Validity,
    ) -> CertifiedKey {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, organization);
        params.subject_alt_names = vec![
            SanType::DnsName(NODE_DNS_SAN.try_into().expect("valid DNS name")),
            SanType::IpAddress(NODE_IP_SAN.parse().expect("valid IP address")),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    fn issue(&self, mut params: CertificateParams, validity: Validity) -> CertifiedKey {
        let key = KeyPair::generate().expect("generate leaf key");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (date_time_ymd(2024, 1, 1), date_time_ymd(2099, 1, 1)),
            Validity::Expired => (date_time_ymd(2020, 1, 1), date_time_ymd(2021, 1, 1)),
        };
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign leaf certificate");
        CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name.push(DnType::CommonName, common_name);
    name
}

/// Everything the node-identity tests need, generated fresh.
#[derive(Debug)]
pub struct TestPki {
    /// Issues the token server's certificate; clients trust it.
    pub server_ca: Ca,
    /// The token server's certificate for 127.0.0.1.
    pub server: CertifiedKey,
    /// The CA the token server trusts for client certificates (`tls.client_ca`).
    pub client_ca: Ca,
    /// `CN=system:node:worker-1, O=system:nodes` from [`TestPki::client_ca`].
    pub node: CertifiedKey,
    /// The same node subject from [`TestPki::client_ca`], expired in 2021.
    pub expired_node: CertifiedKey,
    /// A CA nobody configured.
    pub untrusted_ca: Ca,
    /// The same node subject as [`TestPki::node`], from [`TestPki::untrusted_ca`].
    pub untrusted_node: CertifiedKey,
}

impl TestPki {
    /// Generates all CAs and certificates.
    pub fn new() -> Self {
        let server_ca = Ca::new("regauth e2e server CA");
        let server = server_ca.issue_server();
        let client_ca = Ca::new("regauth e2e node CA");
        let node = client_ca.issue_node(NODE_NAME, Validity::Current);
        let expired_node = client_ca.issue_node(NODE_NAME, Validity::Expired);
        let untrusted_ca = Ca::new("regauth e2e untrusted CA");
        let untrusted_node = untrusted_ca.issue_node(NODE_NAME, Validity::Current);
        Self {
            server_ca,
            server,
            client_ca,
            node,
            expired_node,
            untrusted_ca,
            untrusted_node,
        }
    }

    /// The token server's TLS settings: its certificate, and the client CA
    /// when `verify_clients` (`tls.client_ca`).
    pub fn server_tls(&self, verify_clients: bool) -> ServerTls {
        ServerTls {
            cert_pem: self.server.cert_pem.clone(),
            key_pem: self.server.key_pem.clone(),
            ca_pem: self.server_ca.cert_pem().to_owned(),
            client_ca_pem: verify_clients.then(|| self.client_ca.cert_pem().to_owned()),
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// What the token server fixture needs to serve HTTPS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Server certificate chain (PEM), written to `tls/server.crt`.
    pub cert_pem: String,
    /// Server private key (PKCS#8 PEM), written to `tls/server.key`.
    pub key_pem: String,
    /// The CA that issued the server certificate; the fixture's clients trust only it.
    pub ca_pem: String,
    /// The CA for client certificates, written to `tls/client-ca.pem`; `None`
    /// leaves `tls.client_ca` unset.
    pub client_ca_pem: Option<String>,
}

#[cfg(test)]
mod tests {
    //! The PKI checked with rustls' own WebPKI verifiers, so a failing
    //! end-to-end test can rule out a broken fixture.

    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{CertificateError, Error, RootCertStore};

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).expect("CA certificate");
        Arc::new(roots)
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn verify_client(ca: &Ca, cert: &CertifiedKey) -> Result<(), Error> {
        WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .expect("client verifier")
            .verify_client_cert(&der(&cert.cert_pem), &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn node_certificates_verify_only_when_trusted_and_current() {
        let pki = TestPki::new();
        verify_client(&pki.client_ca, &pki.node).expect("the node certificate verifies");
        assert!(
            matches!(
                verify_client(&pki.client_ca, &pki.expired_node),
                Err(Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                ))
            ),
            "the expired certificate must fail as expired"
        );
        assert!(
            matches!(
                verify_client(&pki.client_ca, &pki.untrusted_node),
                Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
            ),
            "the untrusted CA's certificate must fail as unknown issuer"
        );
        verify_client(&pki.untrusted_ca, &pki.untrusted_node)
            .expect("the untrusted node certificate is well formed for its own CA");
    }

    #[test]
    fn server_certificate_is_valid_for_127_0_0_1_only_under_its_ca() {
        let pki = TestPki::new();
        let verify = |ca: &Ca| {
            WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
                .build()
                .expect("server verifier")
                .verify_server_cert(
                    &der(&pki.server.cert_pem),
                    &[],
                    &ServerName::try_from("127.0.0.1").expect("IP server name"),
                    &[],
                    UnixTime::now(),
                )
                .map(|_| ())
        };
        verify(&pki.server_ca).expect("the server certificate verifies for 127.0.0.1");
        assert!(
            verify(&pki.client_ca).is_err(),
            "only the server CA issues it"
        );
    }

    #[test]
    fn identity_pem_holds_key_and_certificate() {
        let pki = TestPki::new();
        let pem = String::from_utf8(pki.node.identity_pem()).expect("PEM is text");
        assert!(pem.contains("-----BEGIN PRIVATE KEY-----"));
        assert!(pem.contains("-----BEGIN CERTIFICATE-----"));
        pki.node.identity();
        assert_eq!(node_common_name(NODE_NAME), "system:node:worker-1");
    }
}
