//! `revoke` does what its operator meant, or says why it will not: subjects
//! are taken exactly as the audit log prints them (text or JSON), a refresh
//! token is named by the `refresh_jti` its audit line carries, `--issuer`
//! names a configured issuer, `--for` cannot end a revocation before what it
//! revokes, `--list` says what each entry matches, and the README's examples
//! run as written.

use std::time::{Duration, Instant};

use regauth_e2e::credential_helper::audit::{audit_lines, log_field};
use regauth_e2e::fleet::Fleet;
use regauth_e2e::jwt::unverified_claims;
use regauth_e2e::oidc_issuer::OidcIssuer;
use regauth_e2e::oidc_issuer::claims::{ServiceAccount, now};
use regauth_e2e::oidc_issuer::config::{IssuerConfig, issuers_yaml};
use regauth_e2e::oidc_issuer::exchange::ExchangeRequest;
use regauth_e2e::process::CmdOutput;
use regauth_e2e::token_client::{HttpReply, TokenClient};
use regauth_e2e::token_server::SERVICE;

use crate::fleet::refused_within;
use crate::workload_identity::{AUDIENCE, POLICY};

/// A fleet of `replicas` sharing a Redis, trusting a Kubernetes issuer
/// `cluster-a` and an OIDC issuer `ci` (name from `sub`), with account
/// `alice`; `json` turns on JSON logs on replica 0.
struct Setup {
    fleet: Fleet,
    cluster: OidcIssuer,
    ci: OidcIssuer,
    _dir: tempfile::TempDir,
}

