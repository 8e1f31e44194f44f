//! What `revoke` takes, checked against the config before anything is
//! written, so that a revocation that could match nothing is refused with
//! the form it expects instead of reported done:
//! - a subject exactly as the audit log prints its `sub`, in either log
//!   format, quoted or not: an account name, or `KIND:NAME`;
//! - a refresh token's jti as the audit log prints its `refresh_jti`;
//! - an issuer named in the config, of the subject's kind;
//! - a duration no shorter than the longest lifetime of what it revokes.

use std::time::{Duration, SystemTime};

use crate::identity::Kind;
use crate::settings::Settings;
use crate::shared::revocation::Target;
use crate::token::refresh::REFRESH_JTI_PREFIX;

/// Why `revoke`'s input was refused. Each message says what form it wants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// An empty subject, or an empty name after its kind.
    #[error("the subject is empty{0}")]
    EmptySubject(&'static str),
    /// A prefix that is no kind.
    #[error(
        "unknown kind {0:?} in the subject: a subject is an account name (no colon) or starts with kubernetes:, oidc:, node: or certificate: (kinds account, kubernetes, oidc, node or certificate), as the audit log's sub prints it"
    )]
    UnknownKind(String),
    /// A service-account subject not in the form the server issues.
    #[error(
        "a kubernetes subject is kubernetes:system:serviceaccount:NAMESPACE:NAME, as the audit log's sub prints it; {0:?} names no service account"
    )]
    ServiceAccount(String),
    /// Not an account name.
    #[error(
        "{0:?} is not an account name: account names are 1 to 128 letters, digits, '.', '_', '-' or '@' (other subjects start with their kind, like kubernetes: or oidc:)"
    )]
    AccountName(String),
    /// An account the config does not have.
    #[error(
        "{0:?} is no account of this config (accounts and htpasswd_files): no credential of it can exist"
    )]
    UnknownAccount(String),
    /// A backslash that starts no escape the audit log writes.
    #[error(
        "invalid escape {0:?} in the subject: backslashes start escapes as the audit log writes them (\\\\ for a backslash, \\\" for a quote, \\n, \\r, \\t, \\0, \\u{{…}} or \\uXXXX); copy the sub as the log prints it"
    )]
    Escape(String),
    /// `--kind` says otherwise than the subject.
    #[error("--kind {given} contradicts the subject, whose kind is {subject}")]
    KindContradicts {
        /// The kind given.
        given: &'static str,
        /// The subject's own.
        subject: &'static str,
    },
    /// `--issuer` names no configured issuer.
    #[error("--issuer {given:?} is not a configured issuer; the issuers are {known}")]
    UnknownIssuer {
        /// The name given.
        given: String,
        /// The configured names.
        known: String,
    },
    /// `--issuer` of the other kind.
    #[error("--issuer {issuer} is a {issuer_kind} issuer, but the subject is {subject}")]
    IssuerKind {
        /// The issuer.
        issuer: String,
        /// Its kind.
        issuer_kind: &'static str,
        /// The subject's kind.
        subject: &'static str,
    },
    /// `--issuer` for a kind no issuer vouches for.
    #[error(
        "{0} subjects have no issuer: --issuer applies to kubernetes and oidc subjects, which an issuers entry vouches for"
    )]
    NoIssuer(&'static str),
    /// `--jti` that is no refresh token's.
    #[error(
        "{0:?} is not a refresh token's jti: refresh tokens' jtis start with {REFRESH_JTI_PREFIX} and the audit log prints them as refresh_jti. The audit log's jti is the access token's, and an access token cannot be revoked (registries verify it offline; it expires within access_token_ttl). To revoke a refresh token issued before refresh_jti was logged, revoke its subject or use --all-before"
    )]
    NotRefreshJti(String),
    /// `--for` shorter than what it revokes lives.
    #[error(
        "--for {given} is shorter than {needed}, the longest lifetime of the refresh tokens it revokes: a revocation cannot end before them"
    )]
    TooShort {
        /// The duration given.
        given: String,
        /// The lifetime it must cover.
        needed: String,
    },
    /// `--all-before` not a time.
    #[error("--all-before takes an RFC 3339 time such as 2026-12-01T10:00:00Z, or now")]
    Time,
    /// `--all-before` a time to come: it would refuse tokens not yet issued.
    #[error(
        "--all-before {0} is in the future: it would refuse tokens not issued yet; use now, or a time already past"
    )]
    FutureTime(String),
    /// `--for` longer than an entry can be kept.
    #[error("--for {0} is longer than an entry can be kept (at most 100 years)")]
    TooLong(String),
}

