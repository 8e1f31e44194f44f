//! `doctor [HOST]`: check, in order, everything `get` depends on, and say
//! how to fix what fails. Credential helpers that hide their errors cost
//! their users hours; this prints one line per check instead.

use std::io::Write;
use std::path::Path;

use regauth_client::{Issued, TokenClient, unverified_claims};

use crate::clock::Clock;
use crate::config::{self, Registry};
use crate::exchange;
use crate::identity::{self, Identity};
use crate::matcher::Target;

/// The checks' outcomes, written as they happen.
struct Report<'a> {
    out: &'a mut dyn Write,
    failures: usize,
}

impl Report<'_> {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) -> std::io::Result<()> {
        writeln!(self.out, "ok    {what}: {detail}")
    }

    fn fail(
        &mut self,
        what: &str,
        detail: impl std::fmt::Display,
        fix: &str,
    ) -> std::io::Result<()> {
        self.failures += 1;
        writeln!(self.out, "FAIL  {what}: {detail}")?;
        writeln!(self.out, "      fix: {fix}")
    }

    fn info(&mut self, what: &str, detail: impl std::fmt::Display) -> std::io::Result<()> {
        writeln!(self.out, "info  {what}: {detail}")
    }
}

/// The error and its causes on one line, for a report line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// Runs the checks, writing one line per check to `out`; returns the number
/// of failures. Every time-dependent judgement uses one reading of `clock`.
pub fn run(
    explicit: Option<&Path>,
    host: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    clock: &Clock,
    out: &mut dyn Write,
) -> std::io::Result<usize> {
    let mut r = Report { out, failures: 0 };
    let config = match config::find(explicit, env) {
        Ok(Some(c)) => {
            r.ok("config", c.path.display())?;
            c
        }
        Ok(None) => {
            let looked: Vec<String> = config::candidates(explicit, env)
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            r.fail(
                "config",
                format!("no config file (looked in {})", looked.join(", ")),
                "write one; see the README's helper section",
            )?;
            return Ok(r.failures);
        }
        Err(e) => {
            r.fail(
                "config",
                chain(&e),
                "correct the file; unknown keys and bad values are errors",
            )?;
            return Ok(r.failures);
        }
    };
    r.ok("cache", config.cache_dir.display())?;
    let now = clock();
    match host {
        Some(h) => match Target::parse(h) {
            None => r.fail(
                "registry",
                format!("{h:?} is not a registry host"),
                "pass HOST, HOST:PORT or HOST/REPO",
            )?,
            Some(t) => match config.registry_for(&t) {
                None => {
                    let patterns: Vec<String> = config
                        .registries
                        .iter()
                        .flat_map(|reg| reg.patterns.iter().map(ToString::to_string))
                        .collect();
                    r.fail(
                        "registry",
                        format!("{} matches no pattern ({})", t.host, patterns.join(", ")),
                        "add a `match` pattern; labels must match one to one, and the port exactly",
                    )?;
                }
                Some(reg) => {
                    r.ok("registry", format!("{} matches {}", t.host, reg.name()))?;
                    check_registry(&mut r, reg, Some(&t), env, now)?;
                }
            },
        },
        None => {
            for reg in &config.registries {
                r.info("registry", reg.name())?;
                check_registry(&mut r, reg, None, env, now)?;
            }
        }
    }
    Ok(r.failures)
}

