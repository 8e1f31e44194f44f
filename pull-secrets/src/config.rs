//! The controller's YAML config (normally mounted from a ConfigMap) and its
//! validation into [`Settings`]. Unknown keys are errors; every problem is
//! reported with its key and line, all at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::selection::{NamespaceSelection, ServiceAccountSelection};

type S<T> = Spanned<T>;

/// The API's minimum `TokenRequest` lifetime.
pub(crate) const MIN_TOKEN_EXPIRATION: Duration = Duration::from_secs(600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_SECRET_NAME: &str = "regauth-pull";
const DEFAULT_LEASE_NAME: &str = "regauth-pull-secrets";
/// Longest prefix that still leaves room for `-<service account>`.
const MAX_SECRET_PREFIX: usize = 200;
/// Bounds on configured durations: beyond them a value is a typo (or an
/// attack on the arithmetic), and `check-config` says so.
const MAX_LEASE_DURATION: Duration = Duration::from_secs(3600);
const MIN_LEASE_DURATION: Duration = Duration::from_secs(1);
const MIN_RESYNC: Duration = Duration::from_secs(1);
/// Below these the controller would spin on the API or the token server.
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(100);
const MIN_MAX_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RESYNC: Duration = Duration::from_secs(24 * 3600);
const MAX_TOKEN_EXPIRATION: Duration = Duration::from_secs(24 * 3600);
const MAX_REFRESH_THRESHOLD: Duration = Duration::from_secs(24 * 3600);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the config cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit for a config file.
    #[error("{path}: {source}")]
    TooLarge {
        path: PathBuf,
        #[source]
        source: regauth_client::FileError,
    },
    /// Not YAML of the expected shape (unknown keys included).
    #[error("{path}: {source}")]
    Syntax {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// One or more values are wrong.
    #[error("{path}:\n{}", issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

/// One wrong value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub key: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.key, self.message)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    token_server: TokenServerFile,
    registries: Vec<RegistryFile>,
    #[serde(default)]
    audience: Option<S<String>>,
    #[serde(default)]
    namespaces: NamespacesFile,
    #[serde(default)]
    service_accounts: Option<S<Vec<String>>>,
    #[serde(default)]
    secret_name: Option<S<String>>,
    #[serde(default)]
    token_expiration: Option<S<String>>,
    #[serde(default)]
    refresh_threshold: Option<S<String>>,
    #[serde(default)]
    max_backoff: Option<S<String>>,
    #[serde(default)]
    resync_interval: Option<S<String>>,
    #[serde(default)]
    leader_election: LeaderElectionFile,
    #[serde(default)]
    listen: Option<S<String>>,
    #[serde(default)]
    scope: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenServerFile {
    url: S<String>,
    #[serde(default)]
    ca_file: Option<S<String>>,
    #[serde(default)]
    timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    hosts: S<Vec<String>>,
    service: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespacesFile {
    #[serde(default)]
    names: Option<S<Vec<String>>>,
    #[serde(default)]
    selector: Option<S<String>>,
    #[serde(default)]
    exclude: Option<S<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaderElectionFile {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    namespace: Option<S<String>>,
    #[serde(default)]
    lease_name: Option<S<String>>,
    #[serde(default)]
    lease_duration: Option<S<String>>,
    #[serde(default)]
    renew_interval: Option<S<String>>,
}

/// The token server and how to reach it.
#[derive(Debug, Clone)]
pub(crate) struct TokenServer {
    /// Base URL, without a trailing slash; `/token` is appended.
    pub url: String,
    /// Extra CA bundle.
    pub ca_file: Option<PathBuf>,
    /// Bound on one exchange.
    pub timeout: Duration,
}

/// One registry: the hosts its credential is written for, and its `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registry {
    /// `.dockerconfigjson` keys: `host`, `host:port` or `*.host` patterns.
    pub hosts: Vec<String>,
    /// The registry's `service` (the exchange's `audience`).
    pub service: String,
}

/// Leader election on a Lease.
#[derive(Debug, Clone)]
pub(crate) struct LeaderElection {
    pub enabled: bool,
    /// Namespace of the Lease (default: the pod's, from `POD_NAMESPACE`).
    pub namespace: Option<String>,
    pub lease_name: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews (well inside `lease_duration`).
    pub renew_interval: Duration,
}

/// What the controller's RBAC lets it see, and so how it watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Bound cluster-wide (ClusterRoleBinding): it watches namespaces,
    /// ServiceAccounts and its Secrets across the cluster.
    Cluster,
    /// Bound in each selected namespace (RoleBinding): it reads nothing
    /// cluster-wide, so the namespaces are the configured names only.
    Namespaced,
}

/// The validated config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub token_server: TokenServer,
    pub registries: Vec<Registry>,
    /// The audience of requested ServiceAccount tokens.
    pub audience: String,
    pub namespaces: NamespaceSelection,
    pub service_accounts: ServiceAccountSelection,
    /// Secrets are named `<secret_name>-<service account>`.
    pub secret_name: String,
    /// The requested ServiceAccount tokens' lifetime.
    pub token_expiration: Duration,
    /// Refresh when less than this remains; `None`: at half the remaining life.
    pub refresh_threshold: Option<Duration>,
    /// Longest wait between retries of a failing refresh.
    pub max_backoff: Duration,
    /// Every ServiceAccount is reconciled again this often, whatever the
    /// watches said, so a missed trigger heals.
    pub resync_interval: Duration,
    pub leader_election: LeaderElection,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: std::net::SocketAddr,
    /// Cluster-wide or per-namespace RBAC.
    pub scope: Scope,
}

/// Reads and validates `path`; relative paths in it resolve against its directory.
pub(crate) fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = regauth_client::read_bounded(path, regauth_client::MAX_CONFIG_BYTES).map_err(
        |e| match e {
            regauth_client::FileError::Io(source) => ConfigError::Read {
                path: path.to_owned(),
                source,
            },
            too_large => ConfigError::TooLarge {
                path: path.to_owned(),
                source: too_large,
            },
        },
    )?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|e| match e {
        Parse::Syntax(source) => ConfigError::Syntax {
            path: path.to_owned(),
            source: Box::new(source),
        },
        Parse::Invalid(issues) => ConfigError::Invalid {
            path: path.to_owned(),
            issues,
        },
    })
}