fn setup(replicas: usize, json: bool) -> Setup {
    let cluster = OidcIssuer::start();
    let ci = OidcIssuer::start();
    let issuers = issuers_yaml(&[
        IssuerConfig::kubernetes("cluster-a", &cluster.url()),
        IssuerConfig::oidc("ci", &ci.url()),
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = Fleet::start(dir.path(), replicas, true, &issuers, |b| {
        let b = b
            .account("alice", "alice-pw", &[])
            .account("bob", "bob-pw", &[])
            .policy(POLICY);
        if json {
            b.serve_args(&["--log-format", "json"])
        } else {
            b
        }
    });
    Setup {
        fleet,
        cluster,
        ci,
        _dir: dir,
    }
}

fn revoke(fleet: &Fleet, args: &[&str]) -> CmdOutput {
    let mut all = vec!["revoke"];
    all.extend_from_slice(args);
    fleet.command(&all)
}

fn assert_refused(reply: &HttpReply, what: &str) {
    assert!(
        matches!(reply.status, 400 | 401),
        "{what}: expected a refusal, got {}: {}",
        reply.status,
        reply.body
    );
    assert!(
        reply.body.contains("revoked"),
        "{what}: the refusal says why: {}",
        reply.body
    );
}

/// Refuses `out` (exit status 1, nothing claimed on stdout) with a message
/// holding every one of `hints`.
fn assert_command_refused(out: &CmdOutput, hints: &[&str], what: &str) {
    assert!(
        !out.success(),
        "{what}: the command must refuse, yet it succeeded: {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("revoked"),
        "{what}: nothing may be reported revoked: {}",
        out.stdout
    );
    for hint in hints {
        assert!(
            out.stderr.contains(hint),
            "{what}: the error must say {hint:?}: {}",
            out.stderr
        );
    }
}

/// Exchanges `token` at `client` and returns the regauth refresh token.
fn exchange(client: &TokenClient, token: &str) -> String {
    let reply = ExchangeRequest::jwt(token, SERVICE).send(client);
    assert_eq!(reply.status, 200, "exchange: {}", reply.body);
    reply.json_str("access_token")
}

/// The value of `field` in the last audit event that has it, from replica
/// 0's log in either format.
fn audit_field(setup: &Setup, field: &str) -> Option<String> {
    let server = &setup.fleet.first;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = audit_lines(server).iter().rev().find_map(|line| {
            if line.starts_with('{') {
                let event: serde_json::Value = serde_json::from_str(line).ok()?;
                event["fields"][field].as_str().map(str::to_owned)
            } else {
                log_field(line, field)
            }
        });
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The raw text of `field=…` in the last text audit line that has it, as
/// an operator would copy it (escapes and all, without the quotes).
fn audit_text_as_printed(setup: &Setup, field: &str) -> String {
    let needle = format!(" {field}=\"");
    let lines = audit_lines(&setup.fleet.first);
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no audit line with {field}=\"…\": {lines:#?}"));
    let start = line.find(&needle).expect("found above") + needle.len();
    let rest = &line[start..];
    let mut end = 0;
    let bytes = rest.as_bytes();
    while end < bytes.len() && bytes[end] != b'"' {
        end += if bytes[end] == b'\\' { 2 } else { 1 };
    }
    rest[..end].to_owned()
}

/// Before, the README's own example (`kubernetes:ci:builder`, while the
/// audit log says `kubernetes:system:serviceaccount:ci:builder`) exited 0,
/// printed "revoked … on every replica", and the service account kept its
/// credential. Now a subject that no principal can have is refused with the
/// form it must take, and the subject as the audit log prints it works.
#[test]
fn revoke_refuses_a_subject_no_principal_can_have_and_names_the_form() {
    let s = setup(1, false);
    let lb = s.fleet.client();
    let sa = ServiceAccount::new("ci", "builder");
    let token = exchange(&lb, &s.cluster.service_account_token(&sa, AUDIENCE));
    let sub = audit_field(&s, "sub").expect("the exchange's audit line has sub");
    assert_eq!(sub, "kubernetes:system:serviceaccount:ci:builder");

    let out = revoke(
        &s.fleet,
        &[
            "--subject",
            "kubernetes:ci:builder",
            "--issuer",
            "cluster-a",
        ],
    );
    assert_command_refused(
        &out,
        &["kubernetes:system:serviceaccount:NAMESPACE:NAME"],
        "revoke --subject kubernetes:ci:builder",
    );
    assert_eq!(lb.refresh_grant(&token, SERVICE, "").status, 200);

    // Other subjects no principal can have.
    for (bad, hint) in [
        ("robot:x", "account, kubernetes, oidc, node or certificate"),
        ("alice bob", "account name"),
        ("", "empty"),
        ("oidc:", "empty"),
    ] {
        let out = revoke(&s.fleet, &["--subject", bad]);
        assert_command_refused(&out, &[hint], &format!("revoke --subject {bad:?}"));
    }
    // A kind that contradicts the subject's own.
    let out = revoke(&s.fleet, &["--subject", &sub, "--kind", "oidc"]);
    assert_command_refused(&out, &["kubernetes"], "--kind oidc on a kubernetes subject");

    revoke(&s.fleet, &["--subject", &sub, "--issuer", "cluster-a"])
        .assert_success("revoke --subject as the audit log prints it");
    refused_within("revoked subject", || lb.refresh_grant(&token, SERVICE, ""));
}

/// Before, `--jti` took the access token's jti from a password grant's
/// audit line (the refresh token's was logged nowhere) and reported success
/// while the refresh token kept working. Now the audit line carries
/// `refresh_jti`, revoking it works, and an access token's jti is refused
/// with the reason.
#[test]
fn revoke_jti_takes_the_refresh_jti_of_the_audit_line_and_refuses_an_access_tokens() {
    let s = setup(1, false);
    let lb = s.fleet.client();
    let reply = lb.password_grant("alice", "alice-pw", SERVICE, "", true);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let refresh = reply.json_str("refresh_token");
    let access_jti = audit_field(&s, "jti").expect("the audit line has jti");
    let refresh_jti = audit_field(&s, "refresh_jti").expect("the audit line has refresh_jti");
    assert_eq!(
        unverified_claims(&refresh)["jti"].as_str(),
        Some(refresh_jti.as_str()),
        "refresh_jti is the refresh token's own jti"
    );
    assert_ne!(access_jti, refresh_jti);

    let out = revoke(&s.fleet, &[&format!("--jti={access_jti}")]);
    assert_command_refused(
        &out,
        &["access token", "refresh_jti"],
        "revoke --jti <access token's jti>",
    );
    assert_eq!(lb.refresh_grant(&refresh, SERVICE, "").status, 200);

    revoke(&s.fleet, &[&format!("--jti={refresh_jti}")]).assert_success("revoke --jti refresh_jti");
    refused_within("revoked jti", || lb.refresh_grant(&refresh, SERVICE, ""));
    // The refresh grant's own audit line names the token it presented.
    let reply = lb.password_grant("alice", "alice-pw", SERVICE, "", true);
    let second = reply.json_str("refresh_token");
    assert_eq!(lb.refresh_grant(&second, SERVICE, "").status, 200);
    assert_eq!(
        audit_field(&s, "refresh_jti").as_deref(),
        unverified_claims(&second)["jti"].as_str()
    );
}

/// Before, `--issuer cluster-A` for the configured `cluster-a` exited 0 and
/// revoked nothing. Now `--issuer` must name a configured issuer, and the
/// error lists them.
#[test]
fn revoke_issuer_must_name_a_configured_issuer() {
    let s = setup(1, false);
    let lb = s.fleet.client();
    let sa = ServiceAccount::new("ci", "builder");
    let token = exchange(&lb, &s.cluster.service_account_token(&sa, AUDIENCE));
    let sub = audit_field(&s, "sub").expect("sub");
    for issuer in ["cluster-A", "cluster", "*", "-"] {
        let out = revoke(&s.fleet, &["--subject", &sub, "--issuer", issuer]);
        assert_command_refused(&out, &["cluster-a", "ci"], &format!("--issuer {issuer}"));
        let out = revoke(&s.fleet, &["--all-before", "now", "--issuer", issuer]);
        assert_command_refused(
            &out,
            &["cluster-a"],
            &format!("--all-before --issuer {issuer}"),
        );
    }
    // An issuer of the other kind, and an issuer for an account.
    let out = revoke(&s.fleet, &["--subject", &sub, "--issuer", "ci"]);
    assert_command_refused(&out, &["oidc"], "a kubernetes subject with an oidc issuer");
    let out = revoke(&s.fleet, &["--subject", "alice", "--issuer", "cluster-a"]);
    assert_command_refused(&out, &["no issuer"], "an account with --issuer");
    assert_eq!(lb.refresh_grant(&token, SERVICE, "").status, 200);
}

/// Mints an OIDC token at `ci` whose `sub` is `subject`.
fn oidc_token(ci: &OidcIssuer, subject: &str) -> String {
    let t = now();
    ci.mint(&serde_json::json!({
        "iss": ci.url(), "aud": AUDIENCE, "sub": subject,
        "iat": t, "nbf": t - 5, "exp": t + 300,
    }))
}

/// Before, a subject copied from the text audit log, where it is escaped
/// (`oidc:ev\"il\nx`), was stored as typed and matched nothing. Now the
/// escapes of both log formats are read back, with or without the quotes,
/// and input that is not a valid escaped form is refused.
#[test]
fn revoke_takes_subjects_exactly_as_either_log_format_prints_them() {
    for json in [false, true] {
        let s = setup(1, json);
        let lb = s.fleet.client();
        let evil = "ev\"il\nx\\y\u{1b}z";
        let token = exchange(&lb, &oidc_token(&s.ci, evil));
        let printed = if json {
            // The JSON line's string, as it appears between its quotes.
            let value = audit_field(&s, "sub").expect("sub");
            assert_eq!(value, format!("oidc:{evil}"));
            let encoded = serde_json::to_string(&value).expect("encode");
            encoded[1..encoded.len() - 1].to_owned()
        } else {
            audit_text_as_printed(&s, "sub")
        };
        assert!(
            printed.contains("\\\""),
            "the log escapes the subject: {printed}"
        );
        // Not a valid escaped form: refused, saying how to write it.
        let out = revoke(&s.fleet, &["--subject", "oidc:ev\\qil"]);
        assert_command_refused(&out, &["\\\\"], "an unknown escape");
        assert_eq!(lb.refresh_grant(&token, SERVICE, "").status, 200);

        let quoted = format!("\"{printed}\"");
        let input = if json { &quoted } else { &printed };
        revoke(&s.fleet, &["--subject", input, "--issuer", "ci"])
            .assert_success("revoke --subject as printed");
        refused_within(
            &format!(
                "subject copied from the {} log",
                if json { "JSON" } else { "text" }
            ),
            || lb.refresh_grant(&token, SERVICE, ""),
        );
        let listed = revoke(&s.fleet, &["--list"]);
        listed.assert_success("revoke --list");
        // As the text log writes it (Rust's escaping), control characters too.
        let escaped = format!("{:?}", format!("oidc:{evil}"));
        assert!(
            listed.stdout.contains(&escaped) && !listed.stdout.contains('\u{1b}'),
            "--list shows the subject escaped as the text log does ({escaped}): {}",
            listed.stdout
        );
    }
}

/// Before, `--for 2s` on a token with an hour left was accepted, and the
/// token worked again 3 s later. Now `--for` shorter than the longest
/// lifetime of what it revokes is refused, naming that lifetime; longer is
/// kept.
#[test]
fn revoke_for_cannot_end_before_what_it_revokes_expires() {
    let s = setup(1, false);
    let lb = s.fleet.client();
    let reply = lb.password_grant("alice", "alice-pw", SERVICE, "", true);
    let refresh = reply.json_str("refresh_token");
    let jti = unverified_claims(&refresh)["jti"]
        .as_str()
        .expect("jti")
        .to_owned();
    let out = revoke(&s.fleet, &[&format!("--jti={jti}"), "--for", "2s"]);
    assert_command_refused(&out, &["1h"], "--for 2s on a 1h token");
    let out = revoke(&s.fleet, &["--subject", "alice", "--for", "59m"]);
    assert_command_refused(&out, &["1h"], "--for 59m on a 1h lifetime");
    assert_eq!(lb.refresh_grant(&refresh, SERVICE, "").status, 200);

    let out = revoke(&s.fleet, &[&format!("--jti={jti}"), "--for", "2h"]);
    out.assert_success("--for 2h");
    assert!(out.stdout.contains("2h"), "{}", out.stdout);
    refused_within("right after", || lb.refresh_grant(&refresh, SERVICE, ""));
    std::thread::sleep(Duration::from_secs(3));
    assert_refused(&lb.refresh_grant(&refresh, SERVICE, ""), "3 s later");
}

/// `--list` says, for each entry, what it refuses.
#[test]
fn revoke_list_shows_what_each_entry_matches() {
    let s = setup(1, false);
    let reply = s
        .fleet
        .client()
        .password_grant("alice", "alice-pw", SERVICE, "", true);
    let jti = unverified_claims(&reply.json_str("refresh_token"))["jti"]
        .as_str()
        .expect("jti")
        .to_owned();
    revoke(&s.fleet, &[&format!("--jti={jti}")]).assert_success("jti");
    revoke(&s.fleet, &["--subject", "alice"]).assert_success("subject");
    revoke(
        &s.fleet,
        &[
            "--subject",
            "kubernetes:system:serviceaccount:ci:builder",
            "--issuer",
            "cluster-a",
        ],
    )
    .assert_success("service account");
    revoke(&s.fleet, &["--all-before", "now", "--kind", "node"]).assert_success("before");
    let out = revoke(&s.fleet, &["--list"]);
    out.assert_success("--list");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    let expect = [
        (jti.as_str(), "the refresh token"),
        ("\"alice\"", "account"),
        (
            "kubernetes:system:serviceaccount:ci:builder",
            "issued by cluster-a",
        ),
        ("node", "issued at or before"),
    ];
    for (key, says) in expect {
        assert!(
            lines.iter().any(|l| l.contains(key) && l.contains(says)),
            "no line names {key:?} with {says:?}: {}",
            out.stdout
        );
    }
    for line in &lines {
        assert!(
            line.contains("refuses") && line.contains("expires in"),
            "each line says what it refuses and until when: {line}"
        );
    }
}

/// The revoke examples in the README's "Revocation" section, run as
/// written against a fleet of three (with `server.yaml` its config, and a
/// real refresh token's jti and a real service account), do what the README
/// says: every command exits 0, and what each revokes is refused on every
/// replica.
#[test]
fn the_readme_revocation_examples_run_as_written() {
    let s = setup(3, false);
    let lb = s.fleet.client();
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("read README");
    let section = readme
        .split("\n### Revocation\n")
        .nth(1)
        .expect("README has ### Revocation");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the section starts with a sh block");
    let examples: Vec<&str> = block
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| l.starts_with("regauth-token-server revoke"))
        .collect();
    assert!(examples.len() >= 6, "{block}");

    let refresh = |user: &str, password: &str| {
        let reply = lb.password_grant(user, password, SERVICE, "", true);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json_str("refresh_token")
    };
    let sa = ServiceAccount::new("ci", "builder");
    let sa_token = s.cluster.service_account_token(&sa, AUDIENCE);
    let sa_refresh = exchange(&lb, &sa_token);
    for example in examples {
        // Bob's token stands for "a refresh token"; alice is the subject.
        let token = if example.contains("--subject alice") && !example.contains("--lift") {
            refresh("alice", "alice-pw")
        } else {
            refresh("bob", "bob-pw")
        };
        let jti = unverified_claims(&token)["jti"]
            .as_str()
            .expect("jti")
            .to_owned();
        let args: Vec<String> = example
            .split_whitespace()
            .skip(1)
            .map(|a| match a {
                "server.yaml" => s.fleet.first.config_path().display().to_string(),
                "JTI" => jti.clone(),
                a => a.to_owned(),
            })
            .collect();
        let mut cmd = std::process::Command::new(regauth_e2e::bins::token_server_bin());
        cmd.args(&args);
        let out = regauth_e2e::process::run(cmd, Duration::from_secs(30));
        out.assert_success(example);
        let replicas = s.fleet.replicas();
        let check = |what: &str, request: &dyn Fn() -> HttpReply| {
            refused_within(&format!("{example}: {what}"), request);
        };
        if example.contains("--lift") {
            for r in &replicas {
                assert_eq!(
                    r.password_grant("alice", "alice-pw", SERVICE, "", false)
                        .status,
                    200,
                    "{example}: alice signs in again"
                );
            }
        } else if example.contains("--jti") {
            for r in &replicas {
                check("the token", &|| r.refresh_grant(&token, SERVICE, ""));
            }
        } else if example.contains("--subject alice") {
            for r in &replicas {
                check("alice's token", &|| r.refresh_grant(&token, SERVICE, ""));
                check("alice's sign-in", &|| {
                    r.password_grant("alice", "alice-pw", SERVICE, "", false)
                });
            }
        } else if example.contains("--subject kubernetes:") {
            for r in &replicas {
                check("the service account's token", &|| {
                    r.refresh_grant(&sa_refresh, SERVICE, "")
                });
                check("the service account's exchange", &|| {
                    ExchangeRequest::jwt(&sa_token, SERVICE).send(r)
                });
            }
        } else if example.contains("--all-before now") {
            for r in &replicas {
                check("a token issued before", &|| {
                    r.refresh_grant(&token, SERVICE, "")
                });
            }
        } else if example.contains("--list") {
            assert!(
                !out.stdout.is_empty(),
                "{example} lists: {}",
                out.describe()
            );
        }
    }
}

