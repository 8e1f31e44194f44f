//! `docker-credential-regauth`: a docker credential helper that swaps the
//! local identity (service-account token, OIDC token, client certificate or
//! account) for a short-lived registry credential from a regauth token server.
//!
//! This file alone owns stdout, stderr and the exit code: stdout carries only
//! the protocol, and diagnostics go to stderr (`REGAUTH_LOG=debug` for more).

#![forbid(unsafe_code)]

mod cache;
mod config;
mod credential;
mod doctor;
mod exchange;
mod identity;
mod kubelet;
mod matcher;
mod protocol;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use config::Output;
use credential::{GetError, Source};
use protocol::{Credentials, IDENTITY_TOKEN_USERNAME, NOT_FOUND};

const USAGE: &str = "\
usage: docker-credential-regauth [--config FILE] <action>

Docker credential helper for regauth token servers.

actions:
  get        read a registry URL on stdin, print its credential as JSON
  store      accepted and ignored (credentials come from the local identity)
  erase      read a registry URL on stdin, drop its cached credential
  list       print the configured registries
  version    print the version
  kubelet    kubelet image credential provider: CredentialProviderRequest on
             stdin, CredentialProviderResponse on stdout (v1, v1beta1, v1alpha1)
  doctor [HOST[/REPO]]
             check the config, identity, token server and exchange, step by step

config: --config, then $REGAUTH_HELPER_CONFIG, then
        $XDG_CONFIG_HOME/regauth/helper.yaml, then /etc/regauth/helper.yaml