fn check_registry(
    r: &mut Report<'_>,
    reg: &Registry,
    target: Option<&Target>,
    env: &dyn Fn(&str) -> Option<String>,
    now: u64,
) -> std::io::Result<()> {
    let Some(id) = check_identity(r, reg, env, now)? else {
        return Ok(());
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return r.fail(
                "runtime",
                e,
                "the process could not start its async runtime",
            );
        }
    };
    let client = match TokenClient::new(&exchange::settings(reg, None)) {
        Ok(c) => c,
        Err(e) => {
            return r.fail(
                "token server",
                chain(&e),
                "check token_server and ca_file in the config",
            );
        }
    };
    match runtime.block_on(client.health()) {
        Ok(()) => r.ok("token server", format!("{} answers", reg.token_server))?,
        Err(e) if matches!(e, regauth_client::Error::Unreachable { .. }) => {
            return r.fail(
                "token server",
                chain(&e),
                "check token_server, the network path, and ca_file if the server's certificate is not publicly trusted",
            );
        }
        Err(e) => r.fail(
            "token server",
            chain(&e),
            "check token_server: it must be the server's base URL",
        )?,
    }
    let issued = match runtime.block_on(exchange::exchange(reg, &id, now)) {
        Ok(i) => {
            r.ok(
                "exchange",
                format!("credential valid for {}s", i.expires_at.saturating_sub(now)),
            )?;
            i
        }
        Err(e) => {
            let fix = match &e {
                exchange::ExchangeError::Server(s) if s.is_unknown_target() => {
                    "set `service` to a service the token server serves (its `services` list)"
                }
                _ => {
                    "check the server's issuers/accounts config and that `service` is one of its services"
                }
            };
            return r.fail("exchange", chain(&e), fix);
        }
    };
    let repo = target
        .map(|t| t.path().to_owned())
        .filter(|p| !p.is_empty());
    let Some(repo) = repo else {
        return r.info(
            "scopes",
            "pass HOST/REPO to see what a pull of REPO is granted",
        );
    };
    check_scopes(r, reg, &runtime, &client, &issued, &repo)
}

/// Reads the identity; `None` when it is unusable (reported).
fn check_identity(
    r: &mut Report<'_>,
    reg: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
    now: u64,
) -> std::io::Result<Option<Identity>> {
    let id = match identity::read(&reg.identity, env) {
        Ok(id) => id,
        Err(e) => {
            r.fail("identity", chain(&e), identity_fix(reg))?;
            return Ok(None);
        }
    };
    let expiry = match id.expires_at {
        Some(exp) if exp <= now => format!(", EXPIRED {}s ago", now - exp),
        Some(exp) => format!(", expires in {}s", exp - now),
        None => String::new(),
    };
    r.ok(
        "identity",
        format!("{} ({}){expiry}", id.summary, reg.identity.kind()),
    )?;
    if id.expires_at.is_some_and(|e| e <= now) {
        r.fail(
            "identity",
            "the token has expired",
            "check that the token file is being rotated (projected volume mounted?)",
        )?;
        return Ok(None);
    }
    Ok(Some(id))
}

fn check_scopes(
    r: &mut Report<'_>,
    reg: &Registry,
    runtime: &tokio::runtime::Runtime,
    client: &TokenClient,
    issued: &Issued,
    repo: &str,
) -> std::io::Result<()> {
    let scope = format!("repository:{repo}:pull,push");
    let granted = runtime.block_on(client.access_token(
        &reg.service,
        std::slice::from_ref(&scope),
        &reg.username,
        &issued.refresh_token,
    ));
    match granted {
        Ok(token) => {
            let access = unverified_claims(token.expose())
                .and_then(|c| c.get("access").cloned())
                .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()));
            match access {
                Some(access) => r.ok("scopes", format!("{scope} -> {access}")),
                None => r.fail(
                    "scopes",
                    format!("{scope} -> nothing granted"),
                    "the server's policy gives this identity no access to that repository",
                ),
            }
        }
        Err(e) => r.fail(
            "scopes",
            chain(&e),
            "the token server did not answer the test pull",
        ),
    }
}

fn identity_fix(reg: &Registry) -> &'static str {
    match reg.identity.kind() {
        "kubernetes" => {
            "mount a projected service-account token with the server's audience at token_file"
        }
        "oidc_file" => "write the ID token to token_file",
        "oidc_env" => "export the ID token in the configured variable",
        "github_actions" => "give the workflow `permissions: id-token: write`",
        "client_certificate" => "point cert and key at readable PEM files",
        _ => "point password_file at a readable file holding the password",
    }
}
