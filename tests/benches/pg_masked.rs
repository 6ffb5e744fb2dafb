//! Masked reads of a PHI table, direct and through loopgate: psql
//! `select *` of a 200 000-row `patients` table and
//! `COPY patients TO STDOUT (FORMAT CSV)` of it, as throughput (rows/s)
//! and the ratio through loopgate / direct. loopgate runs the built-in
//! policy with masking on (ssn, phone, email, mrn, dob masked by rule;
//! every other text column scanned by the detectors) and audit on.
//!
//! The two paths alternate within each round (direct select, loopgate
//! select, direct COPY, loopgate COPY), several rounds, so a noisy
//! neighbour on the shared machine hits both paths alike; the median of
//! the rounds is reported. Each run is one psql process: connection and
//! login are inside the time (a few ms of about a second).
//!
//! Run as root: `cargo xtask bench -- --bench pg_masked` (env
//! PG_MASKED_ROWS, default 200000; PG_MASKED_ROUNDS, default 5).
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use loopgate_e2e::{
    bench::median,
    clinic::{Clinic, has_ssn},
    postgres::{APP_PASSWORD, APP_USER, PgOptions},
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// psql straight to the server, as the role loopgate logs in with.
fn direct(f: &Clinic, sql: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &f.pg.addr.ip().to_string(), "-p", &f.pg.addr.port().to_string()])
        .args(["-U", APP_USER, "-d", "postgres", "-c", sql])
        .env("PGPASSWORD", APP_PASSWORD);
    cmd
}

/// Runs `cmd` with its output discarded; the wall time.
fn timed(mut cmd: Command, what: &str) -> Duration {
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .status()
        .expect("run psql");
    assert!(status.success(), "{what} failed");
    started.elapsed()
}

fn main() {
    if !loopgate_e2e::ebpf_available() {
        eprintln!("the pg_masked benchmark needs root and cgroup v2");
        return;
    }
    let rows = env_or("PG_MASKED_ROWS", 200_000);
    let rounds = env_or("PG_MASKED_ROUNDS", 5).max(1);
    let f = Clinic::start_sized(
        PgOptions::default(),
        1,
        "[mask]\nmrn_pattern = \"MRN\\\\d{8}\"\n",
        |t, _| t,
    );
    // The clinic's own fill keeps SSNs unique up to a few thousand rows;
    // the same shapes, without the constraint, for any count.
    f.pg.psql(&format!(
        "ALTER TABLE patients DROP CONSTRAINT patients_ssn_key;
         TRUNCATE patients;
         INSERT INTO patients
           SELECT i, 'Patient ' || i,
                  lpad((i % 600 + 100)::text, 3, '0') || '-' || lpad((i % 89 + 10)::text, 2, '0') || '-' || lpad((i % 9000 + 1000)::text, 4, '0'),
                  '(555) ' || lpad((i % 800 + 200)::text, 3, '0') || '-' || lpad((i % 9000 + 1000)::text, 4, '0'),
                  'patient' || i || '@example.org',
                  'MRN' || lpad(i::text, 8, '0'),
                  date '1940-01-01' + (i * 37 % 25000),
                  'City ' || (i % 50),
                  CASE WHEN i % 10 = 0 THEN 'call back on 617-555-' || lpad((i % 9000 + 1000)::text, 4, '0') ELSE 'ok' END
           FROM generate_series(1, {rows}) i"
    ));
    f.pg.psql("VACUUM ANALYZE patients");
    let workloads = [
        ("select *", "SELECT * FROM patients"),
        ("COPY csv", "COPY patients TO STDOUT (FORMAT CSV)"),
    ];
    // Once, before timing: loopgate's output is masked and complete.
    for (name, sql) in workloads {
        let out = f.psql_command(sql).output().expect("psql through loopgate");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text.lines().count(), rows, "{name}");
        assert!(!has_ssn(&text), "{name}: an SSN reached the client");
    }

    println!(
        "masked reads of a {rows}-row PHI table, psql, {rounds} rounds interleaved; \
         2 CPUs shared by psql, loopgate and PostgreSQL"
    );
    println!(
        "{:<10} {:<10} {:>12} {:>12} {:>9}",
        "workload", "round", "direct r/s", "loopgate r/s", "ratio"
    );
    let mut summary = Vec::new();
    for (name, sql) in workloads {
        let (mut d, mut l, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let direct_rate = rows as f64 / timed(direct(&f, sql), "direct").as_secs_f64();
            let proxied_rate = rows as f64 / timed(f.psql_command(sql), "through loopgate").as_secs_f64();
            println!(
                "{name:<10} {round:<10} {direct_rate:>12.0} {proxied_rate:>12.0} {:>9.2}",
                proxied_rate / direct_rate
            );
            d.push(direct_rate);
            l.push(proxied_rate);
            ratios.push(proxied_rate / direct_rate);
        }
        summary.push((name, median(&mut d), median(&mut l), median(&mut ratios)));
    }
    println!("\nmedian of {rounds} rounds");
    for (name, d, l, ratio) in summary {
        println!("{name:<10} {:<10} {d:>12.0} {l:>12.0} {ratio:>9.2}", "");
    }
}