pub use crate::shared::revocation::MAX_ENTRY;

/// Clock skew allowed for `--all-before` a moment ahead of this machine.
const FUTURE_SKEW: Duration = Duration::from_secs(60);

/// What to revoke (or lift), and the least time it must stay in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What the entry applies to.
    pub target: Target,
    /// The longest lifetime of the refresh tokens it can revoke.
    pub lifetime: Duration,
}

/// The command line's input, as given.
#[derive(Debug, Clone, Copy, Default)]
pub struct Input<'a> {
    /// `--subject`.
    pub subject: Option<&'a str>,
    /// `--jti`.
    pub jti: Option<&'a str>,
    /// `--all-before`.
    pub all_before: Option<&'a str>,
    /// `--kind`.
    pub kind: Option<Kind>,
    /// `--issuer`.
    pub issuer: Option<&'a str>,
    /// `--lift`: an entry may outlive what it named (an account removed
    /// since), and can still be lifted; a kind or issuer left out means
    /// any.
    pub lift: bool,
}

/// Checks `input` against `settings`; `None` when it names nothing (a
/// listing).
pub fn plan(
    settings: &Settings,
    input: Input<'_>,
    now: SystemTime,
) -> Result<Option<Plan>, InputError> {
    let issuer = input
        .issuer
        .map(|name| configured_issuer(settings, name))
        .transpose()?;
    let target = if let Some(text) = input.subject {
        let (subject, kind) = subject(text)?;
        if let Some(given) = input.kind
            && given != kind
        {
            return Err(InputError::KindContradicts {
                given: given.as_str(),
                subject: kind.as_str(),
            });
        }
        if kind == Kind::Account && !input.lift && !settings.accounts.contains(&subject) {
            return Err(InputError::UnknownAccount(subject));
        }
        if let Some((name, issuer_kind)) = &issuer {
            if !matches!(kind, Kind::Kubernetes | Kind::Oidc) {
                return Err(InputError::NoIssuer(kind.as_str()));
            }
            if *issuer_kind != kind {
                return Err(InputError::IssuerKind {
                    issuer: name.clone(),
                    issuer_kind: issuer_kind.as_str(),
                    subject: kind.as_str(),
                });
            }
        }
        Target::Subject {
            subject,
            // A lift without --kind reaches every kind; the subject names
            // its own anyway.
            kind: if input.lift { input.kind } else { Some(kind) },
            issuer: issuer.map(|(name, _)| name),
        }
    } else if let Some(jti) = input.jti {
        if !jti.starts_with(REFRESH_JTI_PREFIX) || jti.len() == REFRESH_JTI_PREFIX.len() {
            return Err(InputError::NotRefreshJti(jti.to_owned()));
        }
        Target::Jti {
            jti: jti.to_owned(),
        }
    } else if let Some(time) = input.all_before {
        let before = if time == "now" {
            now
        } else {
            humantime::parse_rfc3339_weak(time).map_err(|_| InputError::Time)?
        };
        if before > now + FUTURE_SKEW {
            return Err(InputError::FutureTime(time.to_owned()));
        }
        if let (Some(kind), Some((name, issuer_kind))) = (input.kind, &issuer)
            && kind != *issuer_kind
        {
            return Err(InputError::IssuerKind {
                issuer: name.clone(),
                issuer_kind: issuer_kind.as_str(),
                subject: kind.as_str(),
            });
        }
        Target::IssuedBefore {
            before: crate::clock::unix(before),
            kind: input.kind,
            issuer: issuer.map(|(name, _)| name),
        }
    } else {
        return Ok(None);
    };
    let lifetime = lifetime(settings, &target).min(MAX_ENTRY);
    Ok(Some(Plan { target, lifetime }))
}

/// Checks `--for` against what the plan revokes.
pub fn duration(plan: &Plan, given: Option<Duration>) -> Result<Duration, InputError> {
    match given {
        Some(d) if d > MAX_ENTRY => Err(InputError::TooLong(
            humantime::format_duration(d).to_string(),
        )),
        None => Ok(plan.lifetime),
        Some(d) if d >= plan.lifetime => Ok(d),
        Some(d) => Err(InputError::TooShort {
            given: humantime::format_duration(d).to_string(),
            needed: humantime::format_duration(plan.lifetime).to_string(),
        }),
    }
}

