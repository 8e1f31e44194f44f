//! The command line's shape: subcommands, flags and their help text.
//!
//! It lives in the library, apart from `main.rs`, so that the packaging
//! generator renders the man page and shell completions from the very
//! definitions the binary parses.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::identity::Kind;
use crate::identity::account::BCRYPT_COST;
use crate::keys::Algorithm;
use crate::registry_config::RegistryVersion;

/// OAuth2 bearer token server for container registries.
///
/// Registries (distribution 2.x and 3.x) delegate authentication to it: clients
/// follow the registry's `WWW-Authenticate: Bearer` challenge to `/token`, and
/// get a short-lived JWT carrying exactly the access the policy allows.
/// With no subcommand, `serve` runs.
#[derive(Parser, Debug)]
#[command(
    name = "regauth-token-server",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The subcommand; `None` runs `serve` with the top-level flags.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The `serve` flags, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the token server (the default).
    #[command(override_usage = usage::SERVE)]
    ///
    /// Without --config it runs an embedded default: it listens on
    /// 127.0.0.1:5001, keeps its key and secrets in the data directory
    /// (created on first start), and has one account, `admin`, whose password
    /// is printed once at first start or taken from REGAUTH_ADMIN_PASSWORD.
    Serve(ServeArgs),
    /// Validate a config file and report every problem with its line.
    #[command(override_usage = usage::CHECK_CONFIG)]
    CheckConfig {
        /// The config file to check.
        #[arg(long)]
        config: PathBuf,
    },
    #[command(override_usage = usage::REGISTRY_CONFIG)]
    /// Write what a registry needs to trust this server, and print the
    /// `auth.token` block for its config.yml.
    ///
    /// For --registry 2 it writes bundle.pem (the signing certificates); for
    /// --registry 3 also jwks.json.
    RegistryConfig {
        /// The server's config file; the embedded default if omitted.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory of the embedded default.
        #[arg(long, env = "REGAUTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Registry major version.
        #[arg(long, value_enum)]
        registry: RegistryVersion,
        /// Directory to write the files into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Read a password on stdin and print a hash for the config's `accounts`.
    #[command(override_usage = usage::HASH_PASSWORD)]
    HashPassword {
        /// Print an argon2id PHC string instead of a bcrypt hash.
        #[arg(long)]
        argon2: bool,
        /// bcrypt cost (4 to 31); each step doubles the work.
        #[arg(long, default_value_t = BCRYPT_COST)]
        cost: u32,
    },
    /// Create signing keys and secrets.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Revoke refresh tokens, or every credential of a subject, on every
    /// replica (needs `shared_state`), list what is in force, or lift a
    /// revocation.
    ///
    /// --subject takes the `sub` exactly as the audit log prints it (either
    /// log format, quoted or not): an account name, or kubernetes:…, oidc:…,
    /// node:… or certificate:…; it refuses the subject's refresh tokens and
    /// its new sign-ins and exchanges. --jti takes a refresh token's jti
    /// (rt.…, the audit log's refresh_jti). --all-before TIME (RFC 3339, or
    /// `now`) refuses refresh tokens issued before TIME. --issuer (a
    /// configured issuer) and --kind narrow --subject and --all-before.
    /// Input that no credential can match is refused with the form
    /// expected. Entries last until every refresh token they can revoke has
    /// expired (as long as the replicas have issued them for), or --for,
    /// which may not be shorter. `now` is Redis's clock, in which replicas
    /// stamp refresh tokens. Access tokens are not revocable: they expire
    /// within access_token_ttl.
    #[command(override_usage = usage::REVOKE)]
    Revoke(RevokeArgs),
}

/// The flags of `revoke`.
#[derive(Args, Debug)]
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .args(["subject", "jti", "all_before", "list"])
))]
pub struct RevokeArgs {
    /// The server's config file (for `shared_state` and token lifetimes).
    #[arg(long)]
    pub config: PathBuf,
    /// Revoke a subject: the `sub` of the tokens issued to it, as the audit
    /// log prints it.
    #[arg(long, value_name = "SUB")]
    pub subject: Option<String>,
    /// Revoke one refresh token by its `jti` (the audit log's refresh_jti).
    #[arg(long, value_name = "JTI")]
    pub jti: Option<String>,
    /// Revoke every refresh token issued before TIME (RFC 3339 or `now`).
    #[arg(long, value_name = "TIME")]
    pub all_before: Option<String>,
    /// List the revocations in force.
    #[arg(long)]
    pub list: bool,
    /// Only principals from this issuer (its `name` in `issuers`).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["jti", "list"])]
    pub issuer: Option<String>,
    /// Only principals of this kind.
    #[arg(long, value_name = "KIND", value_parser = parse_kind, conflicts_with_all = ["jti", "list"])]
    pub kind: Option<Kind>,
    /// Keep the entry this long instead of the longest lifetime of the
    /// refresh tokens it can revoke (never shorter).
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "list")]
    pub duration: Option<std::time::Duration>,
    /// Lift the revocations within the scope named (a kind or issuer left
    /// out means any) instead of adding one; fails, naming them, when
    /// entries of a wider scope still refuse what was named.
    #[arg(long, conflicts_with_all = ["list", "duration"])]
    pub lift: bool,
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    [
        Kind::Account,
        Kind::Kubernetes,
        Kind::Oidc,
        Kind::Node,
        Kind::Certificate,
    ]
    .into_iter()
    .find(|k| k.as_str() == text)
    .ok_or_else(|| {
        format!("unknown kind {text:?}; use account, kubernetes, oidc, node or certificate")
    })
}

