//! Where the shared state lives: the `shared_state` URL, parsed once.
//!
//! - `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]` (`rediss://` for TLS): one
//!   Redis, or a primary behind one address.
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
    /// redis-rs refused a `redis://` or `rediss://` URL.
    #[error("is not a usable Redis URL ({0})")]
    Redis(String),
    /// No sentinel, or an empty entry in the list.
    #[error("names no sentinel, or an empty one, before the master name")]
    NoSentinel,
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
            let valid = !n.is_empty() && n.len() <= 5 && n.bytes().all(|b| b.is_ascii_digit());
            let db: u32 = n.parse().ok().filter(|_| valid).ok_or(UrlError::Query)?;
            if db > 65535 {
                return Err(UrlError::Query);
            }
            i64::from(db)
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

/// `HOST[:PORT]` or `[V6][:PORT]`, the `i`th of the list.
fn host_port(i: usize, text: &str) -> Result<(String, u16), UrlError> {
    if text.is_empty() {
        return Err(UrlError::NoSentinel);
    }
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or(UrlError::Host(i))?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| UrlError::Host(i))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UrlError::Port(i))?),
        };
        (addr, port)
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if !host_ok {
        return Err(UrlError::Host(i));
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(p) => {
            let valid = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
            p.parse::<u16>()
                .ok()
                .filter(|n| valid && *n > 0)
                .ok_or(UrlError::Port(i))?
        }
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
            ("redis+sentinel://,h/m", UrlError::NoSentinel),
            ("redis+sentinel:///m", UrlError::NoSentinel),
            ("redis+sentinel://h:0/m", UrlError::Port(1)),
            ("redis+sentinel://h:99999/m", UrlError::Port(1)),
            ("redis+sentinel://a,h:+1/m", UrlError::Port(2)),
            ("redis+sentinel://h o/m", UrlError::Host(1)),
            ("redis+sentinel://[zz]:1/m", UrlError::Host(1)),
            ("redis+sentinel://h/m?db=x", UrlError::Query),
            ("redis+sentinel://h/m?db=70000", UrlError::Query),
            ("redis+sentinel://h/m?password=x", UrlError::Query),
            ("redis+sentinel://:%ff@h/m", UrlError::Credentials),
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
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(url in "\\PC{0,80}") {
            let _ = Endpoint::parse(&url);
            let _ = Endpoint::parse(&format!("redis+sentinel://{url}"));
        }
    }
}