fn configured_issuer(settings: &Settings, name: &str) -> Result<(String, Kind), InputError> {
    let all = settings.issuers.all();
    all.iter()
        .find(|i| i.name == name)
        .map(|i| (i.name.clone(), i.kind.principal_kind()))
        .ok_or_else(|| InputError::UnknownIssuer {
            given: name.to_owned(),
            known: if all.is_empty() {
                "none (the config has no issuers)".to_owned()
            } else {
                all.iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// The longest a refresh token that `target` can revoke lives: accounts'
/// and certificates' live `refresh_token_ttl`, an issuer's principals its
/// `credential_ttl`; a jti or an unscoped target, the longest of all.
fn lifetime(settings: &Settings, target: &Target) -> Duration {
    let (kind, issuer) = match target {
        Target::Jti { .. } => (None, None),
        Target::Subject { kind, issuer, .. } | Target::IssuedBefore { kind, issuer, .. } => {
            (*kind, issuer.as_deref())
        }
    };
    let issuers = settings.issuers.all().iter().filter(|i| {
        issuer.is_none_or(|name| i.name == name)
            && kind.is_none_or(|k| i.kind.principal_kind() == k)
    });
    let from_issuers = issuers.map(|i| i.credential_ttl).max();
    match kind {
        Some(Kind::Kubernetes | Kind::Oidc) => from_issuers.unwrap_or(settings.refresh_token_ttl),
        Some(_) => settings.refresh_token_ttl,
        None if issuer.is_some() => from_issuers.unwrap_or(settings.refresh_token_ttl),
        None => from_issuers.map_or(settings.refresh_token_ttl, |d| {
            d.max(settings.refresh_token_ttl)
        }),
    }
}

/// A subject as the audit log prints its `sub`, with or without the
/// quotes of the text format, escapes of either format read back; and the
/// kind it names.
pub fn subject(text: &str) -> Result<(String, Kind), InputError> {
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let subject = unescape(inner)?;
    if subject.is_empty() {
        return Err(InputError::EmptySubject(""));
    }
    let Some((prefix, name)) = subject.split_once(':') else {
        let valid = subject.len() <= 128
            && subject
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        return if valid {
            Ok((subject, Kind::Account))
        } else {
            Err(InputError::AccountName(subject))
        };
    };
    let kind = match prefix {
        "kubernetes" => Kind::Kubernetes,
        "oidc" => Kind::Oidc,
        "node" => Kind::Node,
        "certificate" => Kind::Certificate,
        other => return Err(InputError::UnknownKind(other.to_owned())),
    };
    if name.is_empty() {
        return Err(InputError::EmptySubject(" after its kind"));
    }
    if kind == Kind::Kubernetes {
        let parts: Vec<&str> = name.split(':').collect();
        let valid = matches!(
            parts.as_slice(),
            ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty()
        );
        if !valid {
            return Err(InputError::ServiceAccount(subject));
        }
    }
    Ok((subject, kind))
}

/// Reads back the escapes the audit log writes: Rust's (`\u{1b}`, text
/// format) and JSON's (`\u001b`, `\/`, `\b`, `\f`, JSON format). Any other
/// backslash is refused: it cannot have come from the log.
pub fn unescape(text: &str) -> Result<String, InputError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let bad = |rest: &str| InputError::Escape(format!("\\{rest}"));
        let Some(e) = chars.next() else {
            return Err(bad(""));
        };
        match e {
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            '/' => out.push('/'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'u' if chars.peek() == Some(&'{') => {
                chars.next();
                let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let decoded = (hex.len() <= 6)
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .and_then(char::from_u32)
                    .ok_or_else(|| bad(&format!("u{{{hex}}}")))?;
                out.push(decoded);
            }
            'u' => {
                let unit = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
                    let hex: String = chars.by_ref().take(4).collect();
                    (hex.len() == 4)
                        .then(|| u16::from_str_radix(&hex, 16).ok())
                        .flatten()
                        .ok_or_else(|| bad(&format!("u{hex}")))
                };
                let first = unit(&mut chars)?;
                let decoded = if (0xD800..0xDC00).contains(&first) {
                    // A JSON surrogate pair: \uD83D\uDE00.
                    if chars.next() != Some('\\') || chars.next() != Some('u') {
                        return Err(bad(&format!("u{first:04x}")));
                    }
                    let second = unit(&mut chars)?;
                    char::decode_utf16([first, second])
                        .next()
                        .and_then(Result::ok)
                } else {
                    char::from_u32(u32::from(first))
                };
                out.push(decoded.ok_or_else(|| bad(&format!("u{first:04x}")))?);
            }
            other => return Err(bad(&other.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_read_back_from_either_log_format() {
        let evil = "oidc:ev\"il\nx\\y\u{1b}z\u{1F600}";
        let text_log = format!("{evil:?}");
        let json_log = serde_json::to_string(evil).unwrap();
        for printed in [
            text_log.clone(),
            text_log[1..text_log.len() - 1].to_owned(),
            json_log.clone(),
            json_log[1..json_log.len() - 1].to_owned(),
            "\"oidc:ev\\\"il\\nx\\\\y\\u001bz\\ud83d\\ude00\"".to_owned(),
        ] {
            assert_eq!(
                subject(&printed),
                Ok((evil.to_owned(), Kind::Oidc)),
                "{printed}"
            );
        }
        assert_eq!(
            subject("kubernetes:system:serviceaccount:ci:builder"),
            Ok((
                "kubernetes:system:serviceaccount:ci:builder".to_owned(),
                Kind::Kubernetes
            ))
        );
        assert_eq!(subject("alice"), Ok(("alice".to_owned(), Kind::Account)));
        assert_eq!(subject("node:n1"), Ok(("node:n1".to_owned(), Kind::Node)));
    }

    #[test]
    fn subjects_no_principal_can_have_are_refused_with_the_form() {
        for (input, want) in [
            (
                "kubernetes:ci:builder",
                InputError::ServiceAccount("kubernetes:ci:builder".into()),
            ),
            (
                "kubernetes:system:serviceaccount:ci",
                InputError::ServiceAccount("kubernetes:system:serviceaccount:ci".into()),
            ),
            ("robot:x", InputError::UnknownKind("robot".into())),
            ("alice bob", InputError::AccountName("alice bob".into())),
            ("", InputError::EmptySubject("")),
            ("\"\"", InputError::EmptySubject("")),
            ("oidc:", InputError::EmptySubject(" after its kind")),
            ("oidc:a\\qb", InputError::Escape("\\q".into())),
            ("oidc:a\\", InputError::Escape("\\".into())),
            ("oidc:\\u{110000}", InputError::Escape("\\u{110000}".into())),
            ("oidc:\\ud83dx", InputError::Escape("\\ud83d".into())),
            ("oidc:\\u12", InputError::Escape("\\u12".into())),
        ] {
            assert_eq!(subject(input), Err(want), "{input:?}");
        }
        let message = InputError::Escape("\\q".into()).to_string();
        assert!(message.contains("\\\\ for a backslash"), "{message}");
    }

    /// A config with account alice (refresh tokens 1h), a Kubernetes issuer
    /// `cluster-a` (credentials 2h) and an OIDC issuer `ci` (30m).
    fn settings() -> (tempfile::TempDir, Settings) {
        let dir = tempfile::tempdir().unwrap();
        let g =
            crate::keys::generate(crate::keys::Algorithm::Es256, "t", crate::clock::now()).unwrap();
        std::fs::write(dir.path().join("k.pem"), g.key_pem).unwrap();
        std::fs::write(dir.path().join("c.pem"), g.cert_pem).unwrap();
        std::fs::write(dir.path().join("secret"), [9u8; 32]).unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        let text = format!(
            "issuer: t\nservices: [r]\nsigning_keys: [{{key: k.pem, cert: c.pem}}]\n\
             refresh_secret_file: secret\nrefresh_token_ttl: 1h\n\
             accounts: [{{name: alice, password_hash: \"{hash}\"}}]\n\
             issuers:\n\
             \x20 - {{name: cluster-a, kind: kubernetes, issuer: https://a.example, audiences: [r], credential_ttl: 2h, jwks_uri: https://a.example/k}}\n\
             \x20 - {{name: ci, kind: oidc, issuer: https://ci.example, audiences: [r], credential_ttl: 30m, jwks_uri: https://ci.example/k}}\n"
        );
        let settings =
            crate::config::load_str(&text, dir.path(), std::path::Path::new("c")).unwrap();
        (dir, settings)
    }

    #[test]
    fn plans_check_issuers_kinds_and_lifetimes() {
        let (_dir, s) = settings();
        let now = crate::clock::now();
        let plan = |input: Input<'_>| plan(&s, input, now);
        let sa = "kubernetes:system:serviceaccount:ci:builder";
        let p = plan(Input {
            subject: Some(sa),
            issuer: Some("cluster-a"),
            ..Input::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            p.lifetime,
            Duration::from_secs(7200),
            "cluster-a's credential_ttl"
        );
        assert_eq!(p.target.field(), format!("sub:kubernetes:cluster-a:{sa}"));
        assert!(matches!(
            plan(Input { subject: Some(sa), issuer: Some("cluster-A"), ..Input::default() }),
            Err(InputError::UnknownIssuer { known, .. }) if known == "cluster-a, ci"
        ));
        assert!(matches!(
            plan(Input {
                subject: Some(sa),
                issuer: Some("ci"),
                ..Input::default()
            }),
            Err(InputError::IssuerKind { .. })
        ));
        assert_eq!(
            plan(Input {
                subject: Some("alice"),
                issuer: Some("ci"),
                ..Input::default()
            }),
            Err(InputError::NoIssuer("account"))
        );
        assert_eq!(
            plan(Input {
                subject: Some("carol"),
                ..Input::default()
            }),
            Err(InputError::UnknownAccount("carol".into()))
        );
        assert!(
            plan(Input {
                subject: Some("carol"),
                lift: true,
                ..Input::default()
            })
            .is_ok()
        );
        assert!(matches!(
            plan(Input {
                subject: Some(sa),
                kind: Some(Kind::Oidc),
                ..Input::default()
            }),
            Err(InputError::KindContradicts { .. })
        ));
        // A jti: the longest of all; an access token's jti is refused.
        let p = plan(Input {
            jti: Some("rt.abc"),
            ..Input::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(7200));
        assert!(matches!(
            plan(Input {
                jti: Some("weRB16PLGQhO56dkybqprg"),
                ..Input::default()
            }),
            Err(InputError::NotRefreshJti(_))
        ));
        assert!(matches!(
            plan(Input {
                jti: Some("rt."),
                ..Input::default()
            }),
            Err(InputError::NotRefreshJti(_))
        ));
        let p = plan(Input {
            subject: Some("alice"),
            ..Input::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(3600));
        let p = plan(Input {
            all_before: Some("now"),
            kind: Some(Kind::Oidc),
            ..Input::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(1800));
        assert_eq!(
            plan(Input {
                all_before: Some("yesterday"),
                ..Input::default()
            }),
            Err(InputError::Time)
        );
        assert_eq!(plan(Input::default()), Ok(None), "a listing");
        // --for never ends a revocation before what it revokes.
        let p = plan(Input {
            subject: Some("alice"),
            ..Input::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(duration(&p, None), Ok(Duration::from_secs(3600)));
        assert_eq!(
            duration(&p, Some(Duration::from_secs(86400))),
            Ok(Duration::from_secs(86400))
        );
        assert!(matches!(
            duration(&p, Some(Duration::from_secs(2))),
            Err(InputError::TooShort { given, needed }) if given == "2s" && needed == "1h"
        ));
        assert!(matches!(
            duration(&p, Some(Duration::from_secs(u64::MAX))),
            Err(InputError::TooLong(_))
        ));
        assert_eq!(duration(&p, Some(MAX_ENTRY)), Ok(MAX_ENTRY));
    }

    proptest::proptest! {
        /// Whatever a subject holds, what either log format prints of it
        /// reads back to it.
        #[test]
        fn printed_subjects_round_trip(name in "\\PC{1,40}|[\\x00-\\x1f\"\\\\]{1,8}") {
            let sub = format!("oidc:{name}");
            let text = format!("{sub:?}");
            let json = serde_json::to_string(&sub).unwrap();
            proptest::prop_assert_eq!(subject(&text), Ok((sub.clone(), Kind::Oidc)));
            proptest::prop_assert_eq!(subject(&json), Ok((sub.clone(), Kind::Oidc)));
        }

        #[test]
        fn any_input_is_read_or_refused_without_panicking(input in "\\PC{0,40}") {
            let _ = subject(&input);
            let _ = unescape(&input);
        }
    }
}