logs:   REGAUTH_LOG=debug (stderr only)";

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn main() -> ExitCode {
    init_logging();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut explicit: Option<PathBuf> = None;
    if args.first().map(String::as_str) == Some("--config") {
        if args.len() < 2 {
            eprintln!("{USAGE}");
            return ExitCode::FAILURE;
        }
        explicit = Some(PathBuf::from(args.remove(1)));
        args.remove(0);
    }
    let action = args.first().cloned().unwrap_or_default();
    match action.as_str() {
        "get" => get(explicit.as_deref()),
        "store" => store(),
        "erase" => erase(explicit.as_deref()),
        "list" => list(explicit.as_deref()),
        "version" | "--version" | "-v" => {
            println!("docker-credential-regauth {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "kubelet" => kubelet_plugin(explicit.as_deref()),
        "doctor" => {
            if doctor::run(explicit.as_deref(), args.get(1).map(String::as_str), &env) == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REGAUTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Reports a failure: a one-line summary on stdout (docker shows it) and the
/// full cause chain on stderr.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    // Clients show stdout as the error: keep it to one line, with the cause.
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    match e.source() {
        Some(cause) => {
            let cause = cause.to_string();
            println!(
                "docker-credential-regauth: {first}: {}",
                cause.lines().next().unwrap_or_default()
            );
        }
        None => println!("docker-credential-regauth: {first}"),
    }
    eprintln!("docker-credential-regauth: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
    ExitCode::FAILURE
}

fn stdin_or_fail() -> Result<String, ExitCode> {
    protocol::read_stdin().map_err(|e| fail(&e))
}

/// Reads the server URL on stdin and finds its registry entry. `Err` holds
/// the exit code of a failure already reported (not-found included).
fn lookup(
    explicit: Option<&std::path::Path>,
) -> Result<(String, config::Config, config::Registry), ExitCode> {
    let server_url = stdin_or_fail()?.trim().to_owned();
    let config = match config::find(explicit, &env) {
        Ok(Some(c)) => c,
        // Nothing configured anywhere: the client should go anonymous.
        Ok(None) => return Err(not_found(&server_url)),
        Err(e) => return Err(fail(&e)),
    };
    let registry = match credential::registry_for(&config, &server_url) {
        Ok(r) => r.clone(),
        Err(GetError::NotConfigured(_)) => return Err(not_found(&server_url)),
        Err(e) => return Err(fail(&e)),
    };
    Ok((server_url, config, registry))
}

fn get(explicit: Option<&std::path::Path>) -> ExitCode {
    let (server_url, config, registry) = match lookup(explicit) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let registry = &registry;
    match credential::credential(&config, registry, &env) {
        Ok((entry, source)) => {
            if let Source::StaleFallback(reason) = &source {
                eprintln!(
                    "docker-credential-regauth: warning: the token server is unreachable ({reason}); \
                     using the cached credential, valid for {}s more",
                    entry.expires_at.saturating_sub(credential::unix_now())
                );
            }
            let username = match registry.output {
                Output::IdentityToken => IDENTITY_TOKEN_USERNAME.to_owned(),
                Output::Password => registry.username.clone(),
            };
            let creds = Credentials {
                server_url,
                username,
                secret: entry.refresh_token,
            };
            match serde_json::to_string(&creds) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Err(e) => fail(&e),
    }
}

fn not_found(server_url: &str) -> ExitCode {
    tracing::debug!(server_url, "no registry entry matches; answering not found");
    println!("{NOT_FOUND}");
    ExitCode::FAILURE
}

fn store() -> ExitCode {
    let payload = match stdin_or_fail() {
        Ok(s) => s,
        Err(code) => return code,
    };
    match protocol::parse_store(&payload) {
        Ok(url) => {
            // `docker login` calls store; failing it would break the login.
            eprintln!(
                "docker-credential-regauth: not storing credentials for {url}: \
                 they come from the local identity"
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            println!("docker-credential-regauth: {message}");
            eprintln!("docker-credential-regauth: {message}");
            ExitCode::FAILURE
        }
    }
}

fn erase(explicit: Option<&std::path::Path>) -> ExitCode {
    let (_, config, registry) = match lookup(explicit) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let registry = &registry;
    let removed = cache::Cache::open(&config.cache_dir)
        .and_then(|c| c.erase(&cache::registry_stem(registry)));
    match removed {
        Ok(n) => {
            tracing::debug!(removed = n, "erased cached credentials");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn list(explicit: Option<&std::path::Path>) -> ExitCode {
    let config = match config::find(explicit, &env) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut out = BTreeMap::new();
    for reg in config.iter().flat_map(|c| &c.registries) {
        let user = match reg.output {
            Output::IdentityToken => IDENTITY_TOKEN_USERNAME,
            Output::Password => reg.username.as_str(),
        };
        for p in &reg.patterns {
            out.entry(p.to_string()).or_insert(user.to_owned());
        }
    }
    match serde_json::to_string(&out) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// The kubelet kills plugins after a minute; finish, or fail clearly, before.
const KUBELET_DEADLINE: std::time::Duration = std::time::Duration::from_secs(50);

fn kubelet_plugin(explicit: Option<&std::path::Path>) -> ExitCode {
    std::thread::spawn(|| {
        std::thread::sleep(KUBELET_DEADLINE);
        eprintln!(
            "docker-credential-regauth: kubelet plugin gave up after {}s",
            KUBELET_DEADLINE.as_secs()
        );
        std::process::exit(1);
    });
    let input = match protocol::read_stdin() {
        Ok(s) => s,
        Err(e) => return kubelet_fail(&e),
    };
    let request = match kubelet::parse(&input) {
        Ok(r) => r,
        Err(e) => return kubelet_fail(&e),
    };
    let config = match config::find(explicit, &env) {
        Ok(c) => c,
        Err(e) => return kubelet_fail(&e),
    };
    match kubelet::answer(config.as_ref(), &request, &env).map(|r| serde_json::to_string(&r)) {
        Ok(Ok(json)) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => kubelet_fail(&e),
        Err(e) => kubelet_fail(&e),
    }
}

/// The kubelet reads only stdout as the response: errors go to stderr alone.
fn kubelet_fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("docker-credential-regauth kubelet: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
    ExitCode::FAILURE
}
