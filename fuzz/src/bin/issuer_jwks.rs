//! An issuer's key set as the server fetches it: the `Cache-Control`
//! header value, a newline, then the JWKS document.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (header, document) = match data.iter().position(|b| *b == b'\n') {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (&b""[..], data),
        };
        if let Ok(header) = std::str::from_utf8(header) {
            regauth_token_server::fuzzing::issuer_jwks(header, document);
        }
    });
}
