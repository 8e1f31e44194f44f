//! Attacks on the token exchange: forged, misdirected, stale and replayed
//! subject tokens are refused with 400 and a clear `error_description`, and
//! a flood of unknown key IDs cannot turn the token server into a JWKS
//! fetching amplifier. Every test also exchanges a good token, so a refusal
//! can never come from a broken setup.

use std::sync::Arc;

use regauth_e2e::bins::token_server_bin;
use regauth_e2e::oidc_issuer::claims::{GithubWorkflow, ServiceAccount, now};
use regauth_e2e::oidc_issuer::config::IssuerConfig;
use regauth_e2e::oidc_issuer::exchange::{
    ExchangeRequest, GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_JWT, exchange_ok, expect_refused,
};
use regauth_e2e::oidc_issuer::forge::{alg_none, hmac_with_public_key, swap_payload};
use regauth_e2e::oidc_issuer::{IssuerKey, KeyAlg, OidcIssuer};
use regauth_e2e::process::run;
use regauth_e2e::token_client::HttpReply;
use regauth_e2e::token_server::{ISSUER, SERVICE};
use serde_json::{Value, json};

use crate::workload_identity::{AUDIENCE, IdentityServer, POLICY, grant_with_credential};

/// How many unknown kids the flood test sends.
const FLOOD: usize = 50;
/// `jwks_min_refresh_interval` during the flood.
const FLOOD_INTERVAL: &str = "1h";
/// Threads sending the flood.
const FLOOD_THREADS: usize = 5;

/// A Kubernetes issuer (ES256), a GitHub-style issuer (RS256) and a token
/// server trusting both; `cluster-a` refuses tokens older than an hour.
struct Target {
    cluster: OidcIssuer,
    github: OidcIssuer,
    identity: IdentityServer,
}

impl Target {
    fn start() -> Self {
        Self::start_with(|c| c)
    }

    /// Like [`Target::start`], with `cluster_config` adjusting cluster-a's config.
    fn start_with(cluster_config: impl FnOnce(IssuerConfig) -> IssuerConfig) -> Self {
        let cluster = OidcIssuer::start();
        let github = OidcIssuer::start_with(KeyAlg::Rs256);
        let identity = IdentityServer::start(
            &[
                cluster_config(
                    IssuerConfig::kubernetes("cluster-a", &cluster.url()).max_token_age("1h"),
                ),
                IssuerConfig::oidc("github", &github.url()),
            ],
            POLICY,
            |b| b,
            |_| {},
        );
        Self {
            cluster,
            github,
            identity,
        }
    }

    /// Claims of a valid service-account token for `team-a/builder`.
    fn sa_claims(&self) -> Value {
        ServiceAccount::new("team-a", "builder").claims(
            &self.cluster.url(),
            AUDIENCE,
            std::time::Duration::from_secs(3600),
        )
    }

    /// Exchanges `token` (JWT type) for the test service.
    fn exchange(&self, token: &str) -> HttpReply {
        ExchangeRequest::jwt(token, SERVICE).send(self.identity.tokens())
    }

    /// Asserts `token` is refused as `invalid_request`, the description
    /// mentioning one of `keywords`.
    fn refused(&self, token: &str, keywords: &[&str], what: &str) -> String {
        let reply = self.exchange(token);
        expect_refused(&reply, "invalid_request", keywords, token, what)
    }

    /// Control: a good token from each issuer is exchanged and grants by policy.
    fn control(&self) {
        let credential = exchange_ok(
            self.identity.tokens(),
            &self.cluster.mint(&self.sa_claims()),
            SERVICE,
        )
        .credential;
        let claims = grant_with_credential(
            &self.identity.server,
            &credential,
            &["repository:team-a/app:pull"],
        );
        assert_eq!(
            claims.actions_on("repository", "team-a/app"),
            ["pull"],
            "control: a good service-account token"
        );
        exchange_ok(
            self.identity.tokens(),
            &self
                .github
                .github_token(&GithubWorkflow::new("org/app"), AUDIENCE),
            SERVICE,
        );
    }
}

/// Words a description of a refused signature or key may use.
const SIGNATURE_WORDS: &[&str] = &["signature", "kid", "key", "verif"];
/// Words a description of a refused algorithm may use.
const ALG_WORDS: &[&str] = &["alg", "none", "hs256", "hs384", "hs512", "unsupported"];

#[test]
fn alg_none_is_refused() {
    let target = Target::start();
    target.control();
    let claims = target.sa_claims();
    for (label, token) in alg_none(target.cluster.current_key().kid(), &claims) {
        target.refused(&token, ALG_WORDS, &label);
    }
    target.control();
}

