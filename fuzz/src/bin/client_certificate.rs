//! A client certificate (DER), read into a node or certificate principal.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        regauth_token_server::fuzzing::client_certificate(data);
    });
}
