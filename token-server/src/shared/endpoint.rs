//! Where the shared state lives: the `shared_state` URL, parsed once.
//!
//! - `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?protocol=resp2|resp3]`
//!   (`rediss://` for TLS): one Redis, or a primary behind one address.
//! - `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[?db=N]`
//!   (`rediss+sentinel://` for TLS to the sentinels and the primary): the
//!   sentinels are asked where the primary named MASTER_NAME is, and asked
//!   again after a failover. The user and password are the primary's;
//!   sentinels are asked without credentials.
//!
//! The URL may hold a password, so errors name the part that is wrong and
//! never echo the URL.

use std::fmt;

use percent_encoding::percent_decode_str;

use crate::secret::Secret;

/// The port a sentinel listens on when the URL names none.
pub const SENTINEL_PORT: u16 = 26379;

/// Most sentinels one URL may name.
const MAX_SENTINELS: usize = 16;

/// Longest host name, master name, user name or password taken.
const MAX_PART: usize = 1024;

/// A parsed `shared_state`.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// One Redis address: the URL as given, which redis-rs reads.
    Direct {
        /// The `redis://` or `rediss://` URL.
        url: Secret,
        /// `rediss://`.
        tls: bool,
    },
    /// A primary found through Redis Sentinel.
    Sentinel(SentinelEndpoint),
}

/// A primary found through Redis Sentinel.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelEndpoint {
    /// TLS to the sentinels and to the primary (`rediss+sentinel://`).
    pub tls: bool,
    /// The sentinels, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// The database number on the primary.
    pub db: i64,
    /// The primary's user name, if any.
    pub username: Option<String>,
    /// The primary's password, if any.
    pub password: Option<Secret>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Direct { tls, .. } => f
                .debug_struct("Direct")
                .field("tls", tls)
                .finish_non_exhaustive(),
            Endpoint::Sentinel(s) => s.fmt(f),
        }
    }
}

impl fmt::Debug for SentinelEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinel")
            .field("tls", &self.tls)
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// Why a `shared_state` URL was refused. Messages never hold the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not one of the four schemes.
    #[error(
        "must be a redis://HOST:PORT/DB, rediss://HOST:PORT/DB, redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[?db=N] or rediss+sentinel://... URL"
    )]
    Scheme,
    /// redis-rs refused a `redis://` or `rediss://` URL that passed the
    /// checks below: a part they do not know.
    #[error("is not a usable Redis URL ({0})")]
    Redis(String),
    /// The host of a `redis://` URL: missing, not a name or address, or a
    /// wildcard address.
    #[error(
        "the host must be a host name or an IP address ([...] for IPv6), not empty nor a wildcard address"
    )]
    RedisHost,
    /// The port of a `redis://` URL.
    #[error("the port must be a number from 1 to 65535 (6379 when none is given)")]
    RedisPort,
    /// The path of a `redis://` URL.
    #[error("the path must be /DB, a database number from 0 to 65535, or nothing (database 0)")]
    Database,
    /// The query of a `redis://` URL.
    #[error("takes no query but ?protocol=resp2 or ?protocol=resp3")]
    RedisQuery,
    /// A `#fragment` (redis-rs reads `#insecure` as: skip certificate checks).
    #[error("takes no #fragment (#insecure would turn off TLS certificate checks)")]
    Fragment,
    /// An empty entry in the list of sentinels (or none at all).
    #[error("sentinel {0}: empty; sentinels are HOST[:PORT] separated by commas")]
    NoSentinel(usize),
    /// Too many sentinels.
    #[error("names more than {MAX_SENTINELS} sentinels")]
    TooManySentinels,
    /// A sentinel host that is not a host name or an IP address.
    #[error("sentinel {0}: not a host name or IP address")]
    Host(usize),
    /// A sentinel port that is not 1 to 65535.
    #[error("sentinel {0}: the port must be a number from 1 to 65535")]
    Port(usize),
    /// `/MASTER_NAME` is missing or not a name.
    #[error("needs /MASTER_NAME after the sentinels: 1 to 128 letters, digits, '.', '_' or '-'")]
    Master,
    /// A query other than `db=N`.
    #[error("takes only ?db=N, a database number from 0 to 65535")]
    Query,
    /// User name or password not percent-decodable, or too long.
    #[error("the user name or password is not valid percent-encoded UTF-8, or too long")]
    Credentials,
}

