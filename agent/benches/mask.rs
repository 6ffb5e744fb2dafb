//! Per-row masking cost on a 10-column row, the shape of a typical patient
//! result: ids, names, a few rule-masked PHI columns, free-text notes.
//!
//! Run: `CARGO_BUILD_JOBS=1 cargo bench -p loopgate --bench mask`
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use loopgate::{
    mask::{ColumnDesc, MaskAction, MaskConfig, MaskRule, Masker},
    protocols::http::{
        config::Api,
        json::{JsonMasker, JsonRules},
    },
};

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

/// A FHIR searchset Bundle of `n` Patients as a server writes it.
fn bundle(n: usize) -> Vec<u8> {
    let mut out = br#"{"resourceType":"Bundle","type":"searchset","entry":["#.to_vec();
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!(
                r#"{{"fullUrl":"https://fhir.example/Patient/p{i}","resource":{{"resourceType":"Patient","id":"p{i}","meta":{{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"}},"text":{{"status":"generated","div":"<div>Jane Doe {i}</div>"}},"identifier":[{{"system":"urn:mrn","value":"MRN{i:08}"}}],"active":true,"name":[{{"family":"Doe","given":["Jane"]}}],"telecom":[{{"system":"phone","value":"555-234-5678"}}],"gender":"female","birthDate":"1970-01-01","address":[{{"line":["1 Main St"],"city":"Springfield","postalCode":"12345"}}],"managingOrganization":{{"reference":"Organization/o1","display":"General Hospital"}}}},"search":{{"mode":"match"}}}}"#
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"]}");
    out
}

/// The streaming JSON masker over a ~5 MB Bundle in 16 KiB chunks (the
/// size hyper hands over), as MB/s.
fn json(c: &mut Criterion) {
    let masker = Masker::new(&MaskConfig::default(), None).unwrap();
    let doc = bundle(8000);
    let mut group = c.benchmark_group("json_stream");
    group.throughput(Throughput::Bytes(doc.len() as u64));
    group.sample_size(10);
    for (name, api) in [
        ("fhir_bundle_8000_patients", Api::Fhir),
        ("plain_json_detectors_only", Api::Json),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut m = JsonMasker::new(
                    masker.clone(),
                    JsonRules {
                        api,
                        secrets_response: false,
                    },
                );
                let mut out = Vec::with_capacity(16 * 1024);
                let mut total = 0;
                for chunk in doc.chunks(16 * 1024) {
                    out.clear();
                    m.feed(black_box(chunk), &mut out).unwrap();
                    total += out.len();
                }
                m.finish(&mut out).unwrap();
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, json);
criterion_main!(benches);
