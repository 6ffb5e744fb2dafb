//! Per-row masking cost on a 10-column row, the shape of a typical patient
//! result: ids, names, a few rule-masked PHI columns, free-text notes.
//!
//! Run: `CARGO_BUILD_JOBS=1 cargo bench -p loopgate --bench mask`
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use loopgate::mask::{ColumnDesc, MaskAction, MaskConfig, MaskRule, Masker};

const KEY: &[u8] = b"bench-key-0123456789abcdef";

fn columns() -> Vec<ColumnDesc<'static>> {
    let col = |name, type_oid| ColumnDesc {
        name,
        table: Some("public.patients"),
        type_oid,
        binary: false,
    };
    vec![
        col("id", 20),
        col("first_name", 25),
        col("last_name", 25),
        col("ssn", 25),
        col("mrn", 25),
        col("home_phone", 25),
        col("email", 25),
        col("dob", 1082),
        col("admitted_at", 1114),
        col("notes", 25),
    ]
}

fn row(notes: &'static str) -> [&'static [u8]; 10] {
    [
        b"1048576",
        b"Jane",
        b"Doe",
        b"123-45-6789",
        b"MRN0012345",
        b"(555) 234-5678",
        b"jane.doe@example.org",
        b"1980-04-23",
        b"2024-01-15 10:22:31",
        notes.as_bytes(),
    ]
}

fn mask_row(plan: &loopgate::mask::ResultMasker, row: &[&[u8]; 10]) -> usize {
    let mut bytes = 0;
    for (i, v) in row.iter().enumerate() {
        bytes += plan.mask_value(i, v).as_bytes().map_or(0, <[u8]>::len);
    }
    bytes
}

fn bench(c: &mut Criterion) {
    let cols = columns();
    let clean = row("Patient reports mild headache, follow up in two weeks.");
    let dirty = row("Call back on 555-234-5678; card 4111 1111 1111 1111 on file.");

    let default = Masker::new(&MaskConfig::default(), None).unwrap();
    let plan = default.plan(&cols, &[]);
    c.bench_function("mask_row_10col_default_rules_clean_notes", |b| {
        b.iter(|| mask_row(&plan, black_box(&clean)))
    });
    c.bench_function("mask_row_10col_default_rules_phi_in_notes", |b| {
        b.iter(|| mask_row(&plan, black_box(&dirty)))
    });

    let hashing = Masker::new(
        &MaskConfig {
            rules: vec![
                MaskRule::new("ssn", MaskAction::Hash),
                MaskRule::new("mrn", MaskAction::Hash),
            ],
            ..MaskConfig::default()
        },
        Some(KEY),
    )
    .unwrap();
    let hash_plan = hashing.plan(&cols, &[]);
    c.bench_function("mask_row_10col_hash_ssn_mrn", |b| {
        b.iter(|| mask_row(&hash_plan, black_box(&clean)))
    });

    let untouched = Masker::new(
        &MaskConfig {
            builtin_rules: false,
            scan_unmatched: false,
            ..MaskConfig::default()
        },
        None,
    )
    .unwrap();
    let keep_plan = untouched.plan(&cols, &[]);
    c.bench_function("mask_row_10col_nothing_to_mask", |b| {
        b.iter(|| mask_row(&keep_plan, black_box(&clean)))
    });

    c.bench_function("plan_10col", |b| b.iter(|| default.plan(black_box(&cols), &[])));

    let message =
        "duplicate key value violates unique constraint \"patients_ssn_key\": Key (ssn)=(123-45-6789) already exists.";
    c.bench_function("mask_free_text_error_message", |b| {
        b.iter(|| default.mask_free_text(black_box(message)).len())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
