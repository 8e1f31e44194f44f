//! The token endpoint's wire contract, checked directly over HTTP.

use regauth_e2e::jwt::{unverified_claims, unverified_header};
use regauth_e2e::secrets::random_password;
use regauth_e2e::token_server::SERVICE;

use crate::support::{standalone_server, tamper, verify};

#[test]
fn bad_credentials_get_contract_errors() {
    let world = standalone_server(|b| b);
    let tokens = world.server.client();
    let wrong = random_password();

    let get = tokens.get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:alice/demo:pull"),
        ],
        Some(("alice", &wrong)),
    );
    assert_eq!(get.status, 401, "GET with a wrong password: {}", get.body);
    assert_eq!(
        get.json()["errors"][0]["code"],
        "UNAUTHORIZED",
        "{}",
        get.body
    );

    let unknown = tokens.get_token(&[("service", SERVICE)], Some(("nobody", &wrong)));
    assert_eq!(
        unknown.status, 401,
        "GET for an unknown user: {}",
        unknown.body
    );

    let post = tokens.password_grant("alice", &wrong, SERVICE, "", true);
    assert!(
        post.status == 400 || post.status == 401,
        "POST with a wrong password: {} {}",
        post.status,
        post.body
    );
    assert_eq!(post.json()["error"], "invalid_grant", "{}", post.body);

    // Control: the right password works on both.
    let ok = tokens.get_token(
        &[("service", SERVICE)],
        Some(("alice", &world.alice_password)),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok = tokens.password_grant("alice", &world.alice_password, SERVICE, "", false);
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn access_and_refresh_tokens_follow_the_contract() {
    let world = standalone_server(|b| b);
    let tokens = world.server.client();
    let password = &world.alice_password;

    let reply = tokens.get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:alice/demo:pull,push"),
            ("offline_token", "true"),
            ("client_id", "regauth-e2e"),
        ],
        Some(("alice", password)),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert!(
        body["expires_in"]
            .as_u64()
            .is_some_and(|s| s > 0 && s <= 300),
        "{body}"
    );
    assert!(body["issued_at"].is_string(), "issued_at: {body}");
    let access = reply.json_str("token");
    assert_eq!(reply.json_str("access_token"), access);

    let header = unverified_header(&access);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert!(
        header["kid"].is_string(),
        "access token header lacks kid: {header}"
    );
    let claims = verify(&world.server, &access);
    assert_eq!(claims.sub, "alice");
    assert!(claims.nbf <= claims.iat && claims.iat < claims.exp);
    assert_eq!(
        claims.actions_on("repository", "alice/demo"),
        ["pull", "push"]
    );

    // The refresh token is for the token server only.
    let refresh = reply.json_str("refresh_token");
    assert_eq!(unverified_header(&refresh)["alg"], "HS256");
    let refresh_claims = unverified_claims(&refresh);
    assert_ne!(
        refresh_claims["aud"], SERVICE,
        "refresh aud: {refresh_claims}"
    );
    if let Some(auds) = refresh_claims["aud"].as_array() {
        assert!(
            !auds.iter().any(|a| a == SERVICE),
            "refresh aud: {refresh_claims}"
        );
    }

    // The refresh grant narrows scope and does not rotate the refresh token.
    let refreshed = tokens.refresh_grant(&refresh, SERVICE, "repository:alice/demo:pull");
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(refreshed.json_str("refresh_token"), refresh);
    let claims = verify(&world.server, &refreshed.json_str("access_token"));
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.actions_on("repository", "alice/demo"), ["pull"]);

    // A forged refresh token is an invalid grant.
    let forged = tokens.refresh_grant(&tamper(&refresh), SERVICE, "repository:alice/demo:pull");
    assert!(
        forged.status == 400 || forged.status == 401,
        "{}",
        forged.body
    );
    assert_eq!(forged.json()["error"], "invalid_grant", "{}", forged.body);

    // An access token is no refresh token.
    let misuse = tokens.refresh_grant(&access, SERVICE, "repository:alice/demo:pull");
    assert!(
        misuse.status == 400 || misuse.status == 401,
        "{}",
        misuse.body
    );
}
