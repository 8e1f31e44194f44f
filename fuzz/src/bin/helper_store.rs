//! The helper's `store` stdin: `{"ServerURL","Username","Secret"}`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        docker_credential_regauth::fuzzing::store(data);
    });
}
