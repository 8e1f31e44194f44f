//! Who is asking: every authenticated caller becomes a [`Principal`].

pub mod account;
pub mod certificate;
pub mod issuers;
pub mod jwks;
pub mod jws;
mod kubernetes;
mod oidc;
pub mod password_cache;
mod subject_token;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of identity a principal was proven with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A static account from the config or an htpasswd file.
    Account,
    /// A Kubernetes service account.
    Kubernetes,
    /// A token from a trusted OIDC issuer.
    Oidc,
    /// A node proven by a client certificate (`CN=system:node:NAME`,
    /// `O=system:nodes`).
    Node,
    /// Any other client certificate the TLS client CA vouches for.
    Certificate,
    /// A caller that presented no credentials.
    Anonymous,
}

impl Kind {
    /// The lowercase name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Kubernetes => "kubernetes",
            Kind::Oidc => "oidc",
            Kind::Node => "node",
            Kind::Certificate => "certificate",
            Kind::Anonymous => "anonymous",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller: what policy rules match against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// How the caller was authenticated.
    pub kind: Kind,
    /// The caller's name within its kind (account name, node name, ...).
    pub name: String,
    /// Facts about the caller, such as account labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl Principal {
    /// The caller who sent no credentials.
    pub fn anonymous() -> Self {
        Principal {
            kind: Kind::Anonymous,
            name: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// The JWT `sub` for tokens issued to this principal. Accounts keep their
    /// bare name, which is what registries show in their logs.
    pub fn subject(&self) -> String {
        match self.kind {
            Kind::Account | Kind::Anonymous => self.name.clone(),
            kind => format!("{kind}:{}", self.name),
        }
    }

    /// Resolves a policy variable: `name`, `kind`, `account` (accounts only),
    /// `claim:NAME` (the attribute `claims.NAME` of OIDC principals), or any
    /// attribute by its key (`namespace`, `service_account`, `node`, ...).
    pub fn variable(&self, var: &str) -> Option<&str> {
        match var {
            "name" if !self.name.is_empty() => Some(&self.name),
            "name" => None,
            "kind" => Some(self.kind.as_str()),
            "account" if self.kind == Kind::Account => Some(&self.name),
            "account" => None,
            other => match other.strip_prefix("claim:") {
                Some(claim) => self
                    .attributes
                    .get(&format!("claims.{claim}"))
                    .map(String::as_str),
                None => self.attributes.get(other).map(String::as_str),
            }
            .filter(|v| !v.is_empty()),
        }
    }
}
