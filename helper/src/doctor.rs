//! `doctor [HOST]`: check, in order, everything `get` depends on, and say
//! how to fix what fails. Credential helpers that hide their errors cost
//! their users hours; this prints one line per check instead.

use std::path::Path;

use crate::config::{self, Config, Registry};
use crate::credential::unix_now;
use crate::exchange;
use crate::identity;
use crate::matcher::Target;

/// One check's outcome.
struct Report {
    failures: usize,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {what}: {detail}");
    }

    fn fail(&mut self, what: &str, detail: impl std::fmt::Display, fix: &str) {
        self.failures += 1;
        println!("FAIL  {what}: {detail}");
        println!("      fix: {fix}");
    }

    fn info(&self, what: &str, detail: impl std::fmt::Display) {
        println!("info  {what}: {detail}");
    }
}

/// Runs the checks; returns the number of failures.
pub fn run(
    explicit: Option<&Path>,
    host: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> usize {
    let mut r = Report { failures: 0 };
    let config = match config::find(explicit, env) {
        Ok(Some(c)) => {
            r.ok("config", c.path.display());
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
            );
            return r.failures;
        }
        Err(e) => {
            r.fail(
                "config",
                e,
                "correct the file; unknown keys and bad values are errors",
            );
            return r.failures;
        }
    };
    r.ok("cache", config.cache_dir.display());
    match host {
        Some(h) => match Target::parse(h) {
            None => r.fail(
                "registry",
                format!("{h:?} is not a registry host"),
                "pass HOST, HOST:PORT or HOST/REPO",
            ),
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
                    );
                }
                Some(reg) => {
                    r.ok(
                        "registry",
                        format!("{} matches {}", t.host, reg.patterns[0]),
                    );
                    check_registry(&mut r, &config, reg, Some(h), env);
                }
            },
        },
        None => {
            for reg in &config.registries {
                r.info("registry", &reg.patterns[0]);
                check_registry(&mut r, &config, reg, None, env);
            }
        }
    }
    r.failures
}

fn check_registry(
    r: &mut Report,
    _config: &Config,
    reg: &Registry,
    host: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) {
    let id = match identity::read(&reg.identity, env) {
        Ok(id) => {
            let expiry = match id.expires_at {
                Some(exp) if exp <= unix_now() => format!(", EXPIRED {}s ago", unix_now() - exp),
                Some(exp) => format!(", expires in {}s", exp - unix_now()),
                None => String::new(),
            };
            r.ok(
                "identity",
                format!("{} ({}){expiry}", id.summary, reg.identity.kind()),
            );
            if id.expires_at.is_some_and(|e| e <= unix_now()) {
                r.fail(
                    "identity",
                    "the token has expired",
                    "check that the token file is being rotated (projected volume mounted?)",
                );
                return;
            }
            id
        }
        Err(e) => {
            r.fail("identity", &e, identity_fix(reg));
            return;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            r.fail(
                "runtime",
                e,
                "the process could not start its async runtime",
            );
            return;
        }
    };
    let reachable = runtime.block_on(async {
        let http = exchange::http_client(reg, None)?;
        let url = format!("{}/healthz", reg.token_server);
        http.get(&url)
            .send()
            .await
            .map_err(|e| exchange::ExchangeError::Unreachable {
                url: url.clone(),
                reason: error_chain(&e),
            })
    });
    match reachable {
        Ok(resp) if resp.status().is_success() => {
            r.ok("token server", format!("{} answers", reg.token_server))
        }
        Ok(resp) => r.fail(
            "token server",
            format!("{}/healthz answered {}", reg.token_server, resp.status()),
            "check token_server: it must be the server's base URL",
        ),
        Err(e) => {
            r.fail("token server", &e, "check token_server, the network path, and ca_file if the server's certificate is not publicly trusted");
            return;
        }
    }
    let issued = match runtime.block_on(exchange::exchange(reg, &id, unix_now())) {
        Ok(i) => {
            r.ok(
                "exchange",
                format!(
                    "credential valid for {}s",
                    i.expires_at.saturating_sub(unix_now())
                ),
            );
            i
        }
        Err(e) => {
            r.fail("exchange", &e, "check the server's issuers/accounts config and that `service` is one of its services");
            return;
        }
    };
    let repo = host
        .and_then(Target::parse)
        .map(|t| t.path().to_owned())
        .filter(|p| !p.is_empty());
    let Some(repo) = repo else {
        r.info(
            "scopes",
            "pass HOST/REPO to see what a pull of REPO is granted",
        );
        return;
    };
    let scope = format!("repository:{repo}:pull,push");
    let granted = runtime.block_on(async {
        let http = exchange::http_client(reg, None)?;
        let url = reg.token_url();
        let resp = http
            .get(&url)
            .query(&[("service", reg.service.as_str()), ("scope", scope.as_str())])
            .basic_auth(&reg.username, Some(&issued.refresh_token))
            .send()
            .await
            .map_err(|e| exchange::ExchangeError::Unreachable {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        let body: serde_json::Value =
            resp.json()
                .await
                .map_err(|e| exchange::ExchangeError::BadReply {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        let token = body["token"].as_str().unwrap_or_default();
        Ok::<_, exchange::ExchangeError>(
            identity::unverified_claims(token).map(|c| c["access"].clone()),
        )
    });
    match granted {
        Ok(Some(access)) if access.as_array().is_some_and(|a| !a.is_empty()) => {
            r.ok("scopes", format!("{scope} -> {access}"));
        }
        Ok(_) => r.fail(
            "scopes",
            format!("{scope} -> nothing granted"),
            "the server's policy gives this identity no access to that repository",
        ),
        Err(e) => r.fail("scopes", e, "the token server did not answer the test pull"),
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}
