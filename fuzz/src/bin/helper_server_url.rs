//! The helper's `get` and `erase` stdin: a registry server URL, matched
//! against the registry patterns.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        docker_credential_regauth::fuzzing::server_url(data);
    });
}