impl Endpoint {
    /// Parses a `shared_state` value.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::Scheme)?;
        match scheme {
            "redis" | "rediss" => {
                direct(rest)?;
                redis::Client::open(url).map_err(|e| UrlError::Redis(format!("{:?}", e.kind())))?;
                Ok(Endpoint::Direct {
                    url: Secret::new(url.to_owned()),
                    tls: scheme == "rediss",
                })
            }
            "redis+sentinel" | "rediss+sentinel" => Ok(Endpoint::Sentinel(sentinel(
                scheme == "rediss+sentinel",
                rest,
            )?)),
            _ => Err(UrlError::Scheme),
        }
    }

    /// True for `rediss://` and `rediss+sentinel://`.
    pub fn tls(&self) -> bool {
        match self {
            Endpoint::Direct { tls, .. } => *tls,
            Endpoint::Sentinel(s) => s.tls,
        }
    }
}

/// Checks a `redis://` URL after its scheme part by part, so that what is
/// wrong is named (redis-rs, which reads it, only says that it is not
/// usable).
fn direct(rest: &str) -> Result<(), UrlError> {
    if rest.contains('#') {
        return Err(UrlError::Fragment);
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => {
            let (user, pass) = credentials.split_once(':').unwrap_or((credentials, ""));
            decode(user)?;
            decode(pass)?;
            hosts
        }
        None => authority,
    };
    let (host, port) = split_host_port(hosts).ok_or(UrlError::RedisHost)?;
    if !host_ok(host) || ["0.0.0.0", "::"].contains(&host) {
        return Err(UrlError::RedisHost);
    }
    if let Some(p) = port {
        parse_port(p).ok_or(UrlError::RedisPort)?;
    }
    if !path.is_empty() && number_up_to_65535(path).is_none() {
        return Err(UrlError::Database);
    }
    match query {
        None | Some("protocol=resp2" | "protocol=resp3") => Ok(()),
        Some(_) => Err(UrlError::RedisQuery),
    }
}

/// `HOST[:PORT]` or `[V6][:PORT]` into the host and the port's text;
/// `None` for a bracket left open or text after it.
fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    match text.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']')?;
            addr.parse::<std::net::Ipv6Addr>().ok()?;
            match after {
                "" => Some((addr, None)),
                p => Some((addr, Some(p.strip_prefix(':')?))),
            }
        }
        None => Some(match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }),
    }
}

fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
}

/// A port: 1 to 65535, in digits only.
fn parse_port(text: &str) -> Option<u16> {
    number_up_to_65535(text).and_then(|n| u16::try_from(n).ok().filter(|n| *n > 0))
}

/// 0 to 65535, in at most five digits only.
fn number_up_to_65535(text: &str) -> Option<u32> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    text.parse::<u32>().ok().filter(|n| digits && *n <= 65535)
}

fn sentinel(tls: bool, rest: &str) -> Result<SentinelEndpoint, UrlError> {
    let (authority, path) = rest.split_once('/').ok_or(UrlError::Master)?;
    // The password may hold '@': the last one ends the credentials.
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (username, password) = match credentials {
        None => (None, None),
        Some(c) => {
            let (user, pass) = match c.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (c, None),
            };
            let user = decode(user)?;
            let pass = pass.map(decode).transpose()?;
            (
                (!user.is_empty()).then_some(user),
                pass.filter(|p| !p.is_empty()).map(Secret::new),
            )
        }
    };
    let mut sentinels = Vec::new();
    for (i, host) in hosts.split(',').enumerate() {
        if i >= MAX_SENTINELS {
            return Err(UrlError::TooManySentinels);
        }
        sentinels.push(host_port(i + 1, host)?);
    }
    let (master, query) = match path.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (path, None),
    };
    let master_ok = !master.is_empty()
        && master.len() <= 128
        && master
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !master_ok {
        return Err(UrlError::Master);
    }
    let db = match query {
        None => 0,
        Some(q) => {
            let n = q.strip_prefix("db=").ok_or(UrlError::Query)?;
            i64::from(number_up_to_65535(n).ok_or(UrlError::Query)?)
        }
    };
    Ok(SentinelEndpoint {
        tls,
        sentinels,
        master: master.to_owned(),
        db,
        username,
        password,
    })
}

/// `HOST[:PORT]` or `[V6][:PORT]`, the `i`th sentinel of the list.
fn host_port(i: usize, text: &str) -> Result<(String, u16), UrlError> {
    if text.is_empty() {
        return Err(UrlError::NoSentinel(i));
    }
    let (host, port) = split_host_port(text).ok_or(UrlError::Host(i))?;
    if !host_ok(host) {
        return Err(UrlError::Host(i));
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(p) => parse_port(p).ok_or(UrlError::Port(i))?,
    };
    Ok((host.to_owned(), port))
}

