//! pg_dump and pg_dumpall through loopgate with the shipped HIPAA pack:
//! their catalog queries (`OPERATOR(pg_catalog.=) ANY`, system columns,
//! `PREPARE`/`EXECUTE`) pass, each COPY of a PHI table waits for an
//! approver (`hipaa.hold_phi_export`), the COPY data they read is masked,
//! and the dump restores into a fresh database with psql and pg_restore.
use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use loopgate_e2e::{
    clinic::{Clinic, has_ssn, policy_pack},
    postgres::{PgOptions, SUPERUSER, SUPERUSER_PASSWORD},
    require_ebpf,
};
use serde_json::{Value, json};

/// Patients in the fixture.
const ROWS: usize = 300;
/// The approver group is a unix group every Debian/Ubuntu has (`users`);
/// daemon (uid 1) approves, nobody runs the dump.
const APPROVERS_GID: u32 = 100;
const APPROVER: u32 = 1;

fn approver_group() -> String {
    loopgate_e2e::group_name(APPROVERS_GID).unwrap()
}

/// A clinic behind the shipped HIPAA pack (approvals by the `users` group)
/// with a function, a view and an enum, so a whole-database dump runs
/// pg_dump's PREPAREd catalog queries too.
fn clinic() -> (Clinic, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_pack(dir.path(), json!({"group": approver_group(), "timeout_secs": 600}));
    let key = dir.path().join("hash.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let extra = format!(
        "[mask]\nhash_key_file = \"{}\"\nmrn_pattern = \"MRN\\\\d{{8}}\"\n[policy]\ndir = \"{}\"\n",
        key.display(),
        policies.display()
    );
    let f = Clinic::start_sized(PgOptions::default(), ROWS, &extra, |t, _| t);
    f.pg.psql(
        "CREATE TYPE mood AS ENUM ('calm', 'busy');
         CREATE FUNCTION add_one(a int) RETURNS int LANGUAGE sql AS 'SELECT a + 1';
         CREATE VIEW cities AS SELECT id, city FROM patients;
         GRANT SELECT ON cities TO app;",
    );
    (f, dir)
}

