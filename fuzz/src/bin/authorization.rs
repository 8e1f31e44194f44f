//! The `Authorization` header of `GET /token` (Basic credentials), with a
//! fixed, well-formed query, so every input reaches the header parser.

const QUERY: &str = "service=registry.example.com&scope=repository:library/alpine:pull";

fn main() {
    afl::fuzz!(|data: &[u8]| {
        regauth_token_server::fuzzing::get_request(QUERY, data);
    });
}
