//! `docker-credential-regauth`: a docker credential helper that swaps the
//! local identity (service-account token, OIDC token, client certificate or
//! account) for a short-lived registry credential from a regauth token server.
//!
//! This file alone owns stdout, stderr and the exit code: stdout carries only
//! the protocol, and diagnostics go to stderr (`REGAUTH_LOG=debug` for more).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use docker_credential_regauth::commands::{self, GetAnswer};
use docker_credential_regauth::protocol::{self, NOT_FOUND};
use docker_credential_regauth::{clock, doctor};

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

/// The kubelet kills plugins after a minute; finish, or fail clearly, before.
const KUBELET_DEADLINE: Duration = Duration::from_secs(50);

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
    let explicit = explicit.as_deref();
    match args.first().map(String::as_str).unwrap_or_default() {
        "get" => get(explicit),
        "store" => store(),
        "erase" => erase(explicit),
        "list" => list(explicit),
        "version" | "--version" | "-v" => {
            println!("docker-credential-regauth {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "kubelet" => kubelet_plugin(explicit),
        "doctor" => doctor(explicit, args.get(1).map(String::as_str)),
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

/// Writes `e`'s causes to stderr, one per line, after its own message.
fn print_causes(e: &dyn std::error::Error) {
    let mut source = e.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
}

/// Reports a failure: a one-line summary on stdout (docker shows it) and the
/// full cause chain on stderr.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    // Clients show stdout as the error: keep it to one line, with the cause.
    let first = |e: &dyn std::error::Error| {
        let text = e.to_string();
        text.lines().next().unwrap_or_default().to_owned()
    };
    match e.source() {
        Some(cause) => println!("docker-credential-regauth: {}: {}", first(e), first(cause)),
        None => println!("docker-credential-regauth: {}", first(e)),
    }
    eprintln!("docker-credential-regauth: {e}");
    print_causes(e);
    ExitCode::FAILURE
}

/// The kubelet reads only stdout as the response: errors go to stderr alone.
fn kubelet_fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("docker-credential-regauth kubelet: {e}");
    print_causes(e);
    ExitCode::FAILURE
}

fn stdin() -> Result<String, protocol::InputError> {
    protocol::read_input(std::io::stdin().lock())
}

fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string(value) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn not_found() -> ExitCode {
    println!("{NOT_FOUND}");
    ExitCode::FAILURE
}

fn get(explicit: Option<&Path>) -> ExitCode {
    let server_url = match stdin() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    match commands::get(explicit, &server_url, &env, &clock::system) {
        Ok(GetAnswer::Found {
            credentials,
            warning,
        }) => {
            if let Some(warning) = warning {
                eprintln!("docker-credential-regauth: warning: {warning}");
            }
            print_json(&credentials)
        }
        Ok(GetAnswer::NotFound) => not_found(),
        Err(e) => fail(&e),
    }
}

fn store() -> ExitCode {
    let payload = match stdin() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    match commands::store(&payload) {
        Ok(url) => {
            // `docker login` calls store; failing it would break the login.
            eprintln!(
                "docker-credential-regauth: not storing credentials for {url}: \
                 they come from the local identity"
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn erase(explicit: Option<&Path>) -> ExitCode {
    let server_url = match stdin() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    match commands::erase(explicit, &server_url, &env) {
        Ok(Some(removed)) => {
            tracing::debug!(removed, "erased cached credentials");
            ExitCode::SUCCESS
        }
        Ok(None) => not_found(),
        Err(e) => fail(&e),
    }
}

fn list(explicit: Option<&Path>) -> ExitCode {
    match commands::list(explicit, &env) {
        Ok(patterns) => print_json(&patterns),
        Err(e) => fail(&e),
    }
}

fn doctor(explicit: Option<&Path>, host: Option<&str>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match doctor::run(explicit, host, &env, &clock::system, &mut out) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("docker-credential-regauth doctor: cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn kubelet_plugin(explicit: Option<&Path>) -> ExitCode {
    std::thread::spawn(|| {
        std::thread::sleep(KUBELET_DEADLINE);
        eprintln!(
            "docker-credential-regauth kubelet: gave up after {}s",
            KUBELET_DEADLINE.as_secs()
        );
        std::process::exit(1);
    });
    let input = match stdin() {
        Ok(s) => s,
        Err(e) => return kubelet_fail(&e),
    };
    match commands::kubelet(explicit, &input, &env, &clock::system) {
        Ok(response) => match serde_json::to_string(&response) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => kubelet_fail(&e),
        },
        Err(e) => kubelet_fail(&e),
    }
}
