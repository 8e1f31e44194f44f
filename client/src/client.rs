//! [`TokenClient`]: the requests a workload or node makes to a token server.

use std::collections::BTreeMap;
use std::time::Duration;

use url::Url;

use crate::error::{BadReply, Error, Grant, SetupError};
use crate::reply::{Issued, Reply};
use crate::secret::Secret;
use crate::settings::{ReadError, Settings, http_client, read_limited};

/// Largest reply body read from the token server.
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// The RFC 8693 type of a subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectTokenType {
    /// `urn:ietf:params:oauth:token-type:jwt`: a Kubernetes service-account token.
    Jwt,
    /// `urn:ietf:params:oauth:token-type:id_token`: an OIDC ID token.
    IdToken,
}

impl SubjectTokenType {
    /// The URN sent as `subject_token_type`.
    pub fn urn(self) -> &'static str {
        match self {
            SubjectTokenType::Jwt => "urn:ietf:params:oauth:token-type:jwt",
            SubjectTokenType::IdToken => "urn:ietf:params:oauth:token-type:id_token",
        }
    }
}

/// An RFC 8693 token exchange: a workload's token for a registry credential.
#[derive(Debug, Clone, Copy)]
pub struct TokenExchange<'a> {
    /// The workload's token.
    pub subject_token: &'a Secret,
    /// Its type.
    pub subject_token_type: SubjectTokenType,
    /// The registry's `service`, sent as `audience`.
    pub audience: &'a str,
    /// Scopes to check now (`repository:team-a/app:pull`); the reply's
    /// credential is not limited to them. Usually empty.
    pub scopes: &'a [String],
    /// Service-account annotations for the server's audit trail, sent as
    /// `annotation.KEY`. The server grants nothing on their account.
    pub annotations: &'a BTreeMap<String, String>,
}

/// A client of one token server.
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    base: Url,
    token_url: Url,
    client_id: String,
}

fn parse_base(text: &str) -> Result<Url, SetupError> {
    let bad = |source| SetupError::Url {
        url: text.to_owned(),
        source,
    };
    let url = Url::parse(text).map_err(|e| bad(Some(e)))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(bad(None));
    }
    Ok(url)
}

/// `base` with `segment` appended to its path.
fn join(base: &Url, segment: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{segment}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

impl TokenClient {
    /// A client for the token server `settings` name. Reads the CA file and
    /// parses the client certificate now, so a bad one fails before any
    /// request.
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        let base = parse_base(&settings.token_server)?;
        Ok(TokenClient {
            http: http_client(settings)?,
            token_url: join(&base, "token"),
            base,
            client_id: settings.client_id.clone(),
        })
    }

    /// The token endpoint, `{token_server}/token`.
    pub fn token_url(&self) -> &str {
        self.token_url.as_str()
    }

    /// Exchanges a workload's token for a credential (RFC 8693).
    pub async fn exchange(&self, request: &TokenExchange<'_>, now: u64) -> Result<Issued, Error> {
        let mut form: Vec<(String, &str)> = vec![
            ("grant_type".into(), GRANT_TOKEN_EXCHANGE),
            ("subject_token".into(), request.subject_token.expose()),
            (
                "subject_token_type".into(),
                request.subject_token_type.urn(),
            ),
            ("audience".into(), request.audience),
            ("client_id".into(), &self.client_id),
        ];
        let scopes = request.scopes.join(" ");
        if !scopes.is_empty() {
            form.push(("scope".into(), &scopes));
        }
        form.extend(
            request
                .annotations
                .iter()
                .map(|(k, v)| (format!("annotation.{k}"), v.as_str())),
        );
        self.grant(Grant::TokenExchange, request.audience, &form, now)
            .await
    }

    /// The `password` grant of an account, asking for a refresh token.
    pub async fn password(
        &self,
        service: &str,
        username: &str,
        password: &Secret,
        now: u64,
    ) -> Result<Issued, Error> {
        let form: Vec<(String, &str)> = vec![
            ("grant_type".into(), "password"),
            ("username".into(), username),
            ("password".into(), password.expose()),
            ("service".into(), service),
            ("access_type".into(), "offline"),
            ("client_id".into(), &self.client_id),
        ];
        self.grant(Grant::Password, service, &form, now).await
    }

    /// The `client_credentials` grant: the client certificate given in
    /// [`Settings::identity`] is the identity.
    pub async fn client_credentials(&self, service: &str, now: u64) -> Result<Issued, Error> {
        let form: Vec<(String, &str)> = vec![
            ("grant_type".into(), "client_credentials"),
            ("service".into(), service),
            ("client_id".into(), &self.client_id),
        ];
        self.grant(Grant::ClientCredentials, service, &form, now)
            .await
    }

    /// `GET /healthz`: succeeds when the server answers 2xx.
    pub async fn health(&self) -> Result<(), Error> {
        let url = join(&self.base, "healthz");
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|source| unreachable(&url, source))?;
        let (status, retry_after, body) = self.read(&url, response, None).await?;
        reply(&url, Grant::RefreshToken, "", status, retry_after, &body).healthy()
    }

    /// `GET /token` for `scopes` with a refresh token as the Basic password,
    /// the way registry clients spend a credential: the access token.
    pub async fn access_token(
        &self,
        service: &str,
        scopes: &[String],
        username: &str,
        refresh_token: &Secret,
    ) -> Result<Secret, Error> {
        let mut query = vec![("service", service)];
        query.extend(scopes.iter().map(|s| ("scope", s.as_str())));
        let response = self
            .http
            .get(self.token_url.clone())
            .query(&query)
            .basic_auth(username, Some(refresh_token.expose()))
            .send()
            .await
            .map_err(|source| unreachable(&self.token_url, source))?;
        let (status, retry_after, body) = self.read(&self.token_url, response, None).await?;
        reply(
            &self.token_url,
            Grant::RefreshToken,
            service,
            status,
            retry_after,
            &body,
        )
        .access_token()
    }

    async fn grant(
        &self,
        grant: Grant,
        target: &str,
        form: &[(String, &str)],
        now: u64,
    ) -> Result<Issued, Error> {
        let url = &self.token_url;
        let response = self
            .http
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|source| unreachable(url, source))?;
        let (status, retry_after, body) = self.read(url, response, Some(now)).await?;
        reply(url, grant, target, status, retry_after, &body).issued(now)
    }

    /// The status, the `Retry-After` delay and the body of a reply; `now`
    /// (seconds since the epoch) turns an HTTP-date into a delay.
    async fn read(
        &self,
        url: &Url,
        response: reqwest::Response,
        now: Option<u64>,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), Error> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, now));
        match read_limited(response, MAX_REPLY_BYTES).await {
            Ok(body) => Ok((status, retry_after, body)),
            Err(ReadError::Transport(source)) => Err(unreachable(url, source)),
            Err(ReadError::TooLarge(max)) => Err(Error::BadReply {
                url: url.to_string(),
                source: BadReply::TooLarge(max),
            }),
        }
    }
}

