//! Token validation cost against the in-process issuer: a token seen for the
//! first time (parse, header rules, RS256 signature, claims, cache insert)
//! and the same token again (SHA-256 + cache hit). Minting is not measured.
//!
//! Run: `CARGO_BUILD_JOBS=1 cargo bench -p loopgate --features test-issuer --bench identity`
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use loopgate::identity::OidcValidator;
use loopgate::identity::test_issuer::TestIssuer;
use serde_json::json;

fn validation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuer = rt.block_on(TestIssuer::start()).unwrap();
    let validator = OidcValidator::new(issuer.oidc_config("loopgate"), vec![]).unwrap();
    rt.block_on(validator.refresh()).unwrap();
    let serial = AtomicU64::new(0);
    let fresh_token = || {
        let mut claims = issuer.claims("etl-bot", "loopgate");
        claims["jti"] = json!(serial.fetch_add(1, Ordering::Relaxed));
        claims["groups"] = json!(["phi-readers", "ops"]);
        issuer.mint(&claims)
    };

    let mut group = c.benchmark_group("token_validation");
    group.bench_function("first_time_rs256", |b| {
        b.iter_batched(
            fresh_token,
            |token| rt.block_on(validator.validate(black_box(&token))).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let token = fresh_token();
    rt.block_on(validator.validate(&token)).unwrap();
    group.bench_function("cached", |b| {
        b.iter(|| rt.block_on(validator.validate(black_box(&token))).unwrap())
    });
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
