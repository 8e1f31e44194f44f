//! `regauth-token-server`: the command line.

#![forbid(unsafe_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use regauth_token_server::cli::{Cli, Command, KeysCommand, LogFormat, RevokeArgs, ServeArgs};
use regauth_token_server::clock;
use regauth_token_server::config;
use regauth_token_server::defaults::{self, write_private};
use regauth_token_server::http::{AppState, router};
use regauth_token_server::keys::{self, Algorithm};
use regauth_token_server::listen;
use regauth_token_server::registry_config::{self, RegistryVersion};
use regauth_token_server::report::Chain;
use regauth_token_server::revoke;
use regauth_token_server::secret::{RandomError, random};
use regauth_token_server::serve;
use regauth_token_server::settings::Settings;
use regauth_token_server::shared::SharedState;
use regauth_token_server::shared::revocation::{self, RevokeError};
use regauth_token_server::tls::TlsReloader;

/// Errors of the command line; printed once, with their cause chain.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Defaults(#[from] defaults::DefaultsError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Registry(#[from] registry_config::WriteError),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the shared state")]
    Shared(#[source] regauth_token_server::shared::SharedError),
    #[error(transparent)]
    Revoke(#[from] RevokeError),
    #[error("{} has no shared_state: revocation needs the Redis the fleet shares", .0.display())]
    NoSharedState(PathBuf),
    #[error(transparent)]
    RevokeInput(#[from] revoke::InputError),
    #[error(
        "{named} is still refused by an entry of a wider scope, which a lift of this scope leaves in force: {still}. To lift it, name its scope as --list shows it (leave out the --issuer or --kind it does not have)"
    )]
    StillRevoked { named: String, still: String },
    #[error("cannot use the socket systemd passed")]
    Inherited(#[from] listen::ListenError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot read the password from stdin")]
    Stdin(#[source] std::io::Error),
    #[error("no password on stdin")]
    NoPassword,
    #[error("bcrypt cost must be between 4 and 31, not {0}")]
    BcryptCost(u32),
    #[error("hashing the password failed")]
    Bcrypt(#[source] bcrypt::BcryptError),
    #[error("hashing the password failed: {0}")]
    Argon2(argon2::password_hash::Error),
    #[error("{} exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::CheckConfig { config }) => check_config(&config),
        Some(Command::RegistryConfig {
            config,
            data_dir,
            registry,
            out,
        }) => load(config.as_deref(), data_dir, None).and_then(|(s, _)| {
            let block = registry_config::write(&s, registry, &out)?;
            print!("{block}");
            Ok(())
        }),
        Some(Command::HashPassword { argon2, cost }) => hash_password(argon2, cost),
        Some(Command::Keys(KeysCommand::Generate { alg, out, force })) => {
            generate_keys(alg, &out, force)
        }
        Some(Command::Keys(KeysCommand::Secret { out, force })) => write_secret(&out, force),
        Some(Command::Keys(KeysCommand::Rotate { alg, out })) => rotate_keys(alg, &out),
        Some(Command::Revoke(args)) => revoke(args),
        Some(Command::Keys(KeysCommand::RotateRefresh { out, force })) => {
            rotate_refresh(&out, force)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Loads the given config, or prepares the data directory and loads the
/// embedded default.
fn load(
    config: Option<&Path>,
    data_dir: Option<PathBuf>,
    first_start: Option<&mut defaults::Prepared>,
) -> Result<(Settings, Option<PathBuf>), CliError> {
    if let Some(path) = config {
        return Ok((config::load(path)?, None));
    }
    let dir = defaults::data_dir(data_dir)?;
    let admin = std::env::var("REGAUTH_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let prepared = defaults::prepare(&dir, admin.as_deref(), clock::now())?;
    if let Some(out) = first_start {
        *out = prepared;
    }
    let settings = config::load_str(
        defaults::DEFAULT_CONFIG,
        &dir,
        Path::new("<embedded default config>"),
    )?;
    Ok((settings, Some(dir)))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REGAUTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour codes only help a person at a terminal; in files and log
    // collectors they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> Result<(), CliError> {
    init_tracing(args.log_format);
    // Several crates link rustls; pin the provider so none has to guess.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut prepared = defaults::Prepared::default();
    let source = Source {
        config: args.config,
        data_dir: args.data_dir,
        listen: args.listen,
    };
    let (settings, data_dir) = source.load(Some(&mut prepared))?;
    if let Some(dir) = &data_dir {
        announce_default(&settings, dir, &prepared)?;
    }
    // Before the runtime: taking the socket edits the environment, which
    // is only sound while this is the process's one thread.
    let inherited = listen::inherited()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(run(settings, source, inherited))
}

fn announce_default(
    settings: &Settings,
    dir: &Path,
    prepared: &defaults::Prepared,
) -> Result<(), CliError> {
    let out = dir.join("registry");
    let block = registry_config::write(settings, RegistryVersion::V2, &out)?;
    println!(
        "regauth token server: embedded default config, data in {}",
        dir.display()
    );
    if let Some(p) = &prepared.generated_admin_password {
        println!(
            "\nAccount `{}` was created with the password below. It is shown only this once;",
            defaults::ADMIN
        );
        println!("set REGAUTH_ADMIN_PASSWORD to choose your own.\n\n    {p}\n");
    }
    println!(
        "Add this to the registry's config.yml (distribution 2.x; for 3.x run `registry-config --registry 3`):\n"
    );
    println!("{block}");
    Ok(())
}

/// Where the settings come from, so SIGHUP can load them again.
#[derive(Debug, Clone)]
struct Source {
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
}

impl Source {
    fn load(
        &self,
        first_start: Option<&mut defaults::Prepared>,
    ) -> Result<(Settings, Option<PathBuf>), CliError> {
        let (mut settings, data_dir) =
            load(self.config.as_deref(), self.data_dir.clone(), first_start)?;
        if let Some(listen) = self.listen {
            settings.listen = listen;
            if data_dir.is_some() {
                settings.public_url = format!("http://{listen}");
            }
        }
        Ok((settings, data_dir))
    }
}

/// How often the TLS files are checked for changes.
const TLS_POLL: Duration = Duration::from_secs(2);

async fn run(
    settings: Settings,
    source: Source,
    inherited: Option<std::net::TcpListener>,
) -> Result<(), CliError> {
    let listen = settings.listen;
    let socket = if inherited.is_some() {
        "inherited"
    } else {
        "bound"
    };
    let listener = match inherited {
        Some(socket) => tokio::net::TcpListener::from_std(socket).map_err(CliError::Serve)?,
        None => tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| CliError::Listen {
                addr: listen,
                source,
            })?,
    };
    let local = listener.local_addr().map_err(CliError::Serve)?;
    tracing::info!(
        addr = %local,
        socket,
        kid = settings.keys.current().kid(),
        alg = settings.keys.current().alg().as_str(),
        accounts = settings.accounts.len(),
        rules = settings.policy.rules().len(),
        "listening on {}://{local}",
        if settings.tls.is_some() { "https" } else { "http" }
    );
    let tls = settings.tls.as_ref().map(|t| {
        let reloader = TlsReloader::new(t);
        reloader.watch(TLS_POLL);
        reloader
    });
    let limits = settings.limits;
    if settings.shared_state.is_some() {
        tracing::info!(
            revocation_unavailable = ?settings.revocation_unavailable,
            "shared state: the limiter and revocations are fleet-wide"
        );
    }
    let state = AppState::new(settings, clock::now).map_err(CliError::Shared)?;
    tokio::spawn(reload_on_hangup(
        Arc::clone(&state),
        tls.clone(),
        source,
        listen,
    ));
    serve::serve(listener, tls, router(state), limits, shutdown_signal())
        .await
        .map_err(CliError::Serve)?;
    if socket == "inherited" {
        // Only our copy closed: systemd holds the socket open, so new
        // connections wait in its backlog for the next process.
        tracing::info!("stopped accepting on the inherited socket; it stays open in systemd");
    }
    tracing::info!("shut down");
    Ok(())
}

/// SIGHUP loads the config again. A valid one is swapped in atomically for
/// every request that starts afterwards; an invalid one is refused and the
/// previous config keeps serving.
async fn reload_on_hangup(
    state: Arc<AppState>,
    tls: Option<Arc<TlsReloader>>,
    source: Source,
    listen: SocketAddr,
) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot listen for SIGHUP; config reload is unavailable");
        return;
    };
    while hangup.recv().await.is_some() {
        let src = source.clone();
        let loaded = tokio::task::spawn_blocking(move || src.load(None)).await;
        match loaded {
            Ok(Ok((settings, _))) => {
                if settings.listen != listen {
                    tracing::warn!(new = %settings.listen, "a new listen address takes effect only on restart");
                }
                match (&tls, &settings.tls) {
                    (Some(reloader), Some(new)) => reloader.replace(new),
                    (None, None) => {}
                    _ => tracing::warn!("turning TLS on or off takes effect only on restart"),
                }
                let shared_url =
                    |s: &Settings| s.shared_state.as_ref().map(|s| s.url.expose().to_owned());
                if shared_url(&settings) != shared_url(&state.settings()) {
                    tracing::warn!("a new shared_state takes effect only on restart");
                }
                let kid = settings.keys.current().kid().to_owned();
                state.replace_settings(settings);
                state.metrics().reload(true);
                tracing::info!(kid, "config reloaded");
            }
            Ok(Err(e)) => {
                state.metrics().reload(false);
                tracing::error!(
                    "config reload refused; the previous config keeps serving: {}",
                    Chain(&e)
                );
            }
            Err(e) => tracing::error!(error = %e, "config reload task failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}

fn check_config(path: &Path) -> Result<(), CliError> {
    let settings = config::load(path)?;
    println!(
        "{}: ok ({} signing key(s), refresh secret kid(s) {}, {} account(s), {} policy rule(s), services: {})",
        path.display(),
        settings.keys.all().len(),
        settings.refresh.kids().join(", "),
        settings.accounts.len(),
        settings.policy.rules().len(),
        settings.services.join(", ")
    );
    Ok(())
}

fn hash_password(argon2: bool, cost: u32) -> Result<(), CliError> {
    let mut input = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut input)
        .map_err(CliError::Stdin)?;
    let password = input
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&input);
    if password.is_empty() {
        return Err(CliError::NoPassword);
    }
    let hash = if argon2 {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::encode_b64(&random::<16>()?)
            .map_err(CliError::Argon2)?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(CliError::Argon2)?
            .to_string()
    } else {
        if !(4..=31).contains(&cost) {
            return Err(CliError::BcryptCost(cost));
        }
        bcrypt::hash(password, cost).map_err(CliError::Bcrypt)?
    };
    println!("{hash}");
    Ok(())
}

fn refuse_overwrite(path: &Path, force: bool) -> Result<(), CliError> {
    if path.exists() && !force {
        return Err(CliError::Exists(path.to_owned()));
    }
    Ok(())
}

fn generate_keys(alg: Algorithm, out: &Path, force: bool) -> Result<(), CliError> {
    write_key_pair(alg, out, "signing", force).map(|_| ())
}

/// Writes `<stem>.key` and `<stem>.crt` into `out`; returns their paths and kid.
fn write_key_pair(
    alg: Algorithm,
    out: &Path,
    stem: &str,
    force: bool,
) -> Result<(PathBuf, PathBuf, String), CliError> {
    let (key, cert) = (
        out.join(format!("{stem}.key")),
        out.join(format!("{stem}.crt")),
    );
    refuse_overwrite(&key, force)?;
    refuse_overwrite(&cert, force)?;
    let io = |p: &Path| {
        let path = p.to_owned();
        move |source| CliError::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let g = keys::generate(alg, "regauth token signing", clock::now())?;
    write_private(&cert, g.cert_pem.as_bytes()).map_err(io(&cert))?;
    write_private(&key, g.key_pem.as_bytes()).map_err(io(&key))?;
    let loaded = keys::SigningKey::load(&key, &cert, false)?;
    println!(
        "wrote {} and {} ({}, kid {})",
        key.display(),
        cert.display(),
        alg.as_str(),
        loaded.kid()
    );
    let kid = loaded.kid().to_owned();
    Ok((key, cert, kid))
}

fn rotate_keys(alg: Algorithm, out: &Path) -> Result<(), CliError> {
    let stamp = humantime::format_rfc3339_seconds(clock::now())
        .to_string()
        .replace([':', '-'], "");
    let stem = format!("signing-{}", stamp.trim_end_matches('Z'));
    let (key, cert, kid) = write_key_pair(alg, out, &stem, false)?;
    println!(
        "
Rotate in three steps; reload the server after each (SIGHUP, or systemctl reload):

1. Publish. Add the new key as the LAST entry of signing_keys:
       - key: {key}
         cert: {cert}
   Reload, then run `registry-config` again and restart each registry so its
   bundle trusts the new certificate. The old key still signs.

2. Sign. Move the new key to the FIRST entry and reload. New tokens carry
   kid {kid}; tokens from the old key still verify because it stays published.

3. Retire. After the longest access-token lifetime (access_token_ttl) has
   passed, remove the old key, reload, and regenerate the registry bundles.

Refresh tokens are signed with refresh_secrets (or refresh_secret_file), not
with these keys, so they survive a signing-key rotation.",
        key = key.display(),
        cert = cert.display(),
    );
    Ok(())
}

fn write_secret(out: &Path, force: bool) -> Result<(), CliError> {
    refuse_overwrite(out, force)?;
    write_private(out, &random::<32>()?).map_err(|source| CliError::Write {
        path: out.to_owned(),
        source,
    })?;
    println!("wrote {} (32 random bytes, mode 0600)", out.display());
    Ok(())
}

/// How long the command line waits for one Redis round trip.
const CLI_SHARED_TIMEOUT: Duration = Duration::from_secs(5);

/// Round trips the command line tries, asking the sentinels again between
/// them, when a failover moves the primary under it.
const CLI_ATTEMPTS: u32 = 3;

/// `revoke`: writes, lifts or lists revocations in the fleet's Redis.
fn revoke(args: RevokeArgs) -> Result<(), CliError> {
    let settings = config::load(&args.config)?;
    let Some(shared_settings) = settings.shared_state.clone() else {
        return Err(CliError::NoSharedState(args.config));
    };
    let input = revoke::Input {
        subject: args.subject.as_deref(),
        jti: args.jti.as_deref(),
        all_before: args.all_before.as_deref(),
        kind: args.kind,
        issuer: args.issuer.as_deref(),
        lift: args.lift,
    };
    let plan = revoke::plan(&settings, input, clock::now())?;
    let ttl = match (&plan, args.lift) {
        (Some(plan), false) => Some(revoke::duration(plan, args.duration)?),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let shared = SharedState::new(
            &shared_settings,
            CLI_SHARED_TIMEOUT,
            regauth_token_server::shared::SharedMetrics::default(),
        )
        .map_err(CliError::Shared)?;
        shared
            .run_retrying(CLI_ATTEMPTS, |mut conn| async move {
                redis::cmd("PING").query_async::<()>(&mut conn).await
            })
            .await
            .map_err(CliError::Shared)?;
        let Some(mut plan) = plan else {
            for r in revocation::list(&shared).await? {
                let at = std::time::UNIX_EPOCH + Duration::from_secs(r.revoked_at);
                println!(
                    "{}: {}\trevoked {}\texpires in {}",
                    r.target,
                    r.target.refuses(),
                    humantime::format_rfc3339_seconds(at),
                    humantime::format_duration(Duration::from_secs(r.expires_in.as_secs()))
                );
            }
            return Ok(());
        };
        if args.lift {
            let report = revocation::lift(&shared, &plan.target).await?;
            for target in &report.lifted {
                println!("lifted {target}");
            }
            if !report.still.is_empty() {
                let still: Vec<String> = report.still.iter().map(ToString::to_string).collect();
                return Err(CliError::StillRevoked {
                    named: plan.target.to_string(),
                    still: still.join("; "),
                });
            }
            if report.lifted.is_empty() {
                println!("was not revoked: {}", plan.target);
            }
            return Ok(());
        }
        let ttl = ttl.unwrap_or(plan.lifetime);
        let epoch = hex(&random::<8>()?);
        // The fleet's clock, in which replicas stamp refresh tokens: `now`
        // is Redis's time, whatever this machine's clock says.
        let now = revocation::redis_time(&shared).await?;
        if args.all_before.as_deref() == Some("now")
            && let revocation::Target::IssuedBefore { before, .. } = &mut plan.target
        {
            *before = clock::unix(now);
        }
        let entry = revocation::revoke(&shared, plan.target, now, ttl, &epoch).await?;
        println!(
            "revoked {} for {}: it {} on every replica that follows the shared state",
            entry.target,
            humantime::format_duration(entry.expires_in),
            entry.target.refuses()
        );
        Ok(())
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rotate_refresh(out: &Path, force: bool) -> Result<(), CliError> {
    refuse_overwrite(out, force)?;
    let secret = random::<32>()?;
    write_private(out, &secret).map_err(|source| CliError::Write {
        path: out.to_owned(),
        source,
    })?;
    let kid = regauth_token_server::token::refresh::secret_kid(&secret);
    println!(
        "wrote {out} (32 random bytes, mode 0600, kid {kid})

Rotate in three steps; reload every server after each (SIGHUP, or
systemctl reload). refresh_secrets lists files; the first signs, all verify.
A config with refresh_secret_file: OLD becomes refresh_secrets: [OLD].

1. Publish. Add the new secret as the LAST entry of refresh_secrets:
       refresh_secrets:
         - OLD
         - {out}
   Reload every replica. The old secret still signs; now every replica can
   verify tokens from the new one.

2. Sign. Move the new secret to the FIRST entry and reload. New refresh
   tokens carry kid {kid}; tokens signed with the old secret still verify.

3. Retire. After the longest refresh-token lifetime (refresh_token_ttl, and
   each issuer's credential_ttl) has passed, remove the old entry and reload.
   Tokens still signed with it are refused (invalid_grant), and their
   holders log in again.",
        out = out.display(),
    );
    Ok(())
}
