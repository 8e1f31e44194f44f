//! Scope strings, as the `scope` parameters of `/token` carry them
//! (`repository:library/alpine:pull,push`, several joined by `&`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            regauth_token_server::fuzzing::scopes(text);
        }
    });
}
