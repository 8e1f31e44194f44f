//! A subject token (a compact JWS): its header and claims, read before any
//! signature check.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            regauth_token_server::fuzzing::subject_token(text);
        }
    });
}