fn reply<'a>(
    url: &'a Url,
    grant: Grant,
    target: &'a str,
    status: u16,
    retry_after: Option<Duration>,
    body: &'a [u8],
) -> Reply<'a> {
    Reply {
        url: url.as_str(),
        grant,
        target,
        status,
        retry_after,
        body,
    }
}

/// The longest `Retry-After` taken from a server, so a hostile or broken
/// value cannot park a client for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A `Retry-After` value (RFC 9110, section 10.2.3) as a delay, at most
/// [`MAX_RETRY_AFTER`]: delay-seconds, or an HTTP-date (any of the three
/// forms recipients must accept) less `now`, seconds since the epoch. A
/// load balancer in front of the token server may send either. Whole
/// seconds: `now` is cut down, so the delay never ends before the date. A
/// date already past is no wait; without `now` a date cannot be judged and
/// is ignored.
fn retry_after(value: &str, now: Option<u64>) -> Option<Duration> {
    let value = value.trim();
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = value.parse().ok()?;
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(at.saturating_sub(now?)).min(MAX_RETRY_AFTER))
}

fn unreachable(url: &Url, source: reqwest::Error) -> Error {
    // reqwest's messages name the URL, never a body or header.
    Error::Unreachable {
        url: url.to_string(),
        source: source.without_url(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_joined_to_the_base_path() {
        let base = parse_base("https://auth.example.com:5001").unwrap();
        assert_eq!(
            join(&base, "token").as_str(),
            "https://auth.example.com:5001/token"
        );
        let prefixed = parse_base("https://example.com/regauth/").unwrap();
        assert_eq!(
            join(&prefixed, "healthz").as_str(),
            "https://example.com/regauth/healthz"
        );
        for bad in ["ftp://x", "not a url", "mailto:a@b", ""] {
            assert!(
                matches!(parse_base(bad), Err(SetupError::Url { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_client_needs_a_usable_url() {
        let err = TokenClient::new(&Settings::new("ftp://x", "c")).unwrap_err();
        assert!(err.to_string().contains("\"ftp://x\""), "{err}");
        let ok = TokenClient::new(&Settings::new("http://127.0.0.1:1/", "c")).unwrap();
        assert_eq!(ok.token_url(), "http://127.0.0.1:1/token");
    }

    /// Nothing listens on port 1: the failure is "unreachable", which
    /// callers may answer from a cache, and it names the URL.
    #[test]
    fn a_closed_port_is_unreachable() {
        let client = TokenClient::new(
            &Settings::new("http://127.0.0.1:1", "c").timeout(std::time::Duration::from_secs(2)),
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let token = Secret::from("t");
        let annotations = BTreeMap::new();
        let err = runtime
            .block_on(client.exchange(
                &TokenExchange {
                    subject_token: &token,
                    subject_token_type: SubjectTokenType::Jwt,
                    audience: "registry.test",
                    scopes: &[],
                    annotations: &annotations,
                },
                0,
            ))
            .unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot reach the token server at http://127.0.0.1:1/token"
        );
    }

    #[test]
    fn retry_after_is_seconds_and_bounded() {
        let now = Some(1_445_412_400); // Wed, 21 Oct 2015 07:26:40 GMT
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 0 ", None), Some(Duration::ZERO));
        assert_eq!(retry_after("99999999999999999999", now), None);
        assert_eq!(
            retry_after(&u64::MAX.to_string(), now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after("-1", now), None);
        assert_eq!(retry_after("", now), None);
        assert_eq!(retry_after("soon", now), None);
    }

    /// RFC 9110: recipients accept the IMF-fixdate and the two obsolete
    /// forms; a date is a delay from now, never negative, never longer
    /// than the bound, and unjudgeable without a clock.
    #[test]
    fn retry_after_as_an_http_date_is_a_delay_from_now() {
        let now = Some(1_445_412_400); // Wed, 21 Oct 2015 07:26:40 GMT
        let eighty = Some(Duration::from_secs(80));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), eighty);
        assert_eq!(
            retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now),
            eighty
        );
        assert_eq!(retry_after("Wed Oct 21 07:28:00 2015", now), eighty);
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date past is no wait"
        );
        assert_eq!(
            retry_after("Fri, 21 Oct 2016 07:28:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT", None), None);
        assert_eq!(retry_after("Wed, 32 Oct 2015 07:28:00 GMT", now), None);
    }
}