#[derive(Debug)]
enum Parse {
    Syntax(serde_saphyr::Error),
    Invalid(Vec<Issue>),
}

fn parse(text: &str, base: &Path) -> Result<Settings, Parse> {
    let file: File = serde_saphyr::from_str(text).map_err(Parse::Syntax)?;
    let mut check = Check::default();

    let url = file.token_server.url.value.trim_end_matches('/').to_owned();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        check.fail(
            "token_server.url",
            &file.token_server.url,
            "must be an http:// or https:// URL",
        );
    }
    let timeout = check.bounded(
        "token_server.timeout",
        &file.token_server.timeout,
        DEFAULT_TIMEOUT,
        Duration::ZERO,
        MAX_TIMEOUT,
    );
    let token_server = TokenServer {
        url,
        ca_file: file
            .token_server
            .ca_file
            .as_ref()
            .map(|p| base.join(&p.value)),
        timeout,
    };

    let mut registries = Vec::new();
    for (i, r) in file.registries.iter().enumerate() {
        if r.hosts.value.is_empty() {
            check.fail(
                format!("registries[{i}].hosts"),
                &r.hosts,
                "list at least one host",
            );
        }
        for host in &r.hosts.value {
            if let Err(message) = check_host(host) {
                check.fail(format!("registries[{i}].hosts"), &r.hosts, message);
            }
        }
        if r.service.value.trim().is_empty() {
            check.fail(
                format!("registries[{i}].service"),
                &r.service,
                "must not be empty",
            );
        }
        registries.push(Registry {
            hosts: r.hosts.value.clone(),
            service: r.service.value.clone(),
        });
    }
    if registries.is_empty() {
        check.issues.push(Issue {
            key: "registries".into(),
            line: 1,
            message: "list at least one registry".into(),
        });
    }
    let audience = match &file.audience {
        Some(a) if a.value.trim().is_empty() => {
            check.fail("audience", a, "must not be empty");
            String::new()
        }
        Some(a) => a.value.clone(),
        None => registries
            .first()
            .map(|r| r.service.clone())
            .unwrap_or_default(),
    };

    let exclude = file
        .namespaces
        .exclude
        .as_ref()
        .map(|e| {
            check.names("namespaces.exclude", e, Kind::Label);
            e.value.clone()
        })
        .unwrap_or_default();
    if let Some(names) = &file.namespaces.names {
        check.names("namespaces.names", names, Kind::Label);
    }
    let namespaces = match (&file.namespaces.names, &file.namespaces.selector) {
        (Some(names), Some(_)) => {
            check.fail(
                "namespaces",
                names,
                "give either names or selector, not both",
            );
            NamespaceSelection::all(Vec::new())
        }
        (Some(names), None) => NamespaceSelection::names(names.value.clone(), exclude.clone()),
        (None, Some(selector)) => {
            match NamespaceSelection::selector(&selector.value, exclude.clone()) {
                Ok(s) => s,
                Err(e) => {
                    check.fail("namespaces.selector", selector, e);
                    NamespaceSelection::all(Vec::new())
                }
            }
        }
        (None, None) => NamespaceSelection::all(exclude),
    };
    let service_accounts = match &file.service_accounts {
        Some(list) if list.value.is_empty() => {
            check.fail("service_accounts", list, "list at least one name");
            ServiceAccountSelection::new(Vec::new())
        }
        Some(list) if list.value.iter().any(|n| n == "*") => {
            // Every name would need RBAC without resourceNames: reading
            // every Secret in the cluster and tokens for every
            // ServiceAccount. No such mode is offered.
            check.fail(
                "service_accounts",
                list,
                "\"*\" is not supported: list the ServiceAccount names, so that RBAC can confine \
                 the controller to their Secrets and tokens",
            );
            ServiceAccountSelection::new(Vec::new())
        }
        Some(list) => {
            check.names("service_accounts", list, Kind::Subdomain);
            ServiceAccountSelection::new(list.value.clone())
        }
        None => ServiceAccountSelection::new(vec!["default".to_owned()]),
    };

    let secret_name = match &file.secret_name {
        Some(name) => {
            if let Err(message) = check_secret_prefix(&name.value) {
                check.fail("secret_name", name, message);
            }
            name.value.clone()
        }
        None => DEFAULT_SECRET_NAME.to_owned(),
    };
    let token_expiration = check.bounded(
        "token_expiration",
        &file.token_expiration,
        MIN_TOKEN_EXPIRATION,
        MIN_TOKEN_EXPIRATION,
        MAX_TOKEN_EXPIRATION,
    );
    let refresh_threshold = file.refresh_threshold.as_ref().map(|_| {
        check.bounded(
            "refresh_threshold",
            &file.refresh_threshold,
            Duration::ZERO,
            Duration::ZERO,
            MAX_REFRESH_THRESHOLD,
        )
    });
    let max_backoff = check.bounded(
        "max_backoff",
        &file.max_backoff,
        DEFAULT_MAX_BACKOFF,
        MIN_MAX_BACKOFF,
        MAX_BACKOFF,
    );
    let resync_interval = check.bounded(
        "resync_interval",
        &file.resync_interval,
        DEFAULT_RESYNC,
        MIN_RESYNC,
        MAX_RESYNC,
    );

    let le = &file.leader_election;
    let lease_duration = check.bounded(
        "leader_election.lease_duration",
        &le.lease_duration,
        DEFAULT_LEASE_DURATION,
        MIN_LEASE_DURATION,
        MAX_LEASE_DURATION,
    );
    let renew_interval = check.bounded(
        "leader_election.renew_interval",
        &le.renew_interval,
        DEFAULT_RENEW_INTERVAL,
        MIN_RENEW_INTERVAL,
        MAX_LEASE_DURATION,
    );
    if let Some(namespace) = &le.namespace {
        check.name("leader_election.namespace", namespace, Kind::Label);
    }
    if let Some(name) = &le.lease_name {
        check.name("leader_election.lease_name", name, Kind::Subdomain);
    }
    // Checked: a huge renew_interval must be an error, not an overflow.
    if renew_interval
        .checked_mul(2)
        .is_none_or(|twice| twice > lease_duration)
        && let Some(at) = le.renew_interval.as_ref().or(le.lease_duration.as_ref())
    {
        check.fail(
            "leader_election.renew_interval",
            at,
            "must be at most half of lease_duration, so a renewal can fail once without losing the lease",
        );
    }
    let leader_election = LeaderElection {
        enabled: le.enabled.unwrap_or(true),
        namespace: le.namespace.as_ref().map(|n| n.value.clone()),
        lease_name: le
            .lease_name
            .as_ref()
            .map_or_else(|| DEFAULT_LEASE_NAME.to_owned(), |n| n.value.clone()),
        lease_duration,
        renew_interval,
    };
    let listen = match &file.listen {
        Some(l) => l.value.parse().unwrap_or_else(|e| {
            check.fail(
                "listen",
                l,
                format!("not an address like 0.0.0.0:8080: {e}"),
            );
            default_listen()
        }),
        None => default_listen(),
    };
    let scope = match &file.scope {
        None => Scope::Cluster,
        Some(s) if s.value == "cluster" => Scope::Cluster,
        Some(s) if s.value == "namespaced" => {
            if file.namespaces.names.is_none() {
                check.fail(
                    "scope",
                    s,
                    "namespaced needs namespaces.names: without cluster-wide RBAC the controller cannot list namespaces",
                );
            }
            Scope::Namespaced
        }
        Some(s) => {
            check.fail("scope", s, "must be cluster or namespaced");
            Scope::Cluster
        }
    };

    if !check.issues.is_empty() {
        return Err(Parse::Invalid(check.issues));
    }
    Ok(Settings {
        token_server,
        registries,
        audience,
        namespaces,
        service_accounts,
        secret_name,
        token_expiration,
        refresh_threshold,
        max_backoff,
        resync_interval,
        leader_election,
        listen,
        scope,
    })
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// A `.dockerconfigjson` key: a host with an optional port, whose labels
/// may be `*` globs (the kubelet matches them like `matchImages`).
fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{host:?}: the port must be a number"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!(
            "{host:?} is not a host like registry.example.com, registry:5000 or *.example.com"
        ));
    }
    Ok(())
}