/// Before, removing an OIDC issuer from the config and reloading left the
/// refresh tokens minted from its tokens working (GET and POST, 200) until
/// they expired: accounts were re-checked, other principals were not. Now
/// the next request after the reload refuses them; tokens of issuers that
/// stay keep working.
#[test]
fn refresh_tokens_of_a_removed_issuer_are_refused_from_the_next_request() {
    use regauth_e2e::ops::{Reload, edit_config, reload};
    let ci = OidcIssuer::start();
    let cluster = OidcIssuer::start();
    let d = tempfile::tempdir().expect("temp dir");
    let server = regauth_e2e::token_server::TokenServerBuilder::new()
        .policy(POLICY)
        .extra_config(&issuers_yaml(&[
            IssuerConfig::kubernetes("cluster-a", &cluster.url()),
            IssuerConfig::oidc("ci", &ci.url()),
        ]))
        .start(d.path());
    let client = server.client();
    let from_ci = exchange(client, &oidc_token(&ci, "repo:org/app"));
    let sa = ServiceAccount::new("ci", "builder");
    let from_cluster = exchange(client, &cluster.service_account_token(&sa, AUDIENCE));
    let get = |token: &str| {
        client
            .get_token(&[("service", SERVICE)], Some(("x", token)))
            .status
    };
    assert_eq!(get(&from_ci), 200, "control: GET");
    assert_eq!(
        client.refresh_grant(&from_ci, SERVICE, "").status,
        200,
        "control: POST"
    );

    edit_config(&server, |text| {
        let start = text.find("  - name: \"ci\"").expect("the ci entry");
        let end = text[start + 1..]
            .find("  - name:")
            .map_or(text.len(), |i| start + 1 + i);
        format!("{}{}", &text[..start], &text[end..])
    });
    assert_eq!(reload(&server), Reload::Applied);
    assert_eq!(get(&from_ci), 401, "GET with a removed issuer's token");
    assert_refused(
        &client.refresh_grant(&from_ci, SERVICE, ""),
        "POST with a removed issuer's token",
    );
    assert_eq!(get(&from_cluster), 200, "an issuer that stays");
}

