//! Principals from client certificates that TLS already verified.
//!
//! Following the Kubernetes node authorizer, a certificate is a **node**
//! only when its subject CN is `system:node:NAME` *and* its organizations
//! include `system:nodes` (both configurable). A cluster's client CA also
//! signs user and admin certificates; any other trusted certificate is a
//! **certificate** principal, named by its CN, which no `node` rule matches.
//!
//! A refresh token minted from a certificate names the client CA the
//! certificate chained to ([`ClientCas::anchor`], a SHA-256 fingerprint),
//! so every refresh can check that the server still trusts that CA.

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::{Kind, Principal};

/// What makes a client certificate a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRules {
    /// The subject CN of a node is this prefix and the node's name.
    pub node_common_name_prefix: String,
    /// A node's subject must list this organization.
    pub node_organization: String,
}

impl Default for CertificateRules {
    /// The kubelet's client-certificate convention.
    fn default() -> Self {
        CertificateRules {
            node_common_name_prefix: "system:node:".to_owned(),
            node_organization: "system:nodes".to_owned(),
        }
    }
}

/// The principal of a verified leaf certificate, or `None` if it does not
/// parse or names no one (no CN).
pub fn principal(cert_der: &[u8], rules: &CertificateRules) -> Option<Principal> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    if cn.is_empty() {
        return None;
    }
    let organizations: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    let units: Vec<String> = subject
        .iter_organizational_unit()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    let node = cn
        .strip_prefix(rules.node_common_name_prefix.as_str())
        .filter(|name| !name.is_empty())
        .filter(|_| organizations.contains(&rules.node_organization))
        .map(str::to_owned);
    let mut attributes = BTreeMap::new();
    attributes.insert("cn".to_owned(), cn.clone());
    // The first organization, as before; every one under `organizations`.
    if let Some(o) = organizations.first() {
        attributes.insert("organization".to_owned(), o.clone());
        attributes.insert("organizations".to_owned(), organizations.join(","));
    }
    if !units.is_empty() {
        attributes.insert("organizational_units".to_owned(), units.join(","));
    }
    attributes.insert("issuer".to_owned(), cert.issuer().to_string());
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::IPAddress(bytes) => ips.push(ip_text(bytes)),
                _ => {}
            }
        }
    }
    if !dns.is_empty() {
        attributes.insert("dns_sans".to_owned(), dns.join(","));
    }
    if !ips.is_empty() {
        attributes.insert("ip_sans".to_owned(), ips.join(","));
    }
    Some(match node {
        Some(name) => {
            attributes.insert("node".to_owned(), name.clone());
            Principal {
                kind: Kind::Node,
                name,
                attributes,
            }
        }
        None => Principal {
            kind: Kind::Certificate,
            name: cn,
            attributes,
        },
    })
}

/// One CA of the client CA bundle.
#[derive(Debug, Clone)]
struct TrustedCa {
    der: Vec<u8>,
    /// `sha256:` and the hex SHA-256 of its DER.
    fingerprint: String,
    /// Its subject as a principal's `issuer` attribute prints it.
    subject: String,
}

/// The CAs the server trusts for client certificates (`tls.client_ca`),
/// as refresh tokens name them.
#[derive(Debug, Clone, Default)]
pub struct ClientCas {
    cas: Vec<TrustedCa>,
}

/// Most certificates walked from a leaf towards a trusted CA.
const MAX_CHAIN: usize = 8;