fn check_secret_prefix(name: &str) -> Result<(), String> {
    if name.len() > MAX_SECRET_PREFIX {
        return Err(format!(
            "{name:?} is longer than {MAX_SECRET_PREFIX} characters"
        ));
    }
    Kind::Subdomain.check(name)
}

/// The two shapes of Kubernetes names (RFC 1123).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A label: namespaces (at most 63 characters, no dots).
    Label,
    /// A subdomain: most object names (at most 253 characters, dot-separated labels).
    Subdomain,
}

impl Kind {
    /// Checks `name`, saying what is wrong with it.
    pub(crate) fn check(self, name: &str) -> Result<(), String> {
        let (max, what) = match self {
            Kind::Label => (63, "an RFC 1123 label"),
            Kind::Subdomain => (253, "an RFC 1123 subdomain"),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let ok = !name.is_empty()
            && name.len() <= max
            && match self {
                Kind::Label => label_ok(name),
                Kind::Subdomain => name.split('.').all(label_ok),
            };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{name:?} is not {what}: lowercase letters, digits and '-'{}, starting and ending alphanumeric, at most {max} characters",
                if self == Kind::Subdomain {
                    " in labels separated by '.'"
                } else {
                    ""
                }
            ))
        }
    }
}

#[derive(Debug, Default)]
struct Check {
    issues: Vec<Issue>,
}

