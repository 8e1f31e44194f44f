//! Passwords and tokens never reach the token server's logs, even at debug.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regauth_e2e::World;
use regauth_e2e::secrets::random_password;
use regauth_e2e::skopeo::Auth;
use regauth_e2e::token_client::HttpReply;
use regauth_e2e::token_server::SERVICE;

use crate::support::{tamper, write_identity_token_authfile};

/// Secrets planted or issued during the test, each with a label.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, label: &str, value: &str) {
        assert!(!value.is_empty(), "empty secret {label}");
        self.0.push((label.to_owned(), value.to_owned()));
    }

    /// Records a JWT and, separately, its signature.
    fn add_token(&mut self, label: &str, token: &str) {
        self.add(label, token);
        if let Some((_, signature)) = token.rsplit_once('.') {
            self.add(&format!("{label} (signature)"), signature);
        }
    }

    /// Records every token in a successful `/token` reply.
    fn add_reply(&mut self, label: &str, reply: &HttpReply) {
        assert_eq!(reply.status, 200, "{label}: {}", reply.body);
        let body = reply.json();
        for field in ["token", "access_token", "refresh_token"] {
            if let Some(token) = body[field].as_str() {
                self.add_token(&format!("{label} {field}"), token);
            }
        }
    }
}

#[test]
fn no_secret_appears_in_debug_logs() {
    let world = World::builder()
        .server(|s| s.env("REGAUTH_LOG", "debug"))
        .start();
    let tokens = world.tokens();
    let alice = world.password("alice");
    let bob = world.password("bob");
    let wrong = random_password();
    let mut secrets = Secrets::default();
    secrets.add("alice's password", &alice);
    secrets.add("bob's password", &bob);
    secrets.add("the wrong password", &wrong);
    secrets.add(
        "alice's Basic credentials",
        &STANDARD.encode(format!("alice:{alice}")),
    );
    secrets.add(
        "wrong Basic credentials",
        &STANDARD.encode(format!("alice:{wrong}")),
    );

    // GET with Basic and offline_token.
    let get = tokens.get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:alice/demo:pull,push"),
            ("offline_token", "true"),
            ("client_id", "regauth-e2e"),
        ],
        Some(("alice", &alice)),
    );
    secrets.add_reply("GET Basic", &get);
    let alice_refresh = get.json_str("refresh_token");

    // POST password grant.
    let post = tokens.password_grant("bob", &bob, SERVICE, "repository:bob/demo:pull", true);
    secrets.add_reply("POST password", &post);
    let bob_refresh = post.json_str("refresh_token");

    // Refresh token uses: POST refresh grant and GET with the token as password.
    let refreshed = tokens.refresh_grant(&bob_refresh, SERVICE, "repository:bob/demo:pull");
    secrets.add_reply("POST refresh_token", &refreshed);
    let via_basic = tokens.get_token(
        &[
            ("service", SERVICE),
            ("scope", "repository:alice/demo:pull"),
        ],
        Some(("alice", &alice_refresh)),
    );
    secrets.add_reply("GET Basic refresh", &via_basic);

    // Failures.
    let bad_get = tokens.get_token(&[("service", SERVICE)], Some(("alice", &wrong)));
    assert_eq!(bad_get.status, 401, "{}", bad_get.body);
    let bad_post = tokens.password_grant("alice", &wrong, SERVICE, "", true);
    assert!(
        bad_post.status == 400 || bad_post.status == 401,
        "{}",
        bad_post.body
    );
    let forged = tamper(&alice_refresh);
    secrets.add("a forged refresh token", &forged);
    let bad_refresh = tokens.refresh_grant(&forged, SERVICE, "repository:alice/demo:pull");
    assert!(
        bad_refresh.status == 400 || bad_refresh.status == 401,
        "{}",
        bad_refresh.body
    );

    // Real clients through the registry: skopeo with a password (GET) and
    // with an identity token (chunked POST refresh grant).
    world.push_as("alice", "alice/demo");
    let authfile = write_identity_token_authfile(&world, &alice_refresh);
    world
        .skopeo
        .inspect(
            &world.reference("alice/demo"),
            Auth::AuthFile(&authfile),
            &[],
        )
        .assert_success("skopeo inspect with an identity token");

    let log = format!("{}\n{}", world.server.stdout(), world.server.stderr());
    assert!(
        !log.trim().is_empty(),
        "the server logged nothing at REGAUTH_LOG=debug, so this test proves nothing"
    );
    let leaks: Vec<&str> = secrets
        .0
        .iter()
        .filter(|(_, value)| log.contains(value.as_str()))
        .map(|(label, _)| label.as_str())
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets found in the token server's output: {leaks:?}\n{log}"
    );
}
