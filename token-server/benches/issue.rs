//! Cost of issuing a token, as ratios against signing alone.
//!
//! The baseline is one ES256 signature over fixed claims with a parsed key:
//! the floor every token pays. The other benches add what a real request
//! adds: claims serialization, policy decisions, and the refresh-token check.
//! Compare each against the baseline measured in the same run.

// A benchmark whose setup fails should stop loudly, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use regauth_token_server::identity::{Kind, Principal};
use regauth_token_server::keys::{Algorithm, SigningKey, generate};
use regauth_token_server::policy::{Actions, Glob, Policy, Rule, granted};
use regauth_token_server::scope::{Scope, parse_all};
use regauth_token_server::token::access::access_token;
use regauth_token_server::token::refresh::RefreshTokens;

fn key(alg: Algorithm) -> (tempfile::TempDir, SigningKey) {
    let dir = tempfile::tempdir().unwrap();
    let g = generate(alg, "bench", regauth_token_server::clock::now()).unwrap();
    std::fs::write(dir.path().join("k"), g.key_pem).unwrap();
    std::fs::write(dir.path().join("c"), g.cert_pem).unwrap();
    let k = SigningKey::load(&dir.path().join("k"), &dir.path().join("c"), false).unwrap();
    (dir, k)
}

fn policy() -> Policy {
    let rule = |resource: &str, actions| Rule {
        comment: String::new(),
        kind: Some(Kind::Account),
        name: Glob::new("*").unwrap(),
        attributes: Vec::new(),
        resource_type: Glob::new("repository").unwrap(),
        resource: Glob::new(resource).unwrap(),
        actions,
    };
    Policy::new(vec![
        rule("public/**", Actions::Only(vec!["pull".into()])),
        rule(
            "teams/${team}/**",
            Actions::Only(vec!["pull".into(), "push".into()]),
        ),
        rule("${name}/**", Actions::All),
    ])
}

fn bench(c: &mut Criterion) {
    let (_dir, es) = key(Algorithm::Es256);
    let (_dir2, rs) = key(Algorithm::Rs256);
    let claims = br#"{"iss":"regauth","sub":"alice","aud":"registry","exp":1,"nbf":0,"iat":0,"jti":"x","access":[]}"#;
    let principal = Principal {
        kind: Kind::Account,
        name: "alice".into(),
        attributes: BTreeMap::new(),
    };
    let policy = policy();
    let now = regauth_token_server::clock::now();
    let refresh = RefreshTokens::new("regauth", &[1; 32]);
    let (refresh_token, _) = refresh
        .issue(&principal, None, None, Duration::from_secs(3600), now)
        .unwrap();

    let mut g = c.benchmark_group("issue");
    g.bench_function("baseline_es256_sign_only", |b| {
        b.iter(|| es.sign_claims(black_box(claims)).unwrap())
    });
    g.bench_function("access_token_es256", |b| {
        b.iter(|| {
            let scopes = parse_all(["repository:alice/app:pull,push"], 32).unwrap();
            let grants = granted(&policy.decide(&principal, &scopes));
            access_token(
                &es,
                "regauth",
                "alice",
                "registry",
                &grants,
                Duration::from_secs(300),
                now,
            )
            .unwrap()
        })
    });
    g.bench_function("refresh_verify_plus_access_token_es256", |b| {
        b.iter(|| {
            let claims = refresh
                .verify(black_box(refresh_token.expose()), now)
                .unwrap();
            let scopes: Vec<Scope> = parse_all(["repository:alice/app:pull,push"], 32).unwrap();
            let grants = granted(&policy.decide(&claims.principal, &scopes));
            access_token(
                &es,
                "regauth",
                &claims.sub,
                "registry",
                &grants,
                Duration::from_secs(300),
                now,
            )
            .unwrap()
        })
    });
    g.bench_function("access_token_rs256", |b| {
        b.iter(|| {
            access_token(
                &rs,
                "regauth",
                "alice",
                "registry",
                &[],
                Duration::from_secs(300),
                now,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