impl Check {
    fn fail<T>(&mut self, key: impl Into<String>, at: &Spanned<T>, message: impl fmt::Display) {
        self.issues.push(Issue {
            key: key.into(),
            line: at.referenced.line() as usize,
            message: message.to_string(),
        });
    }

    /// A name, checked as `kind`.
    fn name(&mut self, key: &str, value: &Spanned<String>, kind: Kind) {
        if let Err(message) = kind.check(&value.value) {
            self.fail(key, value, message);
        }
    }

    /// Every name of a list, checked as `kind`.
    fn names(&mut self, key: &str, list: &Spanned<Vec<String>>, kind: Kind) {
        for name in &list.value {
            if let Err(message) = kind.check(name) {
                self.fail(key, list, message);
            }
        }
    }

    /// A duration in `[min, max]` (and above zero), or the default.
    fn bounded(
        &mut self,
        key: &str,
        value: &Option<S<String>>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(at) = value else { return default };
        let d = self.duration(key, value, default);
        if d < min {
            self.fail(
                key,
                at,
                format!("must be at least {}", humantime::format_duration(min)),
            );
            default
        } else if d > max {
            self.fail(
                key,
                at,
                format!("must be at most {}", humantime::format_duration(max)),
            );
            default
        } else {
            d
        }
    }

