//! Small helpers shared by the test modules.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regauth_e2e::World;
use regauth_e2e::token_server::SERVICE;

/// Password grant with `access_type=offline`; returns the refresh token.
pub fn refresh_token_for(world: &World, user: &str) -> String {
    let reply = world
        .tokens()
        .password_grant(user, &world.password(user), SERVICE, "", true);
    assert_eq!(
        reply.status, 200,
        "password grant for {user}: {}",
        reply.body
    );
    reply.json_str("refresh_token")
}

/// Writes a containers auth file holding `refresh_token` as the identity
/// token for the world's registry, in the shape skopeo 1.9 honours.
pub fn write_identity_token_authfile(world: &World, refresh_token: &str) -> std::path::PathBuf {
    let path = world.new_dir("authfile").join("auth.json");
    let auth = serde_json::json!({
        "auths": {
            world.registry.host(): {
                "auth": STANDARD.encode("<token>:"),
                "identitytoken": refresh_token,
            }
        }
    });
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&auth).expect("serialize auth file"),
    )
    .expect("write auth file");
    path
}

/// Returns `token` with one character in the middle of its signature changed,
/// so it no longer verifies (a change in the final character could land in
/// unused base64 bits).
pub fn tamper(token: &str) -> String {
    let signature_start = token.rfind('.').expect("a JWT has dots") + 1;
    let index = signature_start + (token.len() - signature_start) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("JWTs are ASCII")
}

/// A token server without a registry, for tests of the HTTP API alone.
/// Fields drop in order: the server is killed before its directory goes.
pub struct StandaloneServer {
    pub server: regauth_e2e::token_server::TokenServer,
    pub alice_password: String,
    _dir: tempfile::TempDir,
}

/// Starts a token server with account `alice` and the default policy,
/// after `configure` has had its say.
pub fn standalone_server(
    configure: impl FnOnce(
        regauth_e2e::token_server::TokenServerBuilder,
    ) -> regauth_e2e::token_server::TokenServerBuilder,
) -> StandaloneServer {
    let dir = tempfile::Builder::new()
        .prefix("regauth-e2e-")
        .tempdir()
        .expect("create temp dir");
    let alice_password = regauth_e2e::secrets::random_password();
    let builder = regauth_e2e::token_server::TokenServerBuilder::new().account(
        "alice",
        &alice_password,
        &[("team", "a")],
    );
    let server = configure(builder).start(dir.path());
    StandaloneServer {
        server,
        alice_password,
        _dir: dir,
    }
}

/// Verifies an access token issued by `server` for the test service.
pub fn verify(
    server: &regauth_e2e::token_server::TokenServer,
    token: &str,
) -> regauth_e2e::jwt::AccessClaims {
    regauth_e2e::jwt::verify_access_token(
        token,
        &server.signing_cert_pem(),
        SERVICE,
        regauth_e2e::token_server::ISSUER,
    )
}
