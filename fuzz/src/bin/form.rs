//! `application/x-www-form-urlencoded` bytes: a query string or a POST body.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        regauth_token_server::fuzzing::form(data);
    });
}