/// Before, an entry's lifetime came from the config the command was given,
/// not from what had been issued: with `refresh_token_ttl` lowered from 1 h
/// to 3 s and reloaded, `revoke --subject alice` lasted 3 s, and her token
/// minted under 1 h was accepted again afterwards. Now every replica tells
/// Redis until when the refresh tokens it has issued may live, and an
/// entry lasts at least until then.
#[test]
fn a_revocation_outlives_tokens_minted_under_a_longer_lifetime_than_the_config_now_has() {
    use regauth_e2e::ops::{Reload, edit_config, reload};
    let s = setup(1, false);
    let server = &s.fleet.first;
    let client = server.client();
    let token = client
        .password_grant("alice", "alice-pw", SERVICE, "", true)
        .json_str("refresh_token");
    let claims = unverified_claims(&token);
    let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert!(lifetime >= 3000, "control: minted for 1 h ({lifetime} s)");
    edit_config(server, |t| {
        t.replace("refresh_token_ttl: 1h", "refresh_token_ttl: 3s")
    });
    assert_eq!(reload(server), Reload::Applied);
    let short = client
        .password_grant("alice", "alice-pw", SERVICE, "", true)
        .json_str("refresh_token");
    let claims = unverified_claims(&short);
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        3,
        "control: the reload lowered the lifetime"
    );
    let out = revoke(&s.fleet, &["--subject", "alice"]);
    out.assert_success("revoke alice");
    refused_within("alice's 1 h token", || {
        client.refresh_grant(&token, SERVICE, "")
    });
    std::thread::sleep(Duration::from_secs(5));
    let list = revoke(&s.fleet, &["--list"]);
    assert_refused(
        &client.refresh_grant(&token, SERVICE, ""),
        &format!(
            "5 s later, a token with {lifetime} s of life; revoke said {:?}; --list: {:?}",
            out.stdout.trim(),
            list.stdout.trim()
        ),
    );
    assert!(
        list.stdout.contains("expires in 59m") || list.stdout.contains("expires in 1h"),
        "the entry lasts as long as the 1 h token: {}",
        list.stdout
    );
}

