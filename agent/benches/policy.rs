//! Policy decision cost with the shipped HIPAA pack: evaluated by regorus
//! (cache off) vs served from the decision cache, next to the built-in policy.
//!
//! Run: `CARGO_BUILD_JOBS=1 cargo bench -p loopgate --bench policy`
use std::{hint::black_box, path::Path, time::SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use loopgate::{
    mask::{MaskConfig, Masker},
    policy::{
        Action, BuiltinPolicy, PolicyEngine, PolicyInput, Principal, ProcessInfo, RegoPolicy, RegoPolicyConfig,
        SessionInfo, TargetInfo,
    },
    sql::{Analyzer, SqlConfig},
};

const STATEMENTS: &[(&str, &str)] = &[
    ("point_select", "SELECT first_name, ssn FROM patients WHERE id = $1"),
    ("bulk_select_hold", "SELECT * FROM patients"),
    ("truncate_deny", "TRUNCATE visits"),
    (
        "report_query",
        "WITH recent AS (SELECT v.patient_id, max(v.visited_at) AS last_visit FROM visits v \
         WHERE v.visited_at > now() - interval '90 days' GROUP BY v.patient_id) \
         SELECT p.id, p.first_name, p.last_name, p.ssn, r.last_visit, count(l.id) AS labs \
         FROM public.patients p JOIN recent r ON r.patient_id = p.id LEFT JOIN labs l ON l.patient_id = p.id \
         WHERE p.state = 'MA' GROUP BY p.id, r.last_visit ORDER BY r.last_visit DESC LIMIT 100",
    ),
];

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let cached = RegoPolicy::load(&dir).unwrap();
    let cold = RegoPolicy::load_with(
        &dir,
        &RegoPolicyConfig {
            cache_entries: 0,
            ..RegoPolicyConfig::default()
        },
    )
    .unwrap();
    let builtin = BuiltinPolicy::default();
    let analyzer = Analyzer::new(
        &SqlConfig::default(),
        Masker::new(&MaskConfig::default(), None).unwrap(),
    );
    let principal = Principal {
        subject: "alice@example.org".into(),
        groups: vec!["analysts".into(), "clinical-staff".into()],
    };
    let process = ProcessInfo {
        pid: 4242,
        uid: 1001,
        user: Some("etl".into()),
        unit: Some("nightly-export.service".into()),
        exe: Some("/usr/bin/python3.12".into()),
        comm: "python3".into(),
    };
    let target = TargetInfo {
        name: "clinic".into(),
        protocol: "postgres".into(),
        identity: "token".into(),
    };
    let session = SessionInfo {
        id: "0194f0c2-7d1e-7000-8000-000000000001".into(),
        database: Some("clinic".into()),
        application_name: Some("psql".into()),
    };
    for (name, sql) in STATEMENTS {
        let analysis = analyzer.analyze(sql);
        let input = PolicyInput {
            principal: &principal,
            process: &process,
            target: &target,
            action: Action::Sql {
                statement: &analysis.statements[0],
            },
            session: Some(&session),
            time: SystemTime::now(),
        };
        c.bench_function(&format!("policy_rego_cold_{name}"), |b| {
            b.iter(|| cold.decide(black_box(&input)))
        });
        cached.decide(&input);
        c.bench_function(&format!("policy_rego_cached_{name}"), |b| {
            b.iter(|| cached.decide(black_box(&input)))
        });
        c.bench_function(&format!("policy_builtin_{name}"), |b| {
            b.iter(|| builtin.decide(black_box(&input)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
