//! `regauth-pull-secrets`: keeps a short-lived `kubernetes.io/dockerconfigjson`
//! Secret fresh for each selected (namespace, ServiceAccount), with a
//! credential the token server issued for that ServiceAccount's own
//! identity, and lists it in the ServiceAccount's `imagePullSecrets`.
//!
//! This file is the only one that prints to stdout or decides the exit code.

#![forbid(unsafe_code)]

mod caches;
mod clock;
mod config;
mod events;
mod exchange;
mod leader;
mod metrics;
mod ops;
mod pull_secret;
mod reconcile;
mod refresh;
mod retry;
mod run;
mod selection;
mod tokens;

/// The User-Agent of every request, to the API and to the token server;
/// the API records its first part as the field manager of any write that
/// names none.
pub(crate) const USER_AGENT: &str = concat!("regauth-pull-secrets/", env!("CARGO_PKG_VERSION"));

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand, ValueEnum};

use crate::exchange::TokenServerExchange;
use crate::leader::error_chain;
use crate::run::Health;

/// Keeps short-lived image pull Secrets fresh, per namespace and ServiceAccount.
#[derive(Debug, Parser)]
#[command(name = "regauth-pull-secrets", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the controller (the default).
    Run(RunArgs),
    /// Validates a config file and reports every problem with its line.
    CheckConfig {
        /// The config file.
        #[arg(long, env = "REGAUTH_PULL_SECRETS_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// The config file.
    #[arg(long, env = "REGAUTH_PULL_SECRETS_CONFIG")]
    config: Option<PathBuf>,
    /// Reconcile every ServiceAccount once, then exit (for a CronJob).
    #[arg(long)]
    once: bool,
    /// With --once: write nothing, and print the Secrets that would be
    /// applied as YAML (they hold live credentials).
    #[arg(long, requires = "once")]
    dry_run: bool,
    /// Delete every Secret this controller wrote and remove them from
    /// ServiceAccounts, then exit (before uninstalling).
    #[arg(long, conflicts_with = "once")]
    cleanup: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { config }) => match config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Run(args)) => run_command(&args),
        None => run_command(&cli.run),
    }
}

fn run_command(args: &RunArgs) -> ExitCode {
    init_logging(args.log_format);
    let Some(path) = &args.config else {
        eprintln!("regauth-pull-secrets: --config (or REGAUTH_PULL_SECRETS_CONFIG) is required");
        return ExitCode::FAILURE;
    };
    let settings = match config::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Several crates link rustls; pick the provider once, before any client.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("regauth-pull-secrets: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(args, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("regauth-pull-secrets: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A Kubernetes client from the in-cluster config or `KUBECONFIG`, naming
/// itself in its User-Agent.
async fn kube_client() -> Result<kube::Client, String> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        format!(
            "cannot configure the Kubernetes client: {}",
            error_chain(&e)
        )
    })?;
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(USER_AGENT),
    ));
    kube::Client::try_from(config).map_err(|e| {
        format!(
            "cannot configure the Kubernetes client: {}",
            error_chain(&e)
        )
    })
}

async fn execute(args: &RunArgs, settings: config::Settings) -> Result<(), String> {
    let client = kube_client().await?;
    if args.cleanup {
        let cleaned = run::cleanup(&settings, client)
            .await
            .map_err(|e| error_chain(&e))?;
        tracing::info!(
            secrets = cleaned.secrets,
            service_accounts = cleaned.service_accounts,
            "cleanup done"
        );
        return Ok(());
    }
    let exchange = TokenServerExchange::new(&settings.token_server)
        .map_err(|e| format!("cannot set up the token server client: {}", error_chain(&e)))?;
    if args.once {
        let secrets = run::once(settings, client, exchange, args.dry_run)
            .await
            .map_err(|e| error_chain(&e))?;
        if args.dry_run {
            let yaml = serde_saphyr::to_string_multiple(&secrets)
                .map_err(|e| format!("cannot write YAML: {e}"))?;
            print!("{yaml}");
        }
        return Ok(());
    }
    let health = Arc::new(Health {
        ready: AtomicBool::new(false),
        metrics: Arc::default(),
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    tracing::info!(listen = %settings.listen, "serving /metrics, /healthz and /readyz");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ops = tokio::spawn(ops::serve(listener, Arc::clone(&health), {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }));
    run::continuously(
        settings,
        client,
        exchange,
        identity(),
        health,
        shutdown_signal(),
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = ops.await;
    Ok(())
}

/// This replica's name in the Lease: the pod name (or host name) and a
/// random suffix, so a restarted pod is a new holder.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "regauth-pull-secrets".to_owned());
    let mut suffix = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut suffix);
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}_{suffix}")
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REGAUTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
