//! Helpers shared by the audit store's integration tests.
#![allow(dead_code)]
use loopgate::audit::{
    AuditConfig, AuditStore, CommandInfo, Decision, Event, EventKind, Outcome, Principal, ProcessInfo, TargetRef,
    Verdict,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// A config for `dir` with small segments, so tests produce several files.
pub fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        dir: dir.to_owned(),
        segment_max_bytes: 64 << 10,
        retry_interval_ms: 50,
        retention_check_secs: 1_000_000,
        ..AuditConfig::default()
    }
}

pub fn open(config: AuditConfig) -> AuditStore {
    AuditStore::open(config).expect("audit store opens")
}

/// A command event with every group filled, like a postgres handler's.
pub fn command_event(session: Uuid, i: u64) -> Event {
    let mut e = Event::new(EventKind::Command).session(session);
    e.client_address = Some("127.0.0.1:41000".into());
    e.principal = Some(Arc::new(Principal {
        subject: Some("etl-bot".into()),
        issuer: Some("https://idp.example".into()),
        email: None,
        groups: vec!["etl".into(), "phi-readers".into()],
    }));
    e.process = Some(Arc::new(ProcessInfo {
        pid: Some(4242),
        tgid: Some(4242),
        uid: Some(1001),
        user: Some("etl".into()),
        gid: Some(1001),
        comm: Some("psql".into()),
        exe: Some("/usr/bin/psql".into()),
        cmdline: None,
        cgroup: Some("/system.slice/etl.service".into()),
        unit: Some("etl.service".into()),
    }));
    e.target = Some(Arc::new(TargetRef {
        name: "patients-db".into(),
        protocol: "postgres".into(),
        address: "10.0.0.5:5432".into(),
    }));
    e.command = Some(CommandInfo {
        text: Some(format!("SELECT name FROM patients WHERE id = '***' /* {i} */")),
        fingerprint: Some("fp-select-patients".into()),
        kind: Some("select".into()),
        tables: vec!["patients".into()],
        columns: vec!["name".into(), "id".into()],
        parameters: vec!["***".into()],
    });
    let mut decision = Decision::new(Verdict::Allow);
    decision.rule_id = Some("hipaa.read".into());
    e.decision = Some(decision);
    e.outcome = Some(Outcome {
        status: Some("ok".into()),
        rows: Some(i % 7),
        bytes_to_client: Some(120),
        bytes_to_server: Some(60),
        error_code: None,
        masked_fields: vec!["name".into()],
        masked_count: Some(1),
    });
    e.duration_us = Some(350);
    e
}

/// The Python with duckdb and pyarrow: `LOOPGATE_PYTHON`, else the
/// workspace's venv. Missing is a failure, never a skip.
pub fn python() -> PathBuf {
    let path = std::env::var_os("LOOPGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python3"));
    assert!(
        path.exists(),
        "no Python with duckdb at {}: run `cargo xtask setup` (or set LOOPGATE_PYTHON)",
        path.display()
    );
    path
}

/// Runs a Python snippet with `args`; returns stdout, failing on error.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `loopgate audit ARGS...`.
pub fn loopgate_audit(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_loopgate"))
        .arg("audit")
        .args(args)
        .output()
        .expect("loopgate runs")
}

/// Number of WAL segments still on disk.
pub fn wal_segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("wal"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
                .count()
        })
        .unwrap_or(0)
}

/// Every `*.parquet` under `dir`.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files_with_extension(dir, "parquet")
}

/// Every file under `dir` whose name ends in `.<ext>`.
pub fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
