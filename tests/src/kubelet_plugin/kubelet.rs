//! What the kubelet does with a plugin's answer before a credential reaches
//! the CRI, reduced to the parts that decide which credential that is
//! (`pkg/credentialprovider/plugin` and `keyring.go` of Kubernetes):
//!
//! 1. the plugin only runs for images its `matchImages` cover;
//! 2. before running it, the cache is searched under the image, then its
//!    registry (the part before the first `/`), then the global key;
//! 3. a response is cached under the key its `cacheKeyType` names
//!    (`Image`, `Registry`, `Global`) for `cacheDuration`, and not at all
//!    when that is zero;
//! 4. the response's `auth` becomes a keyring, and the image is looked up in
//!    it: every key that matches the image (the rules of [`urls_match`])
//!    yields its credential, in reverse key order (so a longer key comes
//!    before its prefix). The CRI gets those, and tries them in turn.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{AuthConfig, Plugin, Request, Response};

/// The global cache key.
const GLOBAL: &str = "global";

#[derive(Debug)]
struct Cached {
    key: String,
    expires: Instant,
    auth: BTreeMap<String, AuthConfig>,
}

/// A kubelet with one exec credential provider: the plugin.
#[derive(Debug)]
pub struct Kubelet<'a> {
    plugin: &'a Plugin,
    match_images: Vec<String>,
    api_version: String,
    cache: Vec<Cached>,
    runs: usize,
}

impl<'a> Kubelet<'a> {
    /// A kubelet running `plugin` (speaking `v1`) for images `match_images` cover.
    pub fn new(plugin: &'a Plugin, match_images: &[&str]) -> Self {
        Self {
            plugin,
            match_images: match_images.iter().map(|m| (*m).to_owned()).collect(),
            api_version: super::api_version("v1"),
            cache: Vec::new(),
            runs: 0,
        }
    }

    /// How many times the plugin ran.
    pub fn plugin_runs(&self) -> usize {
        self.runs
    }

    /// The credentials the CRI gets for `image`, best first; empty when the
    /// kubelet has none (the pull then goes anonymous).
    pub fn credentials(&mut self, image: &str) -> Vec<AuthConfig> {
        if !self.match_images.iter().any(|m| urls_match(m, image)) {
            return Vec::new();
        }
        let auth = match self.cached(image) {
            Some(auth) => auth,
            None => {
                let response = self.exec(image);
                self.store(image, &response);
                response.auth
            }
        };
        lookup(&auth, image)
    }

    fn cached(&mut self, image: &str) -> Option<BTreeMap<String, AuthConfig>> {
        let now = Instant::now();
        self.cache.retain(|c| c.expires > now);
        [image, parse_registry(image), GLOBAL]
            .into_iter()
            .find_map(|key| self.cache.iter().find(|c| c.key == key))
            .map(|c| c.auth.clone())
    }

    fn exec(&mut self, image: &str) -> Response {
        self.runs += 1;
        let mut request = Request::new(image);
        request.api_version = self.api_version.clone();
        self.plugin
            .answer(&request, &format!("kubelet plugin run for {image}"))
    }

    fn store(&mut self, image: &str, response: &Response) {
        let ttl: Duration = response.cache_duration();
        if ttl.is_zero() {
            return;
        }
        let key = match response.cache_key_type.as_str() {
            "Image" => image,
            "Registry" => parse_registry(image),
            "Global" => GLOBAL,
            other => panic!("the kubelet rejects cacheKeyType {other:?}"),
        };
        self.cache.retain(|c| c.key != key);
        self.cache.push(Cached {
            key: key.to_owned(),
            expires: Instant::now() + ttl,
            auth: response.auth.clone(),
        });
    }
}

/// The kubelet's registry of an image: everything before the first `/`.
pub fn parse_registry(image: &str) -> &str {
    image.split('/').next().unwrap_or_default()
}

/// The keyring lookup: the credentials of every `auth` key matching `image`,
/// in reverse key order, as the kubelet sorts its index.
pub fn lookup(auth: &BTreeMap<String, AuthConfig>, image: &str) -> Vec<AuthConfig> {
    auth.iter()
        .rev()
        .filter(|(key, _)| urls_match(key, image))
        .map(|(_, creds)| creds.clone())
        .collect()
}

/// The kubelet's `URLsMatchStr(glob, target)`: both are schemeless URLs;
/// the ports must be equal, the hosts must have as many `.`-separated parts,
/// each glob part must match its target part (`*` and `?` as in
/// `filepath.Match`), and the glob's path must be a string prefix of the
/// target's path.
pub fn urls_match(glob: &str, target: &str) -> bool {
    let (glob_parts, glob_port, glob_path) = split(glob);
    let (target_parts, target_port, target_path) = split(target);
    glob_port == target_port
        && glob_parts.len() == target_parts.len()
        && target_path.starts_with(glob_path)
        && glob_parts
            .iter()
            .zip(&target_parts)
            .all(|(g, t)| glob_match(g.as_bytes(), t.as_bytes()))
}

/// `(host parts, port, path)` of a schemeless URL, like `url.Parse` of
/// `https://` + it and `net.SplitHostPort` (no port when that fails).
fn split(url: &str) -> (Vec<&str>, &str, &str) {
    let (host, path) = match url.find('/') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (host, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p),
        _ => (host, ""),
    };
    (host.split('.').collect(), port, path)
}

/// `filepath.Match` for one host part (`*` any run, `?` one character).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_url_matching() {
        let cases = [
            ("*.example.com", "r.example.com/a:1", true),
            ("*.example.com", "a.b.example.com/a", false),
            ("127.0.0.1:5000", "127.0.0.1:5000/team-a/app:latest", true),
            ("127.0.0.1:5000", "127.0.0.1:5001/team-a/app", false),
            ("127.0.0.1", "127.0.0.1:5000/app", false),
            ("*.0.0.1:5000", "127.0.0.1:5000/app", true),
            ("127.0.0.?:5000", "127.0.0.1:5000/app", true),
            ("127.0.0.1:5000/team-a", "127.0.0.1:5000/team-a/app", true),
            // A plain string prefix, as in the kubelet.
            ("127.0.0.1:5000/team", "127.0.0.1:5000/team-a/app", true),
            ("127.0.0.1:5000/team-b", "127.0.0.1:5000/team-a/app", false),
        ];
        for (glob, target, want) in cases {
            assert_eq!(urls_match(glob, target), want, "{glob} vs {target}");
        }
        assert_eq!(parse_registry("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000");
    }

    #[test]
    fn lookup_returns_longer_keys_before_their_prefixes() {
        let creds = |p: &str| AuthConfig {
            username: "u".into(),
            password: p.into(),
        };
        let auth: BTreeMap<String, AuthConfig> = [
            ("r.test".to_owned(), creds("host")),
            ("r.test/team-a".to_owned(), creds("team")),
            ("r.test/team-b".to_owned(), creds("other")),
        ]
        .into();
        let found: Vec<String> = lookup(&auth, "r.test/team-a/app")
            .into_iter()
            .map(|c| c.password)
            .collect();
        assert_eq!(found, ["team", "host"]);
    }
}
