//! `docker-credential-regauth`: a docker credential helper.
//!
//! This release answers only `version`; the other actions of the protocol
//! (`get`, `store`, `erase`, `list`) report that they are not available yet,
//! on stderr with exit status 1, rather than pretending no credentials exist.

#![forbid(unsafe_code)]

use std::process::ExitCode;

const USAGE: &str = "usage: docker-credential-regauth <get|store|erase|list|version>";

fn main() -> ExitCode {
    let action = std::env::args().nth(1);
    match action.as_deref() {
        Some("version") | Some("--version") | Some("-v") => {
            println!("docker-credential-regauth {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("get" | "store" | "erase" | "list") => {
            eprintln!(
                "docker-credential-regauth: `{}` is not implemented in this release",
                action.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::FAILURE
        }
    }
}