/// The `keys` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Write a new private key (signing.key, PKCS#8, mode 0600) and its
    /// self-signed certificate (signing.crt) into a directory.
    #[command(override_usage = usage::KEYS_GENERATE)]
    Generate {
        /// Signature algorithm.
        #[arg(long, value_enum, default_value = "ES256")]
        alg: Algorithm,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    #[command(override_usage = usage::KEYS_ROTATE)]
    /// Start a signing-key rotation: write a new key and certificate under
    /// a dated name (never overwriting) and print the three steps that
    /// follow: publish, sign, retire.
    Rotate {
        /// Signature algorithm of the new key.
        #[arg(long, value_enum, default_value = "ES256")]
        alg: Algorithm,
        /// Directory for the new key (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    #[command(override_usage = usage::KEYS_ROTATE_REFRESH)]
    /// Start a refresh-secret rotation: write a new secret (32 random bytes,
    /// mode 0600) and print the three steps that follow: publish, sign,
    /// retire. Tokens signed with the old secret keep working until it is
    /// retired.
    RotateRefresh {
        /// Output file for the new secret.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file (any refresh token signed with the
        /// secret it held stops working once that secret is gone from the
        /// config).
        #[arg(long)]
        force: bool,
    },
    /// Write 32 random bytes (mode 0600) for `refresh_secrets` or
    /// `refresh_secret_file`.
    #[command(override_usage = usage::KEYS_SECRET)]
    Secret {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file (this invalidates every refresh token).
        #[arg(long)]
        force: bool,
    },
}

/// The flags of `serve`.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Config file; without it the embedded default runs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory of the embedded default
    /// (default: $XDG_DATA_HOME/regauth or ~/.local/share/regauth).
    #[arg(long, env = "REGAUTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Override the listen address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The usage line of each command, as the README's command table writes it
/// (a test keeps the two in step).
pub mod usage {
    #![allow(missing_docs)]
    pub const SERVE: &str = "regauth-token-server serve [--config FILE] [--data-dir DIR] [--listen ADDR] [--log-format text|json]";
    pub const CHECK_CONFIG: &str = "regauth-token-server check-config --config FILE";
    pub const REGISTRY_CONFIG: &str = "regauth-token-server registry-config [--config FILE] [--data-dir DIR] --registry 2|3 --out DIR";
    pub const HASH_PASSWORD: &str = "regauth-token-server hash-password [--argon2] [--cost N]";
    pub const KEYS_GENERATE: &str =
        "regauth-token-server keys generate [--alg ES256|RS256] --out DIR [--force]";
    pub const KEYS_ROTATE: &str = "regauth-token-server keys rotate [--alg ES256|RS256] --out DIR";
    pub const KEYS_SECRET: &str = "regauth-token-server keys secret --out FILE [--force]";
    pub const KEYS_ROTATE_REFRESH: &str =
        "regauth-token-server keys rotate-refresh --out FILE [--force]";
    pub const REVOKE: &str = "regauth-token-server revoke --config FILE (--subject SUB | --jti JTI | --all-before TIME | --list) [--issuer NAME] [--kind KIND] [--for DURATION] [--lift]";
    /// All of them.
    #[cfg(test)]
    pub const ALL: [&str; 9] = [
        SERVE,
        CHECK_CONFIG,
        REGISTRY_CONFIG,
        HASH_PASSWORD,
        KEYS_GENERATE,
        KEYS_ROTATE,
        KEYS_SECRET,
        KEYS_ROTATE_REFRESH,
        REVOKE,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Before, `registry-config --help` printed `[OPTIONS] --registry ...`
    /// while the README wrote `[--config FILE]`; both now say the same.
    #[test]
    fn usage_lines_match_the_readme_command_table() {
        let readme = include_str!("../../README.md");
        for usage in usage::ALL {
            let row = usage
                .trim_start_matches("regauth-token-server ")
                .replace('|', "\\|");
            assert!(
                readme.contains(&format!("| `{row}` |")),
                "README lacks the row for `{usage}`"
            );
        }
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("registry-config")
            .map(|c| c.render_usage().to_string())
            .unwrap_or_default();
        assert!(help.contains(usage::REGISTRY_CONFIG), "{help}");
    }
}
