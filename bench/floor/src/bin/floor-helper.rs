//! The floor under a warm `docker-credential-regauth get`: read the server
//! URL on stdin, read one cached credential file, print the docker
//! credential JSON. No config, no matching, no locking, no expiry checks.
//!
//! Usage: floor-helper CACHE_FILE < server-url

use std::io::{Read, Write};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: floor-helper CACHE_FILE")?;
    let mut url = String::new();
    std::io::stdin().read_to_string(&mut url)?;
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let reply = serde_json::json!({
        "ServerURL": url.trim(),
        "Username": "<token>",
        "Secret": entry["refresh_token"],
    });
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &reply)?;
    out.write_all(b"\n")?;
    Ok(())
}