#[test]
fn hmac_keyed_with_the_issuers_public_key_is_refused() {
    let target = Target::start();
    target.control();
    let claims = target.sa_claims();
    for (label, token) in hmac_with_public_key(&target.cluster.current_key(), &claims) {
        target.refused(&token, ALG_WORDS, &format!("ES256 issuer, {label}"));
    }
    let github = GithubWorkflow::new("org/app").claims(&target.github.url(), AUDIENCE);
    for (label, token) in hmac_with_public_key(&target.github.current_key(), &github) {
        target.refused(&token, ALG_WORDS, &format!("RS256 issuer, {label}"));
    }
    target.control();
}

#[test]
fn wrong_issuer_is_refused() {
    let target = Target::start();
    target.control();
    let url = target.cluster.url();
    for (iss, label) in [
        ("http://127.0.0.1:1".to_owned(), "an unknown issuer"),
        (format!("{url}/"), "the issuer with a trailing slash"),
        (url.replace("http://", "https://"), "the issuer over https"),
        (
            url.replace("127.0.0.1", "localhost"),
            "the issuer by another host name",
        ),
        (ISSUER.to_owned(), "regauth's own issuer name"),
    ] {
        let mut claims = target.sa_claims();
        claims["iss"] = json!(iss);
        let token = target.cluster.mint(&claims);
        target.refused(&token, &["iss"], &format!("iss of {label} ({iss})"));
    }
    let mut claims = target.sa_claims();
    claims.as_object_mut().expect("claims object").remove("iss");
    target.refused(&target.cluster.mint(&claims), &["iss"], "no iss");

    // Issuer confusion: a token claiming GitHub's iss, signed with the
    // cluster's key (whose kid GitHub's JWKS does not have).
    let claims = GithubWorkflow::new("org/app").claims(&target.github.url(), AUDIENCE);
    let token = target.cluster.mint(&claims);
    target.refused(
        &token,
        SIGNATURE_WORDS,
        "github's iss signed with cluster-a's key",
    );
    target.control();
}

#[test]
fn regauth_credential_is_no_subject_token() {
    let target = Target::start();
    let credential = exchange_ok(
        target.identity.tokens(),
        &target.cluster.mint(&target.sa_claims()),
        SERVICE,
    )
    .credential;
    target.refused(&credential, &[], "a regauth refresh token as subject token");
    let access = target
        .identity
        .tokens()
        .get_token(
            &[
                ("service", SERVICE),
                ("scope", "repository:team-a/app:pull"),
            ],
            Some(("x", &credential)),
        )
        .json_str("token");
    target.refused(&access, &[], "a regauth access token as subject token");
    target.control();
}

#[test]
fn wrong_audience_is_refused() {
    let target = Target::start();
    target.control();
    for (aud, label) in [
        (json!(["other"]), "another audience"),
        (json!([SERVICE]), "the registry service"),
        (json!(["regauth-extra", "REGAUTH"]), "near misses"),
        (json!([]), "an empty audience list"),
        (
            json!("https://kubernetes.default.svc"),
            "the API server audience",
        ),
    ] {
        let mut claims = target.sa_claims();
        claims["aud"] = aud.clone();
        let token = target.cluster.mint(&claims);
        target.refused(&token, &["aud"], &format!("aud {aud} ({label})"));
    }
    let mut claims = target.sa_claims();
    claims.as_object_mut().expect("claims object").remove("aud");
    target.refused(&target.cluster.mint(&claims), &["aud"], "no aud");

    // GitHub's default audience (a token requested without &audience=).
    let claims =
        GithubWorkflow::new("org/app").claims(&target.github.url(), "https://github.com/org");
    target.refused(
        &target.github.mint(&claims),
        &["aud"],
        "a GitHub token with its default audience",
    );
    target.control();
}

#[test]
fn expired_token_is_refused() {
    let target = Target::start();
    target.control();
    let t = now();
    let mut claims = target.sa_claims();
    claims["iat"] = json!(t - 1800);
    claims["nbf"] = json!(t - 1800);
    claims["exp"] = json!(t - 600);
    target.refused(
        &target.cluster.mint(&claims),
        &["exp"],
        "expired ten minutes ago",
    );
    let mut claims = target.sa_claims();
    claims.as_object_mut().expect("claims object").remove("exp");
    target.refused(
        &target.cluster.mint(&claims),
        &["exp"],
        "no exp (a token that never expires)",
    );
    target.control();
}

