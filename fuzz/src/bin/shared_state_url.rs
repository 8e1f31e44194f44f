//! The `shared_state` URL, with its sentinel forms.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            regauth_token_server::fuzzing::shared_state_url(text);
        }
    });
}
