//! A small blocking HTTP client for talking to the token server and registry.

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::HeaderMap;

/// A plain HTTP response with its body read.
#[derive(Debug)]
pub struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body as text (lossy UTF-8).
    pub body: String,
}

impl HttpReply {
    /// Parses the body as JSON, panicking with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response (status {}) is not JSON: {e}\n{}",
                self.status, self.body
            )
        })
    }

    /// A string field of the JSON body, panicking if absent.
    pub fn json_str(&self, field: &str) -> String {
        match self.json().get(field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            other => panic!(
                "field `{field}` is not a string ({other:?}) in response (status {}): {}",
                self.status, self.body
            ),
        }
    }

    /// A header value as text, if present and valid.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Builds the shared blocking client: no proxies, no redirects, short timeouts.
pub fn http_client() -> Client {
    http_client_builder().build().expect("build HTTP client")
}

/// The settings of [`http_client`], for adding TLS options before building.
pub fn http_client_builder() -> reqwest::blocking::ClientBuilder {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
}

/// Sends `request` and reads the whole response.
pub fn send(request: RequestBuilder) -> HttpReply {
    try_send(request).unwrap_or_else(|e| panic!("HTTP request: {}", error_chain(&e)))
}

/// Sends `request` and reads the whole response, returning transport errors
/// (refused connections, failed TLS handshakes) instead of panicking.
pub fn try_send(request: RequestBuilder) -> Result<HttpReply, reqwest::Error> {
    let response = request.send()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text()?;
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

/// An error and all its sources, joined with `: ` (reqwest hides the TLS
/// alert in the source chain).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Client for the token server's `/token` endpoint.
#[derive(Debug, Clone)]
pub struct TokenClient {
    base_url: String,
    http: Client,
}

impl TokenClient {
    /// A client for the server at `base_url` (for example `http://127.0.0.1:PORT`).
    pub fn new(base_url: &str) -> Self {
        Self::with_http(base_url, http_client())
    }

    /// A client for the server at `base_url` that sends through `http`
    /// (for example one trusting a test CA, or presenting a client certificate).
    pub fn with_http(base_url: &str, http: Client) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &Client {
        &self.http
    }

    /// The `/token` URL.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url)
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /token` with the given query pairs (repeat `scope` freely) and
    /// optional HTTP Basic credentials.
    pub fn get_token(&self, query: &[(&str, &str)], basic: Option<(&str, &str)>) -> HttpReply {
        let mut request = self.http.get(self.token_url()).query(query);
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, Some(password));
        }
        send(request)
    }

    /// `POST /token` with a form body.
    pub fn post_token(&self, form: &[(&str, &str)]) -> HttpReply {
        send(self.http.post(self.token_url()).form(form))
    }

    /// `POST /token` with a form body, returning transport errors.
    pub fn try_post_token(&self, form: &[(&str, &str)]) -> Result<HttpReply, reqwest::Error> {
        try_send(self.http.post(self.token_url()).form(form))
    }

    /// The form of an OAuth2 `client_credentials` grant (the client is
    /// authenticated by its TLS certificate, RFC 8705).
    pub fn client_credentials_form<'a>(
        service: &'a str,
        scope: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        let mut form = vec![("grant_type", "client_credentials"), ("service", service)];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        form
    }

    /// OAuth2 `client_credentials` grant; `scope` is space-separated.
    pub fn client_credentials_grant(&self, service: &str, scope: &str) -> HttpReply {
        self.post_token(&Self::client_credentials_form(service, scope))
    }

    /// OAuth2 password grant; `offline` asks for a refresh token.
    pub fn password_grant(
        &self,
        user: &str,
        password: &str,
        service: &str,
        scope: &str,
        offline: bool,
    ) -> HttpReply {
        let mut form = vec![
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
            ("service", service),
            ("client_id", "regauth-e2e"),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        if offline {
            form.push(("access_type", "offline"));
        }
        self.post_token(&form)
    }

    /// OAuth2 refresh grant.
    pub fn refresh_grant(&self, refresh_token: &str, service: &str, scope: &str) -> HttpReply {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("service", service),
            ("client_id", "regauth-e2e"),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        self.post_token(&form)
    }

    /// `GET /healthz`, returning the status code or `None` when unreachable.
    pub fn healthz(&self) -> Option<u16> {
        self.http
            .get(format!("{}/healthz", self.base_url))
            .timeout(Duration::from_secs(2))
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    }
}
