//! The helper's YAML config (`helper.yaml`), with its registry patterns.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            docker_credential_regauth::fuzzing::helper_config(text);
        }
    });
}
