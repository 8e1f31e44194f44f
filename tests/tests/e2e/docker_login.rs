//! `docker login` and `docker logout` against a regauth-protected registry,
//! with and without `docker-credential-regauth`.
//!
//! The daemon checks a login at the token server with the password and
//! asks for an offline token; regauth answers with a refresh token, which
//! the CLI stores in place of the password. With the helper configured for
//! the registry, the CLI hands that token to the helper's `store`, which keeps
//! nothing: pulls use the helper's own identity. `docker logout` calls the
//! helper's `erase`, which drops its cached credential.

use regauth_e2e::credential_helper::Output;
use regauth_e2e::credential_helper::audit::{helper_exchanges, log_field, wait_for_count};
use regauth_e2e::jwt::unverified_claims;
use regauth_e2e::token_server::ISSUER;
use serde_json::json;

use crate::docker_common::{DockerWorld, assert_docker_ok, daemon_grants, password_checks};

#[test]
fn docker_login_without_the_helper_stores_a_refresh_token_never_the_password() {
    let dw = DockerWorld::start();
    let source = dw.seed("alice", "alice/demo");
    // A CLI with no credential helper at all.
    let helper = dw.helper_for("bob", Output::IdentityToken);
    let cli = dw.cli(&helper);
    cli.write_config(&json!({}));
    let host = dw.world.registry.host();
    let password = dw.world.password("alice");

    let wrong = cli.login(&host, "alice", "not-the-password");
    assert!(
        !wrong.success(),
        "a wrong password logged in:\n{}",
        wrong.describe()
    );

    let login = cli.login(&host, "alice", &password);
    assert_docker_ok(&login, "docker login as alice", &dw);
    assert!(
        login.stdout.contains("Login Succeeded"),
        "{}",
        login.describe()
    );

    let config = cli.config();
    let text = config.to_string();
    assert!(
        !text.contains(&password),
        "config.json holds alice's password: {text}"
    );
    let entry = &config["auths"][host.as_str()];
    let token = entry["identitytoken"]
        .as_str()
        .unwrap_or_else(|| panic!("config.json has no identity token for {host}: {text}"));
    // The stored token is a regauth refresh token for alice: audience is the
    // server itself (never a registry), and it lives an hour at most.
    let claims = unverified_claims(token);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["aud"], ISSUER, "{claims}");
    let lifetime = claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0);
    assert!((1..=3600).contains(&lifetime), "{claims}");

    // Pulls present that token with the refresh grant, not the password.
    let checks = password_checks(&dw.world.server);
    assert_docker_ok(&cli.pull(&source), "docker pull after login", &dw);
    assert_eq!(password_checks(&dw.world.server), checks, "{}", dw.logs());
    assert!(
        daemon_grants(&dw.world.server).iter().any(|l| {
            log_field(l, "grant").as_deref() == Some("refresh_token")
                && log_field(l, "granted").is_some_and(|g| g.contains("alice/demo:pull"))
        }),
        "{}",
        dw.logs()
    );

    let logout = cli.logout(&host);
    assert_docker_ok(&logout, "docker logout", &dw);
    assert!(
        cli.config()["auths"][host.as_str()].is_null(),
        "logout left the token: {}",
        cli.config()
    );
}

#[test]
fn docker_login_with_the_helper_configured_keeps_nothing_and_pulls_use_the_helpers_identity() {
    let dw = DockerWorld::start();
    let alices = dw.seed("alice", "alice/demo");
    let bobs = dw.seed("bob", "bob/demo");
    // The helper's identity for this registry is bob.
    let helper = dw.helper_for("bob", Output::IdentityToken);
    let cli = dw.cli_with_cred_helpers(&helper);
    let host = dw.world.registry.host();

    // Logging in as alice works: the daemon checks the password at the token
    // server, then the CLI calls the helper's `store`, which keeps nothing.
    let checks = password_checks(&dw.world.server);
    let login = cli.login(&host, "alice", &dw.world.password("alice"));
    assert_docker_ok(
        &login,
        "docker login as alice with the helper configured",
        &dw,
    );
    assert!(
        password_checks(&dw.world.server) > checks,
        "the login was not checked at the token server:\n{}",
        dw.logs()
    );
    let config = cli.config().to_string();
    assert!(
        !config.contains("identitytoken") && !config.contains(&dw.world.password("alice")),
        "config.json must not keep the login's credential: {config}"
    );
    assert!(
        helper.cache_files().is_empty(),
        "store must not write the helper's cache: {:?}",
        helper.cache_files()
    );

    // Pulls still use the helper's identity, bob: his image pulls, alice's
    // does not.
    assert_docker_ok(
        &cli.pull(&bobs),
        "docker pull bob/demo as the helper's identity",
        &dw,
    );
    let denied = cli.pull(&alices);
    assert!(
        !denied.success(),
        "alice's login leaked into the helper's pulls:\n{}",
        denied.describe()
    );
}

#[test]
fn docker_logout_erases_the_helpers_cached_credential() {
    let dw = DockerWorld::start();
    let source = dw.seed("alice", "alice/demo");
    let helper = dw.helper_for("alice", Output::IdentityToken);
    let cli = dw.cli_with_cred_helpers(&helper);
    let host = dw.world.registry.host();

    assert_docker_ok(&cli.pull(&source), "first docker pull", &dw);
    assert_eq!(helper_exchanges(&dw.world.server), 1);
    assert_eq!(
        helper.cache_files().len(),
        1,
        "the helper cached its credential"
    );

    let logout = cli.logout(&host);
    assert_docker_ok(&logout, "docker logout", &dw);
    assert!(
        helper.cache_files().is_empty(),
        "logout (erase) must drop the cached credential: {:?}",
        helper.cache_files()
    );

    // The next pull makes the helper exchange its identity again.
    cli.run(&["image", "rm", &source])
        .assert_success("docker image rm before the second pull");
    assert_docker_ok(&cli.pull(&source), "docker pull after logout", &dw);
    assert_eq!(
        wait_for_count(|| helper_exchanges(&dw.world.server), 2),
        2,
        "{}",
        dw.logs()
    );
}