/// Before, only the issuer's config *name* was compared on a refresh: an
/// issuer replaced by another identity provider under the same name kept
/// the old provider's refresh tokens working. Now a refresh token carries
/// the `iss` of the issuer that vouched for it, and the current config must
/// still trust that issuer, by name, kind and `iss`.
#[test]
fn refresh_tokens_of_an_issuer_replaced_under_the_same_name_are_refused() {
    use regauth_e2e::ops::{Reload, edit_config, reload};
    let (old_ci, new_ci) = (OidcIssuer::start(), OidcIssuer::start());
    let (old_cluster, new_cluster) = (OidcIssuer::start(), OidcIssuer::start());
    let kept = OidcIssuer::start();
    let d = tempfile::tempdir().expect("temp dir");
    let server = regauth_e2e::token_server::TokenServerBuilder::new()
        .policy(POLICY)
        .extra_config(&issuers_yaml(&[
            IssuerConfig::oidc("ci", &old_ci.url()),
            IssuerConfig::kubernetes("cluster-a", &old_cluster.url()),
            IssuerConfig::kubernetes("cluster-b", &kept.url()),
        ]))
        .start(d.path());
    let client = server.client();
    let sa = ServiceAccount::new("ci", "builder");
    let from_ci = exchange(client, &oidc_token(&old_ci, "repo:org/app"));
    let from_cluster = exchange(client, &old_cluster.service_account_token(&sa, AUDIENCE));
    let from_kept = exchange(client, &kept.service_account_token(&sa, AUDIENCE));
    let get = |token: &str| {
        client
            .get_token(&[("service", SERVICE)], Some(("x", token)))
            .status
    };
    for token in [&from_ci, &from_cluster, &from_kept] {
        assert_eq!(get(token), 200, "control: GET");
        assert_eq!(
            client.refresh_grant(token, SERVICE, "").status,
            200,
            "control: POST"
        );
    }

    edit_config(&server, |text| {
        text.replace(&old_ci.url(), &new_ci.url())
            .replace(&old_cluster.url(), &new_cluster.url())
    });
    assert_eq!(reload(&server), Reload::Applied);
    let again = ExchangeRequest::jwt(&oidc_token(&old_ci, "repo:org/app"), SERVICE).send(client);
    assert_ne!(
        again.status, 200,
        "control: the old provider is no longer trusted"
    );
    assert_eq!(
        ExchangeRequest::jwt(&oidc_token(&new_ci, "repo:org/app"), SERVICE)
            .send(client)
            .status,
        200,
        "control: the new provider is"
    );
    for (what, token) in [("ci", &from_ci), ("cluster-a", &from_cluster)] {
        assert_eq!(get(token), 401, "GET with the replaced {what}'s token");
        assert_refused(
            &client.refresh_grant(token, SERVICE, ""),
            &format!("POST with the replaced {what}'s token"),
        );
    }
    assert_eq!(get(&from_kept), 200, "an issuer left as it was");
}

