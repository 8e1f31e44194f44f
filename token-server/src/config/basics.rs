//! The top-level keys: where to listen, who the server is, which registries
//! it serves, and token lifetimes.

use std::net::SocketAddr;
use std::time::Duration;

use super::check::Check;
use super::file::ConfigFile;
use super::{DEFAULT_ACCESS_TTL, DEFAULT_LISTEN, DEFAULT_PASSWORD_CACHE_TTL, DEFAULT_REFRESH_TTL};

/// The top-level settings of a config file.
pub(super) struct Basics {
    pub(super) listen: Option<SocketAddr>,
    pub(super) public_url: Option<String>,
    pub(super) issuer: String,
    pub(super) services: Vec<String>,
    pub(super) access_token_ttl: Duration,
    pub(super) refresh_token_ttl: Duration,
    pub(super) password_cache_ttl: Duration,
}

pub(super) fn basics(file: &ConfigFile, c: &mut Check) -> Basics {
    let listen = match &file.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(v) => v
            .value
            .parse::<SocketAddr>()
            .map_err(|_| c.fail("listen", v, "expected HOST:PORT, e.g. 127.0.0.1:5001"))
            .ok(),
    };
    let public_url = match &file.public_url {
        Some(v) if !(v.value.starts_with("http://") || v.value.starts_with("https://")) => {
            c.fail("public_url", v, "must start with http:// or https://");
            None
        }
        Some(v) => Some(v.value.trim_end_matches('/').to_owned()),
        None => listen.map(|l| {
            format!(
                "{}://{l}",
                if file.tls.is_some() { "https" } else { "http" }
            )
        }),
    };

    let issuer = file.issuer.value.clone();
    if issuer.is_empty() {
        c.fail("issuer", &file.issuer, "must not be empty");
    }
    let services = file.services.value.clone();
    if services.is_empty() {
        c.fail(
            "services",
            &file.services,
            "list at least one registry service name",
        );
    }
    if services.iter().any(|s| s.is_empty()) {
        c.fail(
            "services",
            &file.services,
            "service names must not be empty",
        );
    }
    if services.contains(&issuer) {
        // Refresh tokens use the issuer as audience; a registry with that
        // service name could then be handed one as an access token.
        c.fail(
            "services",
            &file.services,
            "must not contain the issuer name",
        );
    }
    Basics {
        listen,
        public_url,
        issuer,
        services,
        access_token_ttl: c.duration(
            "access_token_ttl",
            &file.access_token_ttl,
            DEFAULT_ACCESS_TTL,
            false,
        ),
        refresh_token_ttl: c.duration(
            "refresh_token_ttl",
            &file.refresh_token_ttl,
            DEFAULT_REFRESH_TTL,
            false,
        ),
        password_cache_ttl: c.duration(
            "password_cache_ttl",
            &file.password_cache_ttl,
            DEFAULT_PASSWORD_CACHE_TTL,
            true,
        ),
    }
}