/// A pg_dump-family program inside the cgroup as `nobody`, stdout piped.
fn spawn_in_cgroup(f: &Clinic, program: &str, args: &[&str]) -> Child {
    let port = f.pg.addr.port().to_string();
    let host = f.pg.addr.ip().to_string();
    f.agent
        .loopgate(&["exec"])
        .args(["--user", "nobody", "--", "env", "PGCONNECT_TIMEOUT=10", program])
        .args(["-h", &host, "-p", &port, "-U", "clinic-bot"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Approves every request the running `child` waits for until it exits;
/// returns its output and the rule of each approved request.
fn approve_until_done(f: &Clinic, child: Child) -> (Output, Vec<String>) {
    let pid = child.id();
    // Read the output on threads: a dump larger than a pipe must not stall.
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let mut rules = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !waiter.is_finished() {
        assert!(Instant::now() < deadline, "pid {pid} still running\n{}", f.agent.log());
        let out = f.agent.approvals_as(APPROVER, &[APPROVERS_GID], &["list", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for request in serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap() {
            let id = request["id"].as_str().unwrap();
            let said = f.agent.approvals_as(APPROVER, &[APPROVERS_GID], &["approve", id]);
            assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
            let (rule, command) = (request["rule_id"].as_str(), request["command"].as_str());
            rules.push(format!("{} {}", rule.unwrap_or("?"), command.unwrap_or("?")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (waiter.join().unwrap(), rules)
}

fn ok(what: &str, out: &Output, f: &Clinic) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.agent.log()
    );
    out.stdout.clone()
}

/// Every raw PHI value of the fixture as the server holds it.
fn phi_values(f: &Clinic) -> BTreeSet<String> {
    let rows = f.pg.psql("select ssn, email, mrn, phone, dob::text from patients");
    let values: BTreeSet<String> = rows.lines().flat_map(|l| l.split('|')).map(str::to_owned).collect();
    assert!(values.len() >= 4 * ROWS, "the fixture has PHI: {}", values.len());
    values
}

fn assert_no_phi(what: &str, text: &str, values: &BTreeSet<String>) {
    let found: Vec<&String> = values.iter().filter(|v| text.contains(v.as_str())).collect();
    assert!(found.is_empty(), "{what}: raw PHI {found:?}");
    assert!(!has_ssn(text), "{what}: an SSN");
}

/// A client command as the superuser on the server itself (restores and
/// checks bypass loopgate: the dump is the thing under test).
fn superuser(f: &Clinic, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["-h", &f.pg.addr.ip().to_string(), "-p", &f.pg.addr.port().to_string()])
        .args(["-U", SUPERUSER])
        .args(args)
        .env("PGPASSWORD", SUPERUSER_PASSWORD);
    cmd
}

fn restore_plain(f: &Clinic, database: &str, dump: &Path) {
    f.pg.psql(&format!("CREATE DATABASE {database}"));
    let out = superuser(f, "psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-f"])
        .arg(dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn query(f: &Clinic, database: &str, sql: &str) -> String {
    let out = superuser(f, "psql", &["-X", "-A", "-t", "-d", database, "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The restored patients: every row, masked values of their types.
fn assert_restored_masked(f: &Clinic, database: &str, values: &BTreeSet<String>) {
    assert_eq!(query(f, database, "select count(*) from patients"), ROWS.to_string());
    let restored = query(f, database, "select * from patients order by id");
    assert_no_phi("the restored table", &restored, values);
    // Masked as valid values: dates are the sentinel, non-PHI columns kept.
    assert_eq!(
        query(
            f,
            database,
            "select count(*) from patients where dob = date '1900-01-01'"
        ),
        ROWS.to_string()
    );
    assert_eq!(query(f, database, "select city from patients where id = 7"), "City 7");
}

#[test]
fn pg_dump_of_a_table_is_held_masked_and_restores() {
    require_ebpf!();
    let (f, dir) = clinic();
    let values = phi_values(&f);

    let (out, approved) = approve_until_done(
        &f,
        spawn_in_cgroup(&f, "pg_dump", &["-d", "postgres", "-t", "patients"]),
    );
    let dump = String::from_utf8(ok("pg_dump -t patients", &out, &f)).unwrap();
    assert_eq!(approved.len(), 1, "{approved:?}");
    assert!(
        approved[0].starts_with("hipaa.hold_phi_export COPY public.patients"),
        "{approved:?}"
    );
    assert!(dump.contains("CREATE TABLE public.patients"), "{dump}");
    assert!(dump.contains("COPY public.patients (id, name, ssn"), "{dump}");
    assert_no_phi("the dump", &dump, &values);
    let file = dir.path().join("patients.sql");
    std::fs::write(&file, &dump).unwrap();
    restore_plain(&f, "restored", &file);
    assert_restored_masked(&f, "restored", &values);

    // The custom format, restored by pg_restore.
    let (out, _) = approve_until_done(
        &f,
        spawn_in_cgroup(&f, "pg_dump", &["-d", "postgres", "-t", "patients", "-Fc"]),
    );
    let archive = dir.path().join("patients.dump");
    std::fs::write(&archive, ok("pg_dump -Fc", &out, &f)).unwrap();
    f.pg.psql("CREATE DATABASE restored_custom");
    let out = superuser(&f, "pg_restore", &["--exit-on-error", "-d", "restored_custom"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_restored_masked(&f, "restored_custom", &values);

    // The audit: the COPY's result counts its masked fields, and holds no PHI.
    let events = f.agent.wait_events("the COPY results", |e| {
        e.iter()
            .filter(|e| e["kind"] == "command_result" && e["outcome"]["rows"] == ROWS as u64)
            .count()
            >= 2
    });
    let audit: String = events.iter().map(Value::to_string).collect();
    assert_no_phi("the audit", &audit, &values);
}

#[test]
fn pg_dump_of_the_database_and_pg_dumpall_work() {
    require_ebpf!();
    let (f, dir) = clinic();
    let values = phi_values(&f);

    let (out, approved) = approve_until_done(&f, spawn_in_cgroup(&f, "pg_dump", &["-d", "postgres"]));
    let dump = String::from_utf8(ok("pg_dump", &out, &f)).unwrap();
    // One approval per PHI table the dump copies (patients, visits); the
    // schema, the view's definition and non-PHI data are not held.
    assert_eq!(approved.len(), 2, "{approved:?}");
    for needle in [
        "CREATE TYPE public.mood AS ENUM",
        "CREATE FUNCTION public.add_one(a integer)",
        "CREATE VIEW public.cities AS",
        "COPY public.patients",
        "COPY public.visits",
    ] {
        assert!(dump.contains(needle), "{needle}:\n{dump}");
    }
    assert_no_phi("the dump", &dump, &values);
    // pg_dumpall (before anything is restored: it dumps every database):
    // roles (a non-superuser reads no passwords), then each database by
    // pg_dump, all through loopgate.
    let (out, approved) = approve_until_done(&f, spawn_in_cgroup(&f, "pg_dumpall", &["--no-role-passwords"]));
    let all = String::from_utf8(ok("pg_dumpall", &out, &f)).unwrap();
    assert_eq!(approved.len(), 2, "{approved:?}");
    assert!(all.contains("CREATE ROLE app"), "{all}");
    assert!(all.contains("COPY public.patients"), "{all}");
    assert_no_phi("pg_dumpall", &all, &values);

    let file = dir.path().join("all.sql");
    std::fs::write(&file, &dump).unwrap();
    restore_plain(&f, "restored", &file);
    assert_restored_masked(&f, "restored", &values);
    assert_eq!(query(&f, "restored", "select add_one(1)"), "2");
    assert_eq!(query(&f, "restored", "select count(*) from cities"), ROWS.to_string());
}