#[test]
fn not_yet_valid_token_is_refused() {
    let target = Target::start();
    target.control();
    let t = now();
    let mut claims = target.sa_claims();
    claims["nbf"] = json!(t + 3600);
    claims["exp"] = json!(t + 7200);
    target.refused(
        &target.cluster.mint(&claims),
        &["nbf", "not yet", "valid yet", "not before", "future"],
        "nbf an hour ahead",
    );
    target.control();
}

#[test]
fn token_older_than_max_token_age_is_refused() {
    let target = Target::start();
    target.control();
    let t = now();
    let mut claims = target.sa_claims();
    claims["iat"] = json!(t - 2 * 3600);
    claims["nbf"] = json!(t - 2 * 3600);
    claims["exp"] = json!(t + 3600);
    target.refused(
        &target.cluster.mint(&claims),
        &["iat", "age", "old"],
        "issued two hours ago with max_token_age 1h",
    );
    // Control: half an hour old is within max_token_age.
    claims["iat"] = json!(t - 1800);
    claims["nbf"] = json!(t - 1800);
    exchange_ok(
        target.identity.tokens(),
        &target.cluster.mint(&claims),
        SERVICE,
    );
    target.control();
}

#[test]
fn token_not_signed_by_a_published_key_is_refused() {
    let target = Target::start();
    target.control();
    let claims = target.sa_claims();
    let published = target.cluster.current_key();
    let stranger = IssuerKey::generate(KeyAlg::Es256);

    target.refused(
        &target.cluster.mint_unpublished(&claims),
        SIGNATURE_WORDS,
        "a key (and kid) the JWKS does not list",
    );
    target.refused(
        &stranger.sign_with_kid(Some(published.kid()), &claims),
        SIGNATURE_WORDS,
        "another key claiming the published kid",
    );
    target.refused(
        &stranger.sign_with_kid(None, &claims),
        SIGNATURE_WORDS,
        "another key, no kid",
    );
    // An RS256 key claiming the ES256 kid: the algorithm does not fit the key.
    let rsa = IssuerKey::generate(KeyAlg::Rs256);
    target.refused(
        &rsa.sign_with_kid(Some(published.kid()), &claims),
        &[],
        "an RS256 signature under the ES256 key's kid",
    );

    // A genuine signature over other claims: namespace other promoted to team-a.
    let other = ServiceAccount::new("other", "builder").claims(
        &target.cluster.url(),
        AUDIENCE,
        std::time::Duration::from_secs(3600),
    );
    let genuine = target.cluster.mint(&other);
    let mut promoted = other.clone();
    promoted["kubernetes.io"]["namespace"] = json!("team-a");
    promoted["sub"] = json!("system:serviceaccount:team-a:builder");
    target.refused(
        &swap_payload(&genuine, &promoted),
        SIGNATURE_WORDS,
        "a genuine signature over edited claims",
    );
    target.control();
}

#[test]
fn exchange_parameters_are_checked() {
    let target = Target::start();
    target.control();
    let token = target.cluster.mint(&target.sa_claims());
    let tokens = target.identity.tokens();

    for token_type in [
        "urn:ietf:params:oauth:token-type:access_token",
        "urn:ietf:params:oauth:token-type:saml2",
        "urn:ietf:params:oauth:token-type:refresh_token",
        "jwt",
    ] {
        let reply = ExchangeRequest {
            subject_token_type: token_type,
            ..ExchangeRequest::jwt(&token, SERVICE)
        }
        .send(tokens);
        expect_refused(
            &reply,
            "invalid_request",
            &["subject_token_type", "token type", "token_type"],
            &token,
            &format!("subject_token_type {token_type}"),
        );
    }

    let reply = ExchangeRequest::jwt(&token, "evil.example").send(tokens);
    expect_refused(
        &reply,
        "invalid_target",
        &["audience", "evil.example", "service"],
        &token,
        "an unknown audience",
    );

    let reply = tokens.post_token(&[
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("subject_token_type", TOKEN_TYPE_JWT),
        ("audience", SERVICE),
    ]);
    expect_refused(
        &reply,
        "invalid_request",
        &["subject_token"],
        &token,
        "no subject_token",
    );
    for garbage in ["not-a-jwt", "a.b.c", "..", ""] {
        let reply = ExchangeRequest::jwt(garbage, SERVICE).send(tokens);
        expect_refused(
            &reply,
            "invalid_request",
            &[],
            garbage,
            &format!("subject_token {garbage:?}"),
        );
    }
    target.control();
}

