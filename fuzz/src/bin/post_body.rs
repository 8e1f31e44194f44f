//! `POST /token`: a form body, every grant (password, refresh_token,
//! client_credentials, token exchange).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        regauth_token_server::fuzzing::post_body(data);
    });
}