impl ClientCas {
    /// The CAs of a bundle; certificates that do not parse are left out
    /// (TLS refuses such a bundle anyway).
    pub fn new(bundle: &[CertificateDer<'_>]) -> Self {
        let cas = bundle
            .iter()
            .filter_map(|der| {
                let (_, cert) = X509Certificate::from_der(der).ok()?;
                Some(TrustedCa {
                    der: der.to_vec(),
                    fingerprint: fingerprint(der),
                    subject: cert.subject().to_string(),
                })
            })
            .collect();
        ClientCas { cas }
    }

    /// The fingerprint of the trusted CA that `chain` (the leaf first, then
    /// what the client sent with it) chains to: each certificate's issuer
    /// is found by name and checked by signature, first among the trusted
    /// CAs, then among the rest of the chain. `None` when it reaches none.
    pub fn anchor(&self, chain: &[CertificateDer<'_>]) -> Option<&str> {
        let parsed: Vec<X509Certificate<'_>> = chain
            .iter()
            .take(MAX_CHAIN)
            .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
            .collect();
        let mut current = parsed.first()?;
        for _ in 0..MAX_CHAIN {
            for ca in &self.cas {
                let Ok((_, trusted)) = X509Certificate::from_der(&ca.der) else {
                    continue;
                };
                if signs(&trusted, current) {
                    return Some(&ca.fingerprint);
                }
            }
            current = parsed.iter().skip(1).find(|c| signs(c, current))?;
        }
        None
    }

    /// True when the CA with `fingerprint` is trusted.
    pub fn trusts(&self, fingerprint: &str) -> bool {
        self.cas.iter().any(|ca| ca.fingerprint == fingerprint)
    }

    /// True when a trusted CA has the subject `name` (a certificate
    /// principal's `issuer` attribute): the check left for refresh tokens
    /// minted before they named their CA.
    pub fn has_subject(&self, name: &str) -> bool {
        self.cas.iter().any(|ca| ca.subject == name)
    }
}

/// True when `issuer` issued `cert`: its subject is the certificate's
/// issuer, and its key verifies the certificate's signature.
fn signs(issuer: &X509Certificate<'_>, cert: &X509Certificate<'_>) -> bool {
    issuer.subject().as_raw() == cert.issuer().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// `sha256:` and the hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(b).to_string()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(cn: &str, org: Option<&str>, sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, org);
        }
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn cert(cn: &str, sans: Vec<rcgen::SanType>) -> Vec<u8> {
        cert_with(cn, Some("system:nodes"), sans)
    }

    fn principal(der: &[u8]) -> Option<Principal> {
        super::principal(der, &CertificateRules::default())
    }

    #[test]
    fn kubelet_style_certificate() {
        let der = cert(
            "system:node:worker-1",
            vec![
                rcgen::SanType::DnsName("worker-1.example".try_into().unwrap()),
                rcgen::SanType::IpAddress("10.0.0.7".parse().unwrap()),
            ],
        );
        let p = principal(&der).unwrap();
        assert_eq!(p.kind, Kind::Node);
        assert_eq!(p.name, "worker-1");
        assert_eq!(p.variable("node"), Some("worker-1"));
        assert_eq!(p.attributes["organization"], "system:nodes");
        assert_eq!(p.attributes["dns_sans"], "worker-1.example");
        assert_eq!(p.attributes["ip_sans"], "10.0.0.7");
        assert_eq!(p.subject(), "node:worker-1");
    }

    /// Before, any certificate under the client CA was a node: CN=alice
    /// became node:alice and matched every node rule.
    #[test]
    fn only_node_cn_and_node_organization_make_a_node() {
        let alice = principal(&cert_with("alice", Some("system:masters"), vec![])).unwrap();
        assert_eq!(alice.kind, Kind::Certificate);
        assert_eq!(alice.subject(), "certificate:alice");
        assert_eq!(alice.attributes["organization"], "system:masters");
        assert!(alice.variable("node").is_none());
        let impostor =
            principal(&cert_with("system:node:worker-1", Some("users"), vec![])).unwrap();
        assert_eq!(impostor.kind, Kind::Certificate, "CN alone is not enough");
        let no_org = principal(&cert_with("system:node:worker-1", None, vec![])).unwrap();
        assert_eq!(no_org.kind, Kind::Certificate);
        let custom = CertificateRules {
            node_common_name_prefix: "node/".into(),
            node_organization: "fleet".into(),
        };
        let p = super::principal(&cert_with("node/n7", Some("fleet"), vec![]), &custom).unwrap();
        assert_eq!((p.kind, p.name.as_str()), (Kind::Node, "n7"));
    }

    /// A CA (`name`) and a leaf it signed.
    fn ca_and_leaf(name: &str) -> (Vec<u8>, Vec<u8>) {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name.push(rcgen::DnType::CommonName, name);
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:n1");
        let leaf = leaf.signed_by(&key, &issuer).unwrap();
        (ca_cert.der().to_vec(), leaf.der().to_vec())
    }

    /// A leaf chains to the CA that signed it, never to another CA of the
    /// same name; the fingerprint names that CA only.
    #[test]
    fn a_leaf_chains_to_the_ca_that_signed_it_and_no_other() {
        let (ca, leaf) = ca_and_leaf("node CA");
        let (impostor, _) = ca_and_leaf("node CA");
        let (other_ca, other_leaf) = ca_and_leaf("other CA");
        let der = |b: &[u8]| CertificateDer::from(b.to_vec());
        let both = ClientCas::new(&[der(&impostor), der(&ca)]);
        assert_eq!(both.anchor(&[der(&leaf)]), Some(fingerprint(&ca).as_str()));
        assert!(both.trusts(&fingerprint(&ca)));
        let wrong = ClientCas::new(&[der(&impostor), der(&other_ca)]);
        assert_eq!(wrong.anchor(&[der(&leaf)]), None, "same name, other key");
        assert_eq!(
            wrong.anchor(&[der(&other_leaf)]),
            Some(fingerprint(&other_ca).as_str())
        );
        assert!(!wrong.trusts(&fingerprint(&ca)));
        assert!(wrong.has_subject("CN=node CA"));
        assert!(!ClientCas::default().has_subject("CN=node CA"));
        assert_eq!(ClientCas::default().anchor(&[der(&leaf)]), None);
        assert_eq!(both.anchor(&[der(b"garbage")]), None);
        assert_eq!(both.anchor(&[]), None);
        assert!(fingerprint(&ca).starts_with("sha256:") && fingerprint(&ca).len() == 71);
    }

    #[test]
    fn empty_names_and_garbage() {
        assert_eq!(
            principal(&cert("system:node:", vec![])).unwrap().kind,
            Kind::Certificate
        );
        assert!(principal(b"not a certificate").is_none());
    }
}