fn decode(text: &str) -> Result<String, UrlError> {
    if text.len() > MAX_PART {
        return Err(UrlError::Credentials);
    }
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| UrlError::Credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel_of(url: &str) -> SentinelEndpoint {
        match Endpoint::parse(url).unwrap() {
            Endpoint::Sentinel(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_and_db() {
        let s = sentinel_of("redis+sentinel://10.0.0.1:26379,sentinel-b,[::1]:26380/regauth?db=3");
        assert!(!s.tls);
        assert_eq!(
            s.sentinels,
            [
                ("10.0.0.1".to_owned(), 26379),
                ("sentinel-b".to_owned(), SENTINEL_PORT),
                ("::1".to_owned(), 26380)
            ]
        );
        assert_eq!((s.master.as_str(), s.db), ("regauth", 3));
        let s = sentinel_of("rediss+sentinel://:p%40ss@h:1/m");
        assert!(s.tls);
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(s.username, None);
        let s = sentinel_of("redis+sentinel://user:pa@ss@h/m");
        assert_eq!(s.username.as_deref(), Some("user"));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("pa@ss"));
    }

    #[test]
    fn bad_urls_are_refused_naming_the_part_without_the_password() {
        for (url, err) in [
            ("http://h/0", UrlError::Scheme),
            ("redis+sentinel://h:1", UrlError::Master),
            ("redis+sentinel://h:1/", UrlError::Master),
            ("redis+sentinel://h:1/a b", UrlError::Master),
            ("redis+sentinel://,h/m", UrlError::NoSentinel(1)),
            ("redis+sentinel://h,,h2/m", UrlError::NoSentinel(2)),
            ("redis+sentinel:///m", UrlError::NoSentinel(1)),
            ("redis+sentinel://h:0/m", UrlError::Port(1)),
            ("redis+sentinel://h:99999/m", UrlError::Port(1)),
            ("redis+sentinel://a,h:+1/m", UrlError::Port(2)),
            ("redis+sentinel://h o/m", UrlError::Host(1)),
            ("redis+sentinel://[zz]:1/m", UrlError::Host(1)),
            ("redis+sentinel://h/m?db=x", UrlError::Query),
            ("redis+sentinel://h/m?db=70000", UrlError::Query),
            ("redis+sentinel://h/m?password=x", UrlError::Query),
            ("redis+sentinel://:%ff@h/m", UrlError::Credentials),
            ("redis://:hunter2@h:notaport/0", UrlError::RedisPort),
            ("redis://:hunter2@h:0/0", UrlError::RedisPort),
            ("redis://:hunter2@h:99999/0", UrlError::RedisPort),
            ("redis://u:hunter2@h:1/abc", UrlError::Database),
            ("redis://u:hunter2@h:1/0/1", UrlError::Database),
            ("redis://u:hunter2@h:1/70000", UrlError::Database),
            (
                "redis://u:hunter2@h:1/0?protocol=resp9",
                UrlError::RedisQuery,
            ),
            ("rediss://u:hunter2@h:1/0?db=1", UrlError::RedisQuery),
            ("rediss://u:hunter2@h:1/0#insecure", UrlError::Fragment),
            ("redis://u:hunter2@/0", UrlError::RedisHost),
            ("redis://u:hunter2@0.0.0.0:1/0", UrlError::RedisHost),
            ("redis://u:hunter2@[::]:1/0", UrlError::RedisHost),
            ("redis://u:hunter2@h o:1/0", UrlError::RedisHost),
            ("redis://u:hunter2@[zz]:1/0", UrlError::RedisHost),
            ("redis://u:hunter2%ff@h:1/0", UrlError::Credentials),
        ] {
            assert_eq!(Endpoint::parse(url), Err(err.clone()), "{url}");
            assert!(!err.to_string().contains("hunter2"));
        }
        let many = format!("redis+sentinel://{}/m", vec!["h"; 17].join(","));
        assert_eq!(Endpoint::parse(&many), Err(UrlError::TooManySentinels));
        let shown = format!(
            "{:?}",
            Endpoint::parse("redis+sentinel://:hunter2@h/m").unwrap()
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = format!("{:?}", Endpoint::parse("redis://:hunter2@h:1/0").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        for good in [
            "redis://h",
            "redis://h:6380",
            "redis://h:6380/",
            "redis://u:p%40ss@h:6380/15",
            "rediss://[::1]:6380/0?protocol=resp3",
            "redis://:pa@ss@10.0.0.1/2?protocol=resp2",
        ] {
            assert!(Endpoint::parse(good).is_ok(), "{good}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(url in "\\PC{0,80}") {
            let _ = Endpoint::parse(&url);
            let _ = Endpoint::parse(&format!("redis+sentinel://{url}"));
        }
    }
}
