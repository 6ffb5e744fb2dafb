//! Audit store throughput, latency, size and memory.
//!
//! `cargo bench -p loopgate --bench audit` (env: `EVENTS`, default 1000000;
//! `CONCURRENCY`, appenders in flight, default 64; `RATE`, total events/s
//! offered (default 0: as fast as the store acknowledges); `FSYNC`, interval|always;
//! `FSYNC_INTERVAL_MS`, default 10;
//! `BENCH_DIR`, parent of the store, default the system temp dir;
//! `REMOTE_CONFIG`, a TOML file with a `[remote]` table as under `[audit]`:
//! ship to that store while appending, see BENCHMARKS.md).
//! Appenders run on one current-thread runtime (one core); the store's
//! writer and converter threads are what the agent would run.
// The integration tests' command event: what a PostgreSQL handler records.
#[path = "../tests/audit_common/mod.rs"]
mod audit_common;

use audit_common::command_event;
use loopgate::audit::{AuditConfig, AuditStore, FsyncMode, verify};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Bytes of every Parquet file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    audit_common::parquet_files(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let events: u64 = env_or("EVENTS", 1_000_000);
    let concurrency: u64 = env_or("CONCURRENCY", 64);
    let rate: u64 = env_or("RATE", 0);
    let fsync = match std::env::var("FSYNC").as_deref() {
        Ok("always") => FsyncMode::Always,
        _ => FsyncMode::Interval,
    };
    let parent = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(parent).expect("bench dir");
    let remote = std::env::var_os("REMOTE_CONFIG").map(|path| {
        let text = std::fs::read_to_string(&path).expect("read REMOTE_CONFIG");
        let parsed: AuditConfig = toml::from_str(&text).expect("REMOTE_CONFIG: a [remote] table");
        parsed.remote.expect("REMOTE_CONFIG has no [remote] table")
    });
    let shipping = remote.is_some();
    let config = AuditConfig {
        dir: tmp.path().to_owned(),
        fsync,
        fsync_interval_ms: env_or("FSYNC_INTERVAL_MS", 10),
        retention_check_secs: 1_000_000,
        remote,
        ..AuditConfig::default()
    };
    println!(
        "events={events} concurrency={concurrency} rate={rate} fsync={fsync:?} interval={}ms segment={}MiB shipping={shipping} dir={}",
        config.fsync_interval_ms,
        config.segment_max_bytes >> 20,
        tmp.path().display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cpu0 = cpu_seconds();
    let (append_secs, total_secs, mut latencies) = rt.block_on(async {
        let store = Arc::new(AuditStore::open(config).expect("open"));
        let start = Instant::now();
        let per_task = events / concurrency;
        let mut tasks = Vec::new();
        for task in 0..concurrency {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let session = Uuid::now_v7();
                let mut lat = Vec::with_capacity(per_task as usize);
                let mut pace = (rate > 0).then(|| {
                    let period = std::time::Duration::from_secs_f64(concurrency as f64 / rate as f64);
                    // Staggered, so arrivals are smooth rather than bursts.
                    let offset = period.mul_f64(task as f64 / concurrency as f64);
                    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                for i in 0..per_task {
                    if let Some(p) = pace.as_mut() {
                        p.tick().await;
                    }
                    let e = command_event(session, i);
                    let t = Instant::now();
                    store.append_seq(e).await.expect("append");
                    lat.push(t.elapsed().as_micros() as u32);
                }
                lat
            }));
        }
        let mut all = Vec::with_capacity(events as usize);
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        let appended = start.elapsed().as_secs_f64();
        store.shutdown().await.expect("shutdown");
        let h = store.health();
        println!(
            "converter: {} events in {:.2} s of its thread's CPU ({:.0} events/s per core)",
            h.converted_events,
            h.conversion_cpu_us as f64 / 1e6,
            h.converted_events as f64 / (h.conversion_cpu_us.max(1) as f64 / 1e6)
        );
        if let Some(r) = h.remote {
            println!(
                "shipped: {} files, {} bytes, through seq {:?}, backlog {} files, checkpoint seq {:?}, {:.2} s after start",
                r.shipped_files,
                r.shipped_bytes,
                r.shipped_seq,
                r.backlog_files,
                r.last_checkpoint_seq,
                start.elapsed().as_secs_f64()
            );
        }
        (appended, start.elapsed().as_secs_f64(), all)
    });
    let cpu = cpu_seconds() - cpu0;
    let n = latencies.len() as f64;
    latencies.sort_unstable();
    let parquet = dir_bytes(tmp.path());
    println!(
        "appends acknowledged (in WAL):   {:>10.0} events/s  ({n} in {append_secs:.2} s)",
        n / append_secs
    );
    println!(
        "WAL + Parquet, all converted:    {:>10.0} events/s  ({total_secs:.2} s)",
        n / total_secs
    );
    println!(
        "append latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or(0)
    );
    println!(
        "parquet bytes/event: {:.1} ({} bytes total)",
        parquet as f64 / n,
        parquet
    );
    println!(
        "CPU: {cpu:.2} s for {total_secs:.2} s wall ({:.2} cores); peak RSS {} MiB",
        cpu / total_secs,
        proc_status_kib("VmHWM:") / 1024
    );
    let t = Instant::now();
    let v = verify::verify(tmp.path()).expect("chain holds");
    println!(
        "verify: {} events in {} files, {:.2} s ({:.0} events/s)",
        v.events,
        v.files,
        t.elapsed().as_secs_f64(),
        v.events as f64 / t.elapsed().as_secs_f64()
    );
}
