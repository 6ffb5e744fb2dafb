//! Real drivers through loopgate, as applications use them: pgjdbc,
//! asyncpg, psycopg 3, node-postgres and psql's `\copy`. Each prints every
//! value it received; no raw SSN, email, MRN, phone or birth date may be in
//! it, the driver must not fail on a masked value, and the audit must count
//! the masked fields of every execution. The clients come from `cargo xtask
//! setup` (Debian's libpostgresql-jdbc-java and JDK, PyPI, npm).
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
};

use loopgate_e2e::{
    clinic::{Clinic, PATIENTS, commands, has_ssn},
    env::workspace_root,
    postgres::PgOptions,
    require_ebpf,
};
use serde_json::Value;

/// Where Debian's libpostgresql-jdbc-java puts pgjdbc.
const PGJDBC: &str = "/usr/share/java/postgresql.jar";

/// The statement every driver runs 7 times: 5 rows of 5 PHI columns.
const BY_ID: &str = "SELECT id, ssn, email, mrn, phone, dob FROM patients WHERE id <=";
const RUNS: usize = 7;
const MASKED_PER_RUN: u64 = 5 * 5;

fn script(name: &str) -> PathBuf {
    workspace_root().join("tests/drivers").join(name)
}

/// Runs `program args` inside the agent's cgroup; its stdout, or the test
/// fails with stderr and the agent's log.
fn run_ok(f: &Clinic, program: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = f.agent.loopgate(&["exec"]);
    cmd.arg("--").arg(program).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} failed: {}\n{stdout}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.agent.log()
    );
    stdout
}

fn dsn(f: &Clinic) -> String {
    format!(
        "host={} port={} user=clinic-bot dbname=postgres",
        f.pg.addr.ip(),
        f.pg.addr.port()
    )
}

/// No raw PHI of the clinic's patients in `out`. The fixture's values:
/// SSNs `NNN-NN-NNNN`, `patientN@example.org`, `MRN000000NN`, phones
/// `(555) NNN-NNNN`, birth dates from 1940 on.
fn assert_no_phi(what: &str, out: &str) {
    assert!(!has_ssn(out), "{what}: an SSN reached the client:\n{out}");
    assert!(
        !out.contains("@example.org"),
        "{what}: an email reached the client:\n{out}"
    );
    assert!(!out.contains("MRN000"), "{what}: an MRN reached the client:\n{out}");
    assert!(
        !out.contains("(555) "),
        "{what}: a phone number reached the client:\n{out}"
    );
    assert!(
        !out.contains("617-555-"),
        "{what}: a phone number reached the client:\n{out}"
    );
    for year in 1940..=2010 {
        assert!(
            !out.contains(&format!("{year}-")),
            "{what}: a birth date ({year}) reached the client:\n{out}"
        );
    }
}

/// The `command_result` events of every command whose text contains `text`.
fn results_of<'e>(events: &'e [Value], text: &str) -> Vec<&'e Value> {
    results_where(events, |t| t.contains(text))
}

fn results_where(events: &[Value], pick: impl Fn(&str) -> bool) -> Vec<&Value> {
    let ids: Vec<&Value> = commands(events)
        .into_iter()
        .filter(|c| c["command"]["text"].as_str().is_some_and(&pick))
        .map(|c| &c["event_id"])
        .collect();
    events
        .iter()
        .filter(|e| e["kind"] == "command_result" && ids.contains(&&e["command_id"]))
        .collect()
}