#[test]
fn unknown_kid_flood_fetches_the_jwks_at_most_once_per_interval() {
    let target = Target::start_with(|c| c.jwks_min_refresh_interval(FLOOD_INTERVAL));
    // Warm-up: the first good token fills the cache.
    target.control();
    let jwks_before = target.cluster.jwks_requests();
    let discovery_before = target.cluster.discovery_requests();
    assert!(
        jwks_before >= 1,
        "the warm-up exchange fetched no JWKS: {:?}",
        target.cluster.requests()
    );

    // Every flood token has a kid of its own, unknown to the issuer.
    let claims = Arc::new(target.sa_claims());
    let tokens: Vec<String> = (0..FLOOD)
        .map(|_| target.cluster.mint_unpublished(&claims))
        .collect();
    let client = target.identity.tokens().clone();
    let replies: Vec<(String, HttpReply)> = std::thread::scope(|scope| {
        let handles: Vec<_> = tokens
            .chunks(FLOOD / FLOOD_THREADS)
            .map(|chunk| {
                let client = client.clone();
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|t| (t.clone(), ExchangeRequest::jwt(t, SERVICE).send(&client)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("flood thread"))
            .collect()
    });
    assert_eq!(replies.len(), FLOOD);
    for (i, (token, reply)) in replies.iter().enumerate() {
        expect_refused(
            reply,
            "invalid_request",
            SIGNATURE_WORDS,
            token,
            &format!("flood token {i} (unknown kid)"),
        );
    }

    let jwks_fetches = target.cluster.jwks_requests() - jwks_before;
    let discovery_fetches = target.cluster.discovery_requests() - discovery_before;
    assert!(
        jwks_fetches <= 1 && discovery_fetches <= 1,
        "{FLOOD} unknown kids with jwks_min_refresh_interval {FLOOD_INTERVAL} caused {jwks_fetches} JWKS and \
         {discovery_fetches} discovery fetches (at most 1 each allowed): {:?}",
        target.cluster.requests()
    );

    // The cache survived: known keys still work, without fetching.
    target.control();
    assert_eq!(
        target.cluster.jwks_requests() - jwks_before,
        jwks_fetches,
        "a known kid after the flood fetched the JWKS again"
    );
}

#[test]
fn discovery_announcing_another_issuer_is_not_trusted() {
    let target = Target::start_with(|c| c.jwks_min_refresh_interval("0s"));
    // The discovery document claims to be someone else's: its keys must not
    // vouch for tokens of the configured issuer.
    let impostor = format!("{}/impostor", target.cluster.url());
    target.cluster.announce_issuer(Some(&impostor));
    let token = target.cluster.mint(&target.sa_claims());
    let reply = target.exchange(&token);
    assert!(
        reply.status != 200 && reply.json().get("access_token").is_none(),
        "discovery announced issuer {impostor:?}, yet the exchange succeeded: {} {}",
        reply.status,
        reply.body
    );
    eprintln!(
        "exchange with a mismatched discovery issuer: {} {}",
        reply.status, reply.body
    );
    assert!(
        target.cluster.discovery_requests() >= 1,
        "the server never read discovery: {:?}",
        target.cluster.requests()
    );
    // Control: once discovery is honest again, the same token works.
    target.cluster.announce_issuer(None);
    exchange_ok(target.identity.tokens(), &token, SERVICE);
}

#[test]
fn plain_http_issuers_need_danger_allow_http() {
    let target = Target::start();
    let config_path = target.identity.server.config_path();
    let config = std::fs::read_to_string(config_path).expect("read the server config");
    let check = |name: &str, yaml: &str| {
        let path = config_path.with_file_name(name);
        std::fs::write(&path, yaml).expect("write a config variant");
        let mut cmd = std::process::Command::new(token_server_bin());
        cmd.arg("check-config").arg("--config").arg(&path);
        run(cmd, std::time::Duration::from_secs(60))
    };

    check("same.yml", &config).assert_success("check-config of the running config");
    assert_eq!(
        config.matches("danger_allow_http: true").count(),
        2,
        "both test issuers are plain HTTP:\n{config}"
    );
    let insecure = config.replacen("danger_allow_http: true", "danger_allow_http: false", 1);
    let out = check("insecure.yml", &insecure);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !out.success() && text.contains("issuers[0]") && text.contains("http"),
        "an http:// issuer without danger_allow_http must be a config error naming issuers[0]:\n{}",
        out.describe()
    );
}
