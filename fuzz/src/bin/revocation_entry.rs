//! A revocation read back from Redis: its field, a newline, its value.
//! Any client of the shared Redis may have written it.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            regauth_token_server::fuzzing::revocation_entry(text);
        }
    });
}
