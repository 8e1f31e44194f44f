//! Man pages and shell completions for regauth's two programs.
//!
//! The token server's pages come from the clap definitions its binary parses
//! ([`regauth_token_server::cli`]), so they cannot describe flags it lacks.
//! The credential helper parses its few arguments by hand so that it starts
//! fast; [`helper_command`] describes the same command line for the docs,
//! and an end-to-end test checks it against the helper's own usage text.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod helper;
mod render;

pub use helper::{HELPER, helper_command};
pub use render::{DocgenError, write_all};

/// The token server's binary name.
pub const SERVER: &str = "regauth-token-server";

/// The token server's command line, exactly as its binary parses it.
pub fn server_command() -> clap::Command {
    use clap::CommandFactory;
    regauth_token_server::cli::Cli::command()
}
