//! Statement analysis cost: uncached (parse + classify + fingerprint) vs
//! cached (exact-text hit) vs shape hit (new text, known shape), for short
//! OLTP statements and a larger query.
//!
//! Run: `CARGO_BUILD_JOBS=1 cargo bench -p loopgate --bench sql`
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use loopgate::{
    mask::{MaskConfig, Masker},
    sql::{AnalysisCache, Analyzer, ShapeCache, SqlConfig},
};

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
const PGBENCH_UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;";
const REPORT: &str = "WITH recent AS (SELECT v.patient_id, max(v.visited_at) AS last_visit FROM visits v \
    WHERE v.visited_at > now() - interval '90 days' GROUP BY v.patient_id) \
    SELECT p.id, p.first_name, p.last_name, p.ssn, r.last_visit, count(l.id) AS labs \
    FROM public.patients p JOIN recent r ON r.patient_id = p.id LEFT JOIN labs l ON l.patient_id = p.id \
    WHERE p.state = 'MA' AND p.email LIKE '%@example.org' GROUP BY p.id, r.last_visit ORDER BY r.last_visit DESC LIMIT 100";

fn bench(c: &mut Criterion) {
    let masker = Masker::new(&MaskConfig::default(), None).unwrap();
    let analyzer = Analyzer::new(&SqlConfig::default(), masker);
    let cache = AnalysisCache::new(analyzer.clone());

    for (name, sql) in [
        ("pgbench_select", PGBENCH_SELECT),
        ("pgbench_update", PGBENCH_UPDATE),
        ("report_query", REPORT),
    ] {
        c.bench_function(&format!("analyze_uncached_{name}"), |b| {
            b.iter(|| analyzer.analyze(black_box(sql)).statements.len())
        });
        cache.analyze(sql);
        c.bench_function(&format!("analyze_cached_{name}"), |b| {
            b.iter(|| cache.analyze(black_box(sql)).statements.len())
        });
    }

    // Simple-protocol traffic with inline literals: every text is new, the
    // shape is not (tokenize + texts, no parse).
    let shapes = ShapeCache::new(100);
    let inline = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    analyzer.analyze_with(inline, Some(&shapes));
    c.bench_function("analyze_shape_hit_pgbench_select_inline_literal", |b| {
        b.iter(|| analyzer.analyze_with(black_box(inline), Some(&shapes)).statements.len())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
