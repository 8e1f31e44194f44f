//! A standard OAuth2 client (the `oauth2` crate) against the token endpoint.

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenType};
use oauth2::{
    ClientId, HttpRequest, HttpResponse, RefreshToken, RequestTokenError, ResourceOwnerPassword,
    ResourceOwnerUsername, Scope, TokenResponse, TokenUrl,
};
use regauth_e2e::token_server::SERVICE;

use crate::support::{standalone_server, verify};

/// Sends an `oauth2` request with reqwest 0.13 (oauth2's own reqwest
/// feature targets 0.12).
async fn send(
    client: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let response = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut builder = oauth2::http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let body = response.bytes().await?.to_vec();
    Ok(builder.body(body).expect("valid HTTP response parts"))
}

#[test]
fn oauth2_crate_password_and_refresh_grants() {
    let world = standalone_server(|b| b);
    let server = &world.server;
    let password = world.alice_password.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        let http_client = |request: HttpRequest| send(&http, request);
        let client = BasicClient::new(ClientId::new("regauth-e2e-oauth2".to_owned()))
            .set_token_uri(TokenUrl::new(server.token_url()).expect("token URL"));

        let token = client
            .exchange_password(
                &ResourceOwnerUsername::new("alice".to_owned()),
                &ResourceOwnerPassword::new(password.clone()),
            )
            .add_scope(Scope::new("repository:alice/demo:pull,push".to_owned()))
            .add_extra_param("service", SERVICE)
            .add_extra_param("access_type", "offline")
            .request_async(&http_client)
            .await
            .unwrap_or_else(|e| panic!("password grant failed: {e:?}"));
        assert_eq!(*token.token_type(), BasicTokenType::Bearer);
        let expires_in = token.expires_in().expect("expires_in").as_secs();
        assert!(
            expires_in > 0 && expires_in <= 300,
            "expires_in {expires_in}"
        );
        let claims = verify(server, token.access_token().secret());
        assert_eq!(claims.sub, "alice");
        assert_eq!(
            claims.actions_on("repository", "alice/demo"),
            ["pull", "push"]
        );
        let refresh = token
            .refresh_token()
            .expect("access_type=offline yields a refresh token")
            .secret()
            .clone();

        let refreshed = client
            .exchange_refresh_token(&RefreshToken::new(refresh.clone()))
            .add_scope(Scope::new("repository:alice/demo:pull".to_owned()))
            .add_extra_param("service", SERVICE)
            .request_async(&http_client)
            .await
            .unwrap_or_else(|e| panic!("refresh grant failed: {e:?}"));
        let claims = verify(server, refreshed.access_token().secret());
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.actions_on("repository", "alice/demo"), ["pull"]);
        assert_eq!(
            refreshed.refresh_token().map(|t| t.secret().as_str()),
            Some(refresh.as_str()),
            "the refresh grant returns the same refresh token"
        );

        let wrong = client
            .exchange_password(
                &ResourceOwnerUsername::new("alice".to_owned()),
                &ResourceOwnerPassword::new(format!("{password}-wrong")),
            )
            .add_extra_param("service", SERVICE)
            .request_async(&http_client)
            .await;
        match wrong {
            Err(RequestTokenError::ServerResponse(response)) => {
                assert_eq!(*response.error(), BasicErrorResponseType::InvalidGrant);
            }
            other => panic!("wrong password must be an invalid_grant error: {other:?}"),
        }
    });
}
