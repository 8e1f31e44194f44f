//! `GET /token`: the query string, then a newline, then the
//! `Authorization` header value.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (query, authorization) = match data.iter().position(|b| *b == b'\n') {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (data, &b""[..]),
        };
        if let Ok(query) = std::str::from_utf8(query) {
            regauth_token_server::fuzzing::get_request(query, authorization);
        }
    });
}
