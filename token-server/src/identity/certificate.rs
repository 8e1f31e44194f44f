//! Node identity from a client certificate that TLS already verified.
//!
//! A subject CN of `system:node:NAME` (the kubelet client-certificate
//! convention) names node NAME; any other CN is used as the name as is.

use std::collections::BTreeMap;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::{Kind, Principal};

/// The kubelet convention for node certificate subjects.
const NODE_CN_PREFIX: &str = "system:node:";

/// Builds the node principal for a verified leaf certificate, or `None` if it
/// does not parse or has no common name.
pub fn principal(cert_der: &[u8]) -> Option<Principal> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let name = cn.strip_prefix(NODE_CN_PREFIX).unwrap_or(&cn).to_owned();
    if name.is_empty() {
        return None;
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("node".to_owned(), name.clone());
    attributes.insert("cn".to_owned(), cn);
    if let Some(o) = subject
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
    {
        attributes.insert("organization".to_owned(), o.to_owned());
    }
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
    Some(Principal {
        kind: Kind::Node,
        name,
        attributes,
    })
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

    fn cert(cn: &str, sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
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

    #[test]
    fn other_names_and_garbage() {
        assert_eq!(principal(&cert("builder", vec![])).unwrap().name, "builder");
        assert!(principal(&cert("system:node:", vec![])).is_none());
        assert!(principal(b"not a certificate").is_none());
    }
}
