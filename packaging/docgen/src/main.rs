//! `regauth-docgen --out DIR`: writes the man pages and shell completions of
//! `regauth-token-server` and `docker-credential-regauth` into `DIR`, for
//! the Debian packages (`packaging/build-debs.sh` runs it).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Writes the man pages and shell completions of regauth's programs.
#[derive(Parser, Debug)]
#[command(name = "regauth-docgen", version)]
struct Args {
    /// Directory to write `man/` and `completions/` into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match regauth_docgen::write_all(&args.out) {
        Ok(files) => {
            println!("wrote {} files under {}", files.len(), args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("regauth-docgen: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