    fn duration(&mut self, key: &str, value: &Option<S<String>>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(&value.value) {
            Ok(d) if d.is_zero() => {
                self.fail(key, value, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.fail(
                    key,
                    value,
                    format!(
                        "invalid duration {:?} ({e}); write e.g. 30s, 10m, 1h",
                        value.value
                    ),
                );
                default
            }
        }
    }
}

/// Parses a config text, for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn settings(text: &str) -> Settings {
        parse(text, Path::new("/etc/regauth")).unwrap_or_else(|e| panic!("{e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
    const MINIMAL: &str = "token_server:\n  url: https://auth.example.com/\nregistries:\n  - hosts: [registry.example.com]\n    service: registry.example.com\n";

    fn parsed(text: &str) -> Settings {
        parse(text, Path::new("/etc/regauth")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn issues(text: &str) -> Vec<Issue> {
        match parse(text, Path::new("/etc/regauth")) {
            Err(Parse::Invalid(issues)) => issues,
            other => panic!("expected issues, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let s = parsed(MINIMAL);
        assert_eq!(s.token_server.url, "https://auth.example.com");
        assert_eq!(s.audience, "registry.example.com");
        assert_eq!(s.secret_name, DEFAULT_SECRET_NAME);
        assert_eq!(s.token_expiration, MIN_TOKEN_EXPIRATION);
        assert!(s.refresh_threshold.is_none());
        assert!(s.service_accounts.selects("default") && !s.service_accounts.selects("builder"));
        assert!(s.leader_election.enabled);
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    }

    /// A path to something huge (a device, a log) is refused by size,
    /// naming the file, instead of being read into memory.
    #[test]
    fn an_oversized_config_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pull-secrets.yaml");
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(regauth_client::MAX_CONFIG_BYTES + 1).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
        let shown = format!("{err}");
        assert!(
            shown.contains("pull-secrets.yaml") && shown.contains("16 MiB"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_keys_are_syntax_errors() {
        let err = parse(&format!("{MINIMAL}secretname: x\n"), Path::new("/")).unwrap_err();
        assert!(matches!(err, Parse::Syntax(_)), "{err:?}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_line() {
        let text = "token_server:\n  url: ftp://x\n  timeout: soon\nregistries:\n  - hosts: [\"bad host\"]\n    service: r\ntoken_expiration: 5m\nsecret_name: Not_Valid\nnamespaces:\n  selector: \"a b\"\n";
        let found = issues(text);
        let keys: Vec<&str> = found.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "token_server.url",
                "token_server.timeout",
                "registries[0].hosts",
                "namespaces.selector",
                "secret_name",
                "token_expiration"
            ]
        );
        assert_eq!(found[0].line, 2);
        assert_eq!(found[5].line, 7);
    }

    #[test]
    fn renewal_must_fit_twice_in_the_lease() {
        let found = issues(&format!(
            "{MINIMAL}leader_election:\n  lease_duration: 10s\n  renew_interval: 6s\n"
        ));
        assert_eq!(found[0].key, "leader_election.renew_interval");
    }

    #[test]
    fn hostile_durations_are_refused_with_their_line() {
        let found = issues(&format!(
            "{MINIMAL}resync_interval: 10ms\nleader_election:\n  lease_duration: 500000000000y\n  renew_interval: 5s\n"
        ));
        let keys: Vec<(&str, usize)> = found.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            keys,
            [
                ("resync_interval", 6),
                ("leader_election.lease_duration", 8),
            ],
            "{found:?}"
        );
        assert!(found[0].message.contains("at least 1s"), "{found:?}");
        assert!(found[1].message.contains("at most 1h"), "{found:?}");
        // A renewal too large to double is an error, not an overflow.
        let found = issues(&format!(
            "{MINIMAL}leader_election:\n  renew_interval: 500000000000y\n"
        ));
        assert_eq!(found[0].key, "leader_election.renew_interval");
        for (key, value) in [
            ("token_expiration", "48h"),
            ("refresh_threshold", "30d"),
            ("max_backoff", "2h"),
            ("max_backoff", "10ms"),
            ("resync_interval", "2d"),
        ] {
            let found = issues(&format!("{MINIMAL}{key}: {value}\n"));
            assert_eq!(found.len(), 1, "{key}: {value}: {found:?}");
            assert_eq!((found[0].key.as_str(), found[0].line), (key, 6));
        }
    }

    #[test]
    fn names_must_be_kubernetes_names() {
        let text = format!(
            "{MINIMAL}leader_election:\n  namespace: \"kube system\"\n  lease_name: ../../../../api/v1/secrets\nservice_accounts: [default, \"Bad_Name\", \"a/b\"]\nnamespaces:\n  names: [team-a, \"../x\"]\n  exclude: [\"-x\"]\nsecret_name: \"a.-b\"\n"
        );
        let found = issues(&text);
        let keys: Vec<(&str, usize)> = found.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            keys,
            [
                ("namespaces.exclude", 12),
                ("namespaces.names", 11),
                ("service_accounts", 9),
                ("service_accounts", 9),
                ("secret_name", 13),
                ("leader_election.namespace", 7),
                ("leader_election.lease_name", 8),
            ],
            "{found:?}"
        );
        assert!(found[6].message.contains("RFC 1123"), "{found:?}");
        // Good names pass.
        let s = parsed(&format!(
            "{MINIMAL}service_accounts: [default, builder.v2]\nleader_election:\n  namespace: regauth\n  lease_name: regauth-pull-secrets.v2\n"
        ));
        assert!(s.service_accounts.selects("builder.v2") && !s.service_accounts.selects("other"));
    }

    /// No RBAC could confine a controller that serves every ServiceAccount
    /// name: `*` is refused, alone or among names, with its line.
    #[test]
    fn a_star_for_service_accounts_is_refused() {
        for list in ["[\"*\"]", "[default, \"*\"]"] {
            let found = issues(&format!("{MINIMAL}service_accounts: {list}\n"));
            assert_eq!(found.len(), 1, "{list}: {found:?}");
            assert_eq!(
                (found[0].key.as_str(), found[0].line),
                ("service_accounts", 6),
                "{found:?}"
            );
            assert!(
                found[0].message.contains("\"*\" is not supported"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn the_namespaced_scope_needs_a_list_of_namespaces() {
        let s = parsed(&format!(
            "{MINIMAL}scope: namespaced\nnamespaces:\n  names: [team-a]\n"
        ));
        assert_eq!(s.scope, Scope::Namespaced);
        let found = issues(&format!(
            "{MINIMAL}scope: namespaced\nnamespaces:\n  selector: a=b\n"
        ));
        assert_eq!(found[0].key, "scope");
        let found = issues(&format!("{MINIMAL}scope: everywhere\n"));
        assert_eq!((found[0].key.as_str(), found[0].line), ("scope", 6));
        assert_eq!(parsed(MINIMAL).scope, Scope::Cluster);
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Any number with any unit in any duration key: the parser never
        /// panics, and what it accepts is within the bounds.
        #[test]
        fn any_duration_parses_or_is_refused_without_panicking(
            key in proptest::sample::select(vec![
                "token_expiration", "refresh_threshold", "max_backoff", "resync_interval",
                "leader_election.lease_duration", "leader_election.renew_interval",
                "token_server.timeout",
            ]),
            number in proptest::prop_oneof![
                proptest::num::u64::ANY.prop_map(|n| n.to_string()),
                "[0-9]{1,40}",
            ],
            unit in proptest::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", ""]),
        ) {
            let value = format!("{number}{unit}");
            let text = match key.split_once('.') {
                Some(("token_server", field)) => format!(
                    "token_server:\n  url: https://a\n  {field}: {value}\nregistries:\n  - hosts: [r.example.com]\n    service: r\n"
                ),
                Some((section, field)) => format!("{MINIMAL}{section}:\n  {field}: {value}\n"),
                None => format!("{MINIMAL}{key}: {value}\n"),
            };
            if let Ok(s) = parse(&text, Path::new("/")) {
                proptest::prop_assert!(s.leader_election.lease_duration <= MAX_LEASE_DURATION);
                proptest::prop_assert!(s.leader_election.renew_interval.checked_mul(2).is_some());
                proptest::prop_assert!(s.resync_interval >= MIN_RESYNC && s.resync_interval <= MAX_RESYNC);
                proptest::prop_assert!(s.token_expiration <= MAX_TOKEN_EXPIRATION);
                proptest::prop_assert!(s.max_backoff <= MAX_BACKOFF);
                proptest::prop_assert!(s.token_server.timeout <= MAX_TIMEOUT);
            }
        }
    }
}
