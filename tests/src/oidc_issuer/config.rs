//! The token server's `issuers:` config section, written from test values.

/// Which kind of principal an issuer's tokens become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    /// Kubernetes service-account tokens.
    Kubernetes,
    /// Any other OIDC issuer (GitHub Actions, ...).
    Oidc,
}

impl IssuerKind {
    fn name(self) -> &'static str {
        match self {
            IssuerKind::Kubernetes => "kubernetes",
            IssuerKind::Oidc => "oidc",
        }
    }
}

/// One `issuers:` entry. Unset optional keys are left out, so the server's
/// defaults apply.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    name: String,
    kind: IssuerKind,
    issuer: String,
    audiences: Vec<String>,
    danger_allow_http: bool,
    jwks_file: Option<String>,
    credential_ttl: Option<String>,
    max_token_age: Option<String>,
    jwks_min_refresh_interval: Option<String>,
    name_claim: Option<String>,
}

impl IssuerConfig {
    /// An issuer `name` of `kind` at URL `issuer`, accepting audience
    /// `regauth`, with `danger_allow_http: true` (the test issuer is plain
    /// HTTP on loopback).
    pub fn new(name: &str, kind: IssuerKind, issuer: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            issuer: issuer.to_owned(),
            audiences: vec!["regauth".to_owned()],
            danger_allow_http: true,
            jwks_file: None,
            credential_ttl: None,
            max_token_age: None,
            jwks_min_refresh_interval: None,
            name_claim: None,
        }
    }

    /// A `kind: kubernetes` issuer.
    pub fn kubernetes(name: &str, issuer: &str) -> Self {
        Self::new(name, IssuerKind::Kubernetes, issuer)
    }

    /// A `kind: oidc` issuer.
    pub fn oidc(name: &str, issuer: &str) -> Self {
        Self::new(name, IssuerKind::Oidc, issuer)
    }

    /// Replaces the accepted audiences.
    pub fn audiences(mut self, audiences: &[&str]) -> Self {
        self.audiences = audiences.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Sets `danger_allow_http`.
    pub fn danger_allow_http(mut self, allow: bool) -> Self {
        self.danger_allow_http = allow;
        self
    }

    /// Sets `jwks_file` (relative paths resolve against the config's directory).
    pub fn jwks_file(mut self, path: &str) -> Self {
        self.jwks_file = Some(path.to_owned());
        self
    }

    /// Sets `credential_ttl` (a duration like `10m`).
    pub fn credential_ttl(mut self, ttl: &str) -> Self {
        self.credential_ttl = Some(ttl.to_owned());
        self
    }

    /// Sets `max_token_age` (a duration like `1h`).
    pub fn max_token_age(mut self, age: &str) -> Self {
        self.max_token_age = Some(age.to_owned());
        self
    }

    /// Sets `jwks_min_refresh_interval` (a duration like `0s` or `1h`).
    pub fn jwks_min_refresh_interval(mut self, interval: &str) -> Self {
        self.jwks_min_refresh_interval = Some(interval.to_owned());
        self
    }

    /// Sets `name_claim` (oidc issuers only).
    pub fn name_claim(mut self, claim: &str) -> Self {
        self.name_claim = Some(claim.to_owned());
        self
    }

    /// The entry as a YAML list item (two-space indented, newline-terminated).
    pub fn to_yaml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("serialize string");
        let mut out = format!(
            "  - name: {}\n    kind: {}\n    issuer: {}\n    audiences: [{}]\n    danger_allow_http: {}\n",
            q(&self.name),
            self.kind.name(),
            q(&self.issuer),
            self.audiences
                .iter()
                .map(|a| q(a))
                .collect::<Vec<_>>()
                .join(", "),
            self.danger_allow_http,
        );
        let optional = [
            ("jwks_file", &self.jwks_file),
            ("credential_ttl", &self.credential_ttl),
            ("max_token_age", &self.max_token_age),
            ("jwks_min_refresh_interval", &self.jwks_min_refresh_interval),
            ("name_claim", &self.name_claim),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                out.push_str(&format!("    {key}: {}\n", q(value)));
            }
        }
        out
    }
}

/// A complete top-level `issuers:` section for `TokenServerBuilder::extra_config`.
pub fn issuers_yaml(issuers: &[IssuerConfig]) -> String {
    let mut out = String::from("issuers:\n");
    for issuer in issuers {
        out.push_str(&issuer.to_yaml());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_required_and_set_optional_keys() {
        let yaml = issuers_yaml(&[
            IssuerConfig::kubernetes("cluster-a", "http://127.0.0.1:1")
                .jwks_min_refresh_interval("0s"),
            IssuerConfig::oidc("github", "http://127.0.0.1:2").name_claim("sub"),
        ]);
        assert_eq!(
            yaml,
            "issuers:\n\
             \x20 - name: \"cluster-a\"\n    kind: kubernetes\n    issuer: \"http://127.0.0.1:1\"\n    audiences: [\"regauth\"]\n    danger_allow_http: true\n    jwks_min_refresh_interval: \"0s\"\n\
             \x20 - name: \"github\"\n    kind: oidc\n    issuer: \"http://127.0.0.1:2\"\n    audiences: [\"regauth\"]\n    danger_allow_http: true\n    name_claim: \"sub\"\n"
        );
    }
}