/// Before, `revoke --lift` with another scope than the entry's (lifting
/// without `--issuer` an entry made with one, or with `--issuer` one made
/// without) printed "was not revoked" and exited 0 while the subject stayed
/// refused. Now a lift takes every entry within the scope named (all
/// issuers when none is given), and fails, naming them, when entries of a
/// wider scope still refuse what was named.
#[test]
fn revoke_lift_lifts_what_was_meant_or_fails_naming_what_still_refuses() {
    let s = setup(2, false);
    let sa = ServiceAccount::new("ci", "builder");
    let sa_token = s.cluster.service_account_token(&sa, AUDIENCE);
    let subject = "kubernetes:system:serviceaccount:ci:builder";
    let replicas = s.fleet.replicas();
    let exchanges = || {
        replicas
            .iter()
            .map(|r| ExchangeRequest::jwt(&sa_token, SERVICE).send(r).status)
            .collect::<Vec<u16>>()
    };
    let wait_exchanges = |what: &str| {
        let start = Instant::now();
        while exchanges().iter().any(|s| *s != 200) {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{what}: the exchange is still refused: {:?}",
                exchanges()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(exchanges(), [200, 200], "control: the exchange works");

    // Made with --issuer, lifted without it: lifted.
    revoke(&s.fleet, &["--subject", subject, "--issuer", "cluster-a"]).assert_success("revoke");
    for r in &replicas {
        refused_within("revoked with --issuer", || {
            ExchangeRequest::jwt(&sa_token, SERVICE).send(r)
        });
    }
    let out = revoke(&s.fleet, &["--lift", "--subject", subject]);
    out.assert_success("lift without --issuer");
    assert!(
        out.stdout.contains("lifted") && out.stdout.contains("cluster-a"),
        "says what it lifted: {}",
        out.stdout
    );
    wait_exchanges("lifted without --issuer");

    // Made without --issuer, lifted with it: refused, naming the entry.
    revoke(&s.fleet, &["--subject", subject]).assert_success("revoke without --issuer");
    for r in &replicas {
        refused_within("revoked without --issuer", || {
            ExchangeRequest::jwt(&sa_token, SERVICE).send(r)
        });
    }
    let out = revoke(
        &s.fleet,
        &["--lift", "--subject", subject, "--issuer", "cluster-a"],
    );
    assert!(
        !out.success(),
        "lifting with --issuer an entry for any issuer must fail: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains(subject) && out.stderr.contains("any issuer"),
        "names the entry that still refuses it: {}",
        out.stderr
    );
    assert!(
        exchanges().iter().all(|s| *s != 200),
        "and it is indeed still refused"
    );
    revoke(&s.fleet, &["--lift", "--subject", subject]).assert_success("lift it as named");
    wait_exchanges("lifted as named");
    let out = revoke(&s.fleet, &["--lift", "--subject", subject]);
    out.assert_success("nothing left to lift");
    assert!(out.stdout.contains("was not revoked"), "{}", out.stdout);

    // The same for --all-before: a cut-off of every kind outlives a lift of
    // one kind.
    revoke(&s.fleet, &["--all-before", "now"]).assert_success("all before");
    let out = revoke(
        &s.fleet,
        &["--lift", "--all-before", "now", "--kind", "node"],
    );
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("any kind"),
        "names the wider cut-off: {}",
        out.stderr
    );
    let out = revoke(&s.fleet, &["--lift", "--all-before", "now"]);
    out.assert_success("lift the cut-off");
    assert!(out.stdout.contains("lifted"), "{}", out.stdout);
    let list = revoke(&s.fleet, &["--list"]);
    assert!(
        list.stdout.trim().is_empty(),
        "nothing left: {}",
        list.stdout
    );
}

/// `--all-before now` refuses every refresh token issued before it, even
/// one minted by a replica whose wall clock runs 30 s ahead (debug builds
/// shift their clock by `REGAUTH_TEST_CLOCK_OFFSET` seconds). Before, the
/// cut-off was the command's clock and `iat` the minting replica's, so that
/// token stayed valid. Now refresh tokens are stamped and checked in the
/// fleet's clock (Redis's, as each replica measures it), and the cut-off
/// is Redis's time too; a replica's own tokens are also accepted by the
/// others at once.
#[test]
fn revoke_all_before_now_covers_tokens_from_a_replica_whose_clock_runs_ahead() {
    use regauth_e2e::redis::Redis;
    use regauth_e2e::token_server::TokenServerBuilder;
    let d = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(d.path());
    let plain = TokenServerBuilder::new()
        .account("alice", "alice-pw", &[])
        .extra_config(&format!("shared_state: {}\n", redis.url()))
        .start(d.path());
    let ahead = regauth_e2e::fleet::replica_of(&plain, 1, &[("REGAUTH_TEST_CLOCK_OFFSET", "30")]);
    let grant = |c: &TokenClient| {
        let reply = c.password_grant("alice", "alice-pw", SERVICE, "", true);
        assert_eq!(reply.status, 200, "{}", reply.body);
        (
            reply.json_str("access_token"),
            reply.json_str("refresh_token"),
        )
    };
    let iat = |t: &str| unverified_claims(t)["iat"].as_i64().expect("iat");
    let (access_plain, from_plain) = grant(plain.client());
    let (access_ahead, from_ahead) = grant(ahead.client());
    let skew = iat(&access_ahead) - iat(&access_plain);
    assert!(
        (25..=35).contains(&skew),
        "control: the replica's clock runs ahead by {skew} s"
    );
    for (c, t) in [(plain.client(), &from_plain), (ahead.client(), &from_ahead)] {
        assert_eq!(
            c.refresh_grant(t, SERVICE, "").status,
            200,
            "control: each replica takes its own token"
        );
    }
    std::thread::sleep(Duration::from_millis(1100));
    let mut cmd = std::process::Command::new(regauth_e2e::bins::token_server_bin());
    cmd.args(["revoke", "--all-before", "now", "--config"])
        .arg(plain.config_path());
    regauth_e2e::process::run(cmd, Duration::from_secs(30)).assert_success("--all-before now");
    refused_within("the replica whose clock runs ahead, its own token", || {
        ahead.client().refresh_grant(&from_ahead, SERVICE, "")
    });
    for (name, c) in [("right", plain.client()), ("ahead", ahead.client())] {
        for (which, t) in [("right", &from_plain), ("ahead", &from_ahead)] {
            refused_within(
                &format!("the replica with the {name} clock, the token from the {which} one"),
                || c.refresh_grant(t, SERVICE, ""),
            );
        }
    }
    // The cut-off covers its whole second.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, after) = grant(ahead.client());
    for c in [plain.client(), ahead.client()] {
        assert_eq!(
            c.refresh_grant(&after, SERVICE, "").status,
            200,
            "a token issued after the cut-off works on both replicas"
        );
    }
}
