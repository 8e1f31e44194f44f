//! The token server's YAML config.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            regauth_token_server::fuzzing::server_config(text);
        }
    });
}