/// Waits for `n` results of the BY_ID statement and checks each masked
/// every PHI field of its 5 rows.
fn assert_every_run_masked(f: &Clinic, n: usize) {
    let events = f
        .agent
        .wait_events("every execution's result", |e| results_of(e, BY_ID).len() >= n);
    let results = results_of(&events, BY_ID);
    let counts: Vec<u64> = results
        .iter()
        .map(|r| r["outcome"]["masked_count"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(results.len(), n, "{counts:?}");
    for r in &results {
        assert_eq!(r["outcome"]["rows"], 5, "{r}");
    }
    assert_eq!(counts, vec![MASKED_PER_RUN; n], "every execution masked and counted");
}

fn assert_runs_printed(out: &str, prefix: &str) {
    for run in 1..=RUNS {
        assert!(out.contains(&format!("{prefix}{run} rows 5")), "run {run}:\n{out}");
    }
}

#[test]
fn pgjdbc_prepared_statements_and_fetch_size_are_masked_every_time() {
    require_ebpf!();
    assert!(Path::new(PGJDBC).exists(), "pgjdbc is missing: run `cargo xtask setup`");
    let f = Clinic::start(PgOptions::default(), "");
    let (host, port) = (f.pg.addr.ip().to_string(), f.pg.addr.port().to_string());
    let source = script("Drivers.java");
    let out = run_ok(
        &f,
        "java",
        &["-cp", PGJDBC, &source.to_string_lossy(), &host, &port],
        &[],
    );
    assert_no_phi("pgjdbc", &out);
    assert_runs_printed(&out, "run ");
    assert!(out.contains("| 1900-01-01"), "getDate decodes the masked dob:\n{out}");
    assert!(out.contains("fetch rows 9"), "{out}");
    assert_eq!(out.matches("fetch | ").count(), 9, "{out}");
    assert_every_run_masked(&f, RUNS);
}

#[test]
fn asyncpg_statements_cursors_binary_values_and_copy_are_masked() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    let python = loopgate_e2e::python();
    let out = run_ok(
        &f,
        &python.to_string_lossy(),
        &[&script("asyncpg_client.py").to_string_lossy(), &dsn(&f)],
        &[],
    );
    assert_no_phi("asyncpg", &out);
    assert_runs_printed(&out, "run ");
    assert!(out.contains("cursor rows 9"), "{out}");
    assert!(out.contains("1900-01-01"), "masked dates decode as dates:\n{out}");
    // CSV keeps its header and has every row.
    let csv = out.split("csv | ").nth(1).unwrap_or_default();
    assert!(csv.starts_with("id,name,ssn,phone,email,mrn,dob,city,note\n"), "{csv}");
    assert!(csv.lines().count() > PATIENTS, "{out}");
    assert!(out.contains("binary copy bytes"), "{out}");
    assert_every_run_masked(&f, RUNS);
    // asyncpg quotes the table name and spells the options its own way.
    let csv_copy = |t: &str| {
        let t = t.to_lowercase();
        t.starts_with("copy") && t.contains("patients") && !t.contains("select")
    };
    let events = f
        .agent
        .wait_events("the CSV COPY result", |e| !results_where(e, csv_copy).is_empty());
    let csv_result = results_where(&events, csv_copy);
    assert_eq!(csv_result.len(), 1, "{events:?}");
    // ssn, phone, email, mrn, dob per row; phones in every tenth note.
    let expected = 5 * PATIENTS as u64 + PATIENTS as u64 / 10;
    assert_eq!(csv_result[0]["outcome"]["masked_count"], expected, "{}", csv_result[0]);
}

#[test]
fn psycopg_text_binary_pipeline_named_cursors_and_copy_are_masked() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    let python = loopgate_e2e::python();
    let out = run_ok(
        &f,
        &python.to_string_lossy(),
        &[&script("psycopg_client.py").to_string_lossy(), &dsn(&f)],
        &[],
    );
    assert_no_phi("psycopg", &out);
    assert_runs_printed(&out, "text ");
    assert_runs_printed(&out, "binary ");
    assert_eq!(out.matches("pipeline | ").count(), 2 + 3 + 4, "{out}");
    assert!(out.contains("named rows 9"), "{out}");
    assert!(out.contains("copy binary rows 20"), "{out}");
    assert!(out.contains("| 1900-01-01"), "{out}");
    let csv = out.split("copy csv | ").nth(1).unwrap_or_default();
    assert!(csv.starts_with("id;name;ssn;phone;email;mrn;dob;city;note\n"), "{csv}");
    assert_every_run_masked(&f, 2 * RUNS);
}

#[test]
fn node_postgres_named_statements_and_arrays_are_masked() {
    require_ebpf!();
    let modules = workspace_root().join("target/node/node_modules");
    assert!(
        modules.join("pg").exists(),
        "node-postgres is missing: run `cargo xtask setup`"
    );
    let f = Clinic::start(PgOptions::default(), "");
    let (host, port) = (f.pg.addr.ip().to_string(), f.pg.addr.port().to_string());
    let out = run_ok(
        &f,
        "node",
        &[&script("drivers.js").to_string_lossy(), &host, &port],
        &[("NODE_PATH", &modules)],
    );
    assert_no_phi("node-postgres", &out);
    assert_runs_printed(&out, "run ");
    assert!(out.contains("agg | "), "{out}");
    assert_every_run_masked(&f, RUNS);
}

#[test]
fn psql_copy_in_text_and_csv_is_masked_and_keeps_its_header() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    let text = f.psql_ok("\\copy patients to stdout");
    let csv = f.psql_ok("\\copy patients to stdout with (format csv, header)");
    assert_no_phi("psql \\copy text", &text);
    assert_no_phi("psql \\copy csv", &csv);
    assert_eq!(text.lines().count(), PATIENTS);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("id,name,ssn,phone,email,mrn,dob,city,note"));
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[0], "1");
    assert_eq!(first[1], "Patient 1");
    assert_eq!(first[6], "\"1900-01-01\"");
    let events = f.agent.wait_events("both COPY results", |e| {
        results_of(e, "COPY patients TO STDOUT").len() >= 2
    });
    let expected = 5 * PATIENTS as u64 + PATIENTS as u64 / 10;
    for r in results_of(&events, "COPY patients TO STDOUT") {
        assert_eq!(r["outcome"]["masked_count"], expected, "{r}");
        assert_eq!(r["outcome"]["rows"], PATIENTS as u64, "{r}");
    }
}

#[test]
fn every_command_gets_a_result_record() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    // Blocked: recorded as a command and as its (not run) result.
    let out = f.psql("DROP TABLE patients");
    assert!(!out.status.success());
    // Abandoned: the client reads one line of a long COPY and leaves.
    let mut child = f
        .psql_command("COPY (SELECT p.* FROM patients p, generate_series(1, 100)) TO STDOUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("1\tPatient 1\t***-**-"), "{first}");
    let _ = child.kill();
    let _ = child.wait();
    let events = f.agent.wait_events("both results", |e| {
        !results_of(e, "DROP TABLE").is_empty() && !results_of(e, "generate_series").is_empty()
    });
    let blocked = results_of(&events, "DROP TABLE")[0];
    assert_eq!(blocked["outcome"]["status"], "blocked", "{blocked}");
    assert_eq!(blocked["outcome"]["rows"], 0);
    let abandoned = results_of(&events, "generate_series")[0];
    assert_eq!(abandoned["outcome"]["status"], "abandoned", "{abandoned}");
    let rows = abandoned["outcome"]["rows"].as_u64().unwrap();
    assert!(rows >= 1 && rows < 100 * PATIENTS as u64, "{abandoned}");
    assert!(
        abandoned["outcome"]["masked_count"].as_u64().unwrap() >= 5 * rows,
        "{abandoned}"
    );
}
