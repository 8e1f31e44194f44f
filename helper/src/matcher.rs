//! Registry host patterns, matched the way the kubelet matches
//! `matchImages`: the same number of host labels, a glob within each label,
//! the port must match exactly, and a pattern path is a string prefix of the
//! image path.

use std::fmt;

/// A compiled registry pattern such as `*.example.com`, `registry:5000` or
/// `registry.example.com/team`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    source: String,
    labels: Vec<String>,
    port: Option<String>,
    path: Option<String>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why a pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid registry pattern {0:?}: expect HOST[:PORT][/PATH], with * globs inside host labels"
)]
pub(crate) struct PatternError(pub(crate) String);

/// A registry location split into host labels, port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host[:port]`, lowercased.
    pub host: String,
    labels: Vec<String>,
    port: Option<String>,
    path: String,
}

fn split_host_port(hostport: &str) -> (&str, Option<&str>) {
    // IPv6 literals keep their colons inside brackets: `[::1]:5000`.
    if let Some(inner) = hostport.strip_prefix('[')
        && let Some((addr, after)) = inner.split_once(']')
    {
        return (&hostport[..addr.len() + 2], after.strip_prefix(':'));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (hostport, None),
    }
}

impl Pattern {
    /// Compiles `pattern`. A scheme prefix (`https://`) is accepted and dropped.
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        let bad = || PatternError(pattern.to_owned());
        let rest = strip_scheme(pattern.trim());
        let (hostport, path) = match rest.split_once('/') {
            Some((h, p)) => (
                h,
                Some(p.trim_end_matches('/').to_owned()).filter(|p| !p.is_empty()),
            ),
            None => (rest, None),
        };
        let (host, port) = split_host_port(hostport);
        if host.is_empty() || host.split('.').any(str::is_empty) {
            return Err(bad());
        }
        let valid = |c: char| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '*' | '.' | '[' | ']' | ':' | '_')
        };
        if !host.chars().all(valid) {
            return Err(bad());
        }
        Ok(Pattern {
            source: pattern.to_owned(),
            labels: host
                .to_ascii_lowercase()
                .split('.')
                .map(str::to_owned)
                .collect(),
            port: port.map(str::to_owned),
            path,
        })
    }

    /// The pattern as a kubelet `auth` key: as written, without a scheme.
    pub fn auth_key(&self) -> &str {
        strip_scheme(self.source.trim())
    }

    /// True if the pattern names a path prefix, not just a host.
    pub fn has_path(&self) -> bool {
        self.path.is_some()
    }

    /// True if the host and port part matches `target`, ignoring paths.
    pub fn matches_host(&self, target: &Target) -> bool {
        self.labels.len() == target.labels.len()
            && self.port == target.port
            && self
                .labels
                .iter()
                .zip(&target.labels)
                .all(|(p, l)| label_glob(p, l))
    }

    /// True if this pattern covers `target`. The path is a plain string
    /// prefix, exactly as the kubelet compares it.
    pub fn matches(&self, target: &Target) -> bool {
        self.matches_host(target)
            && self
                .path
                .as_ref()
                .is_none_or(|p| target.path.starts_with(p.as_str()))
    }
}

/// Glob within one label: `*` matches any run of characters.
fn label_glob(pattern: &str, label: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == label,
        Some((prefix, rest)) => {
            let Some(tail) = label.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && label_glob(rest, &tail[i..]))
        }
    }
}

fn strip_scheme(s: &str) -> &str {
    s.strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s)
}

impl Target {
    /// The repository path, without tag or digest; empty for a bare host.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Parses a registry location as clients pass it: `host`, `host:port`,
    /// `https://host/`, `https://index.docker.io/v1/`, `host/path`, or an
    /// image reference `host/repo:tag` (for the kubelet). `None` if there is no host.
    pub fn parse(location: &str) -> Option<Self> {
        let rest = strip_scheme(location.trim());
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hostport = hostport.to_ascii_lowercase();
        let (host, port) = split_host_port(&hostport);
        if host.is_empty() || host.split('.').any(str::is_empty) {
            return None;
        }
        // Drop a tag or digest from an image reference's last component.
        let path = path.split('@').next().unwrap_or_default();
        let path = match path.rsplit_once('/') {
            Some((dir, last)) => format!("{dir}/{}", last.split(':').next().unwrap_or_default()),
            None => path.split(':').next().unwrap_or_default().to_owned(),
        };
        Some(Target {
            labels: host.split('.').map(str::to_owned).collect(),
            port: port.map(str::to_owned),
            host: hostport.clone(),
            path: path.trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(pattern: &str, target: &str) -> bool {
        Pattern::new(pattern)
            .unwrap()
            .matches(&Target::parse(target).unwrap())
    }

    #[test]
    fn server_url_shapes() {
        for (input, host) in [
            ("registry.example.com", "registry.example.com"),
            ("registry.example.com:5000", "registry.example.com:5000"),
            ("https://registry.example.com/", "registry.example.com"),
            ("https://index.docker.io/v1/", "index.docker.io"),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("Registry.Example.com/team/app", "registry.example.com"),
            ("registry.example.com\n", "registry.example.com"),
        ] {
            assert_eq!(Target::parse(input).unwrap().host, host, "{input}");
        }
        for bad in ["", "https://", "/path", "a..b"] {
            assert!(Target::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn kubelet_matching_rules() {
        let cases = [
            ("*.example.com", "registry.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", false),
            ("*.*.example.com", "a.b.example.com", true),
            ("registry.example.com", "registry.example.com:5000", false),
            (
                "registry.example.com:5000",
                "registry.example.com:5000/app:1",
                true,
            ),
            ("registry.example.com:5000", "registry.example.com", false),
            ("reg*.example.com", "registry.example.com/x", true),
            ("reg*.example.com", "other.example.com", false),
            (
                "registry.example.com/team",
                "registry.example.com/team/app:1",
                true,
            ),
            (
                "registry.example.com/team",
                "registry.example.com/team",
                true,
            ),
            (
                // A plain string prefix, as the kubelet compares paths.
                "registry.example.com/team",
                "registry.example.com/teamx/app",
                true,
            ),
            ("registry.example.com/team", "registry.example.com", false),
            ("127.0.0.1:5000", "127.0.0.1:5000", true),
            ("https://registry.example.com", "registry.example.com", true),
            (
                "registry.example.com",
                "registry.example.com/app@sha256:abc",
                true,
            ),
        ];
        for (p, t, want) in cases {
            assert_eq!(m(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "a..b", "exa mple.com", "/x"] {
            assert!(Pattern::new(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(p in "\\PC{0,40}", t in "\\PC{0,40}") {
            if let (Ok(p), Some(t)) = (Pattern::new(&p), Target::parse(&t)) {
                let _ = p.matches(&t);
            }
        }

        #[test]
        fn literal_host_matches_itself(h in "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}", port in proptest::option::of(1u16..)) {
            let host = match port { Some(p) => format!("{h}:{p}"), None => h };
            prop_assert!(m(&host, &host));
            let url = format!("https://{}/v2/", host);
            prop_assert!(m(&host, &url));
        }
    }
}
