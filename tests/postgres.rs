//! PostgreSQL end to end: unmodified psql, pgbench and psycopg inside the
//! intercepted cgroup, a real PostgreSQL 15 started by the test, loopgate
//! between them deciding, masking and recording every statement.
use std::{os::unix::fs::PermissionsExt as _, process::Output};

use loopgate_e2e::{
    clinic::{Clinic, PATIENTS, commands, has_ssn, policy_pack},
    postgres::{APP_USER, PgOptions},
    require_ebpf,
};
use serde_json::Value;

#[test]
fn psql_is_served_masked_and_recorded_without_knowing_the_password() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    let out = f.psql_ok("SELECT id, name, ssn, phone, email, mrn, dob, city, note FROM patients ORDER BY id");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), PATIENTS, "every row arrives");
    let first: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(first[0], "1");
    assert_eq!(first[1], "Patient 1", "non-PHI columns are untouched");
    assert_eq!(first[7], "City 1");
    for line in &lines {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 9, "{line}");
        for (i, col) in [(2, "ssn"), (3, "phone"), (4, "email"), (5, "mrn")] {
            assert!(f[i].contains('*'), "{col} is masked: {line}");
        }
        assert_eq!(f[6], "1900-01-01", "dob is masked to the sentinel date: {line}");
        assert!(f[2].starts_with("***-**-"), "ssn keeps only its last four: {line}");
    }
    assert!(!has_ssn(&out), "no SSN reaches the client");
    assert!(!out.contains("@example.org"), "no email reaches the client");
    assert!(
        !out.contains("617-555-"),
        "phone numbers in free text are found by the detectors"
    );
    assert!(!out.contains("MRN000"), "MRNs are masked");

    // The statement and its result are in the audit trail, attributed.
    let events = f.agent.wait_events("the command result", |e| {
        e.iter().any(|e| e["kind"] == "command_result")
    });
    let command = commands(&events)[0].clone();
    assert_eq!(command["decision"]["verdict"], "allow");
    assert_eq!(command["process"]["comm"], "psql");
    assert_eq!(command["process"]["user"], "nobody");
    assert_eq!(command["principal"]["subject"], "unix:nobody");
    assert_eq!(command["command"]["kind"], "select");
    assert_eq!(command["target"]["name"], "patients-db");
    let result = events.iter().find(|e| e["kind"] == "command_result").unwrap();
    assert_eq!(result["command_id"], command["event_id"]);
    assert_eq!(result["outcome"]["rows"], PATIENTS as u64);
    assert!(result["outcome"]["masked_count"].as_u64().unwrap() >= 5 * PATIENTS as u64);
    let masked: Vec<&str> = result["outcome"]["masked_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for col in ["ssn", "phone", "email", "dob", "note"] {
        assert!(masked.contains(&col), "{col} listed as masked: {masked:?}");
    }
    assert!(!masked.contains(&"name") && !masked.contains(&"city"));
    assert!(!has_ssn(&f.audit_text()), "no SSN in the audit files");
    let (code, report) = f.agent.verify_audit();
    assert_eq!(code, Some(0), "the hash chain holds: {report}");
}

#[test]
fn destructive_statements_are_blocked_and_the_session_goes_on() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    for sql in [
        "DROP TABLE patients",
        "drop database postgres",
        "TRUNCATE patients",
        "SELECT 1; DrOp /* hidden */ TaBlE\n patients; SELECT 2",
        "/* leading */ truncate -- trailing\n visits",
    ] {
        let out = f.psql(sql);
        assert!(!out.status.success(), "{sql:?} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("loopgate: statement refused by rule builtin."),
            "{sql:?}: {stderr}"
        );
    }
    // One psql session: the refusal, then a query that still runs.
    let host = f.pg.addr.ip().to_string();
    let port = f.pg.addr.port().to_string();
    let out = f.agent.exec_as(
        Some("nobody"),
        &[
            "psql",
            "-X",
            "-A",
            "-t",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "x",
            "-d",
            "postgres",
            "-c",
            "DROP TABLE patients",
            "-c",
            "SELECT 'still here'",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The extended protocol (psycopg): the error, then a healthy session.
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    try:
        conn.execute("DROP TABLE patients")
        print("not refused")
    except psycopg.errors.InsufficientPrivilege as e:
        print("refused:", e.sqlstate)
    conn.rollback()
    print("after:", conn.execute("SELECT count(*) FROM patients WHERE id > %s", (0,)).fetchone()[0])
"#;
    let stdout = f.python_ok(script);
    assert!(
        stdout.contains("refused: 42501") && stdout.contains(&format!("after: {PATIENTS}")),
        "{stdout}"
    );
    let events = f.agent.events();
    let blocked: Vec<&Value> = commands(&events)
        .into_iter()
        .filter(|e| e["decision"]["verdict"] == "block")
        .collect();
    assert!(blocked.len() >= 5, "every refusal is recorded: {}", blocked.len());
    assert!(
        blocked
            .iter()
            .any(|e| e["decision"]["rule_id"] == "builtin.block_drop_table")
    );
    assert!(
        blocked
            .iter()
            .any(|e| e["decision"]["rule_id"] == "builtin.block_truncate")
    );
    assert!(
        blocked
            .iter()
            .any(|e| e["decision"]["rule_id"] == "builtin.block_drop_database")
    );
    assert_eq!(f.pg.psql("SELECT count(*) FROM patients"), PATIENTS.to_string());
}

#[test]
fn psycopg_text_and_binary_results_are_masked() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("SELECT id, name, ssn, email, dob, city FROM patients WHERE id <= %s ORDER BY id", (500,))
            rows = cur.fetchall()
            assert len(rows) == 500, len(rows)
            for r in rows:
                assert r[1] == f"Patient {r[0]}", r
                assert "-" not in str(r[2])[3:4] or "*" in str(r[2]), r
                assert "@example.org" not in str(r[3]), r
            print("binary" if binary else "text", rows[0])
    with conn.cursor() as cur:
        cur.execute("INSERT INTO visits (patient, reason) VALUES (%s, %s) RETURNING id", (1, "ssn 123-45-6789 on file"))
        print("inserted", cur.fetchone()[0])
"#;
    let stdout = f.python_ok(script);
    assert!(
        stdout.contains("text (1, 'Patient 1'") && stdout.contains("binary (1, 'Patient 1'"),
        "{stdout}"
    );
    assert!(!has_ssn(&stdout), "{stdout}");
    // The bound parameter is recorded, masked.
    let events = f.agent.wait_events("the insert", |e| {
        commands(e).iter().any(|c| c["command"]["kind"] == "insert")
    });
    let insert = commands(&events)
        .into_iter()
        .find(|c| c["command"]["kind"] == "insert")
        .unwrap()
        .clone();
    let params = insert["command"]["parameters"].to_string();
    assert!(params.contains("***") && !has_ssn(&params), "{params}");
    assert!(!has_ssn(&f.audit_text()));
}

#[test]
fn copy_to_stdout_is_masked() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    for sql in [
        "COPY patients TO STDOUT",
        "COPY (SELECT id, name, ssn AS a, phone AS b, email AS c, mrn, dob AS born, city, note FROM patients ORDER BY id) TO STDOUT",
    ] {
        let out = f.psql_ok(sql);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), PATIENTS, "{sql}");
        for line in &lines {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 9, "{line}");
            assert!(fields[1].starts_with("Patient "), "{sql}: {line}");
            for (i, col) in [(2, "ssn"), (3, "phone"), (4, "email"), (5, "mrn")] {
                assert!(fields[i].contains('*'), "{sql}: {col} is masked: {line}");
            }
            // A masked date is still a date: the sentinel.
            assert_eq!(fields[6], "1900-01-01", "{sql}: dob is masked: {line}");
        }
        assert!(!has_ssn(&out) && !out.contains("@example.org"), "{sql}");
    }
}

#[test]
fn aliases_do_not_dodge_column_rules() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    let out = f.psql_ok("SELECT p.ssn AS a, p.dob AS b, p.mrn AS c, p.name AS d FROM patients p WHERE id < 20");
    for line in out.lines() {
        let fields: Vec<&str> = line.split('|').collect();
        assert!(
            fields[0].contains('*') && fields[1] == "1900-01-01" && fields[2].contains('*'),
            "{line}"
        );
        assert!(fields[3].starts_with("Patient "), "{line}");
    }
}

#[test]
fn pgbench_runs_through_the_proxy_in_simple_and_prepared_mode() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    f.pg.psql(&format!("GRANT CREATE ON SCHEMA public TO {APP_USER}"));
    let host = f.pg.addr.ip().to_string();
    let port = f.pg.addr.port().to_string();
    let pgbench = loopgate_e2e::postgres::pg_bin().join("pgbench");
    let pgbench = pgbench.to_str().unwrap();
    let base = ["-h", host.as_str(), "-p", port.as_str(), "-U", "bench"];
    // `pgbench -i` starts with DROP TABLE, which the built-in policy
    // refuses (as it should): the tables are made directly by the owner.
    let init = f.agent.exec_as(
        Some("nobody"),
        &[&[pgbench, "-i", "-s", "1", "-q"][..], &base, &["postgres"]].concat(),
    );
    assert!(!init.status.success(), "pgbench -i drops tables: refused");
    assert!(String::from_utf8_lossy(&init.stderr).contains("builtin.block_drop_table"));
    let direct = std::process::Command::new(pgbench)
        .args([
            "-i", "-s", "1", "-q", "-h", &host, "-p", &port, "-U", "postgres", "postgres",
        ])
        .env("PGPASSWORD", loopgate_e2e::postgres::SUPERUSER_PASSWORD)
        .output()
        .unwrap();
    assert!(direct.status.success(), "{}", String::from_utf8_lossy(&direct.stderr));
    f.pg.psql(&format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP_USER}"));
    for mode in ["simple", "prepared"] {
        let run = f.agent.exec_as(
            Some("nobody"),
            &[
                &[pgbench, "-n", "-c", "2", "-t", "100", "-M", mode][..],
                &base,
                &["postgres"],
            ]
            .concat(),
        );
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "pgbench -M {mode}: {}\n{}",
            String::from_utf8_lossy(&run.stderr),
            f.agent.log()
        );
        assert!(
            stdout.contains("number of transactions actually processed: 200/200"),
            "{stdout}"
        );
    }
}

#[test]
fn cancel_requests_reach_the_right_backend() {
    require_ebpf!();
    let f = Clinic::start(PgOptions::default(), "");
    let script = r#"
import sys, threading, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
threading.Timer(1.0, conn.cancel).start()
start = time.time()
try:
    conn.execute("SELECT pg_sleep(30)")
    print("not cancelled")
except psycopg.errors.QueryCanceled:
    print("cancelled after %.1fs" % (time.time() - start))
print(conn.execute("SELECT 'alive'").fetchone()[0])
"#;
    let stdout = f.python_ok(script);
    assert!(stdout.contains("cancelled after"), "{stdout}");
    assert!(stdout.contains("alive"), "{stdout}");
}

#[test]
fn tls_on_both_sides() {
    require_ebpf!();
    let ca_dir = tempfile::tempdir().unwrap();
    let options = PgOptions {
        ssl: true,
        ..PgOptions::default()
    };
    let extra = format!("[tls]\nca_dir = \"{}\"\n", ca_dir.path().join("ca").display());
    let f = Clinic::start_with(options, &extra, |mut target, pg| {
        // client_tls is a target key: it goes before [target.upstream].
        target.extra = target
            .extra
            .replace("[target.upstream]", "client_tls = true\n[target.upstream]");
        target.extra.push_str(&format!(
            "tls = \"verify-full\"\nca_file = \"{}\"\n",
            pg.ca_file.as_ref().unwrap().display()
        ));
        target
    });
    let host = f.pg.addr.ip().to_string();
    let port = f.pg.addr.port().to_string();
    let conninfo = format!("host={host} port={port} user=x dbname=postgres sslmode=require");
    let out = f.agent.exec_as(
        Some("nobody"),
        &[
            "env",
            "HOME=/nonexistent",
            "psql",
            "-X",
            "-A",
            "-t",
            &conninfo,
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "-c",
            "\\conninfo",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.agent.log()
    );
    assert_eq!(
        stdout.lines().next(),
        Some("t"),
        "loopgate reaches the server over TLS: {stdout}"
    );
    assert!(
        stdout.contains("SSL connection"),
        "the client talks TLS to loopgate: {stdout}"
    );
    // The local CA was made on first use, its key root-only.
    let key = std::fs::read_dir(ca_dir.path().join("ca"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("key"))
        .expect("CA key");
    assert_eq!(key.metadata().unwrap().permissions().mode() & 0o077, 0);
}

/// psql inside the cgroup (or in the child cgroup `unit` below it, which
/// makes that the systemd unit loopgate sees), as nobody, presenting
/// `token` as its password.
fn psql_with_token(f: &Clinic, unit: Option<&str>, token: &str, sql: &str) -> Output {
    let conninfo = format!(
        "host={} port={} user=bot dbname=postgres",
        f.pg.addr.ip(),
        f.pg.addr.port()
    );
    let enter = match unit {
        Some(unit) => {
            let dir = f.agent.cgroup_dir.join(unit);
            std::fs::create_dir_all(&dir).unwrap();
            format!("echo $$ > {}/cgroup.procs && ", dir.display())
        }
        None => String::new(),
    };
    // Joining a cgroup needs root; psql itself then runs as nobody.
    let script = format!(
        "{enter}exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
         env HOME=/nonexistent PGPASSWORD=\"$1\" psql -X -A -t \"$2\" -c \"$3\""
    );
    f.agent.exec(&["sh", "-c", &script, "sh", token, &conninfo, sql])
}

#[test]
fn tokens_groups_and_units_decide_with_the_policy_pack() {
    require_ebpf!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuer = runtime
        .block_on(loopgate::identity::test_issuer::TestIssuer::start())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Bulk reads wait for approval; nobody approves here, so keep it short.
    let policies = policy_pack(dir.path(), serde_json::json!({"timeout_secs": 2}));
    let key = dir.path().join("hash.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!(
        "[mask]\nhash_key_file = \"{}\"\n[policy]\ndir = \"{}\"\n[identity.oidc]\nissuer = \"{}\"\naudience = \"loopgate\"\n\
         [[identity.binding]]\nsubject = \"etl-bot\"\nunits = [\"etl.service\"]\n",
        key.display(),
        policies.display(),
        issuer.issuer()
    );
    let f = Clinic::start_with(PgOptions::default(), &extra, |mut target, _| {
        target.extra = target.extra.replace("identity = \"process\"", "identity = \"oidc\"");
        target
    });
    let token = |subject: &str, groups: &[&str]| {
        let mut claims = issuer.claims(subject, "loopgate");
        claims["groups"] = serde_json::json!(groups);
        issuer.mint(&claims)
    };
    let nurse = token("nurse-1", &["clinical-staff"]);
    let analyst = token("analyst-1", &[]);
    let one = "SELECT name, ssn, dob FROM patients WHERE id = 1";

    let out = psql_with_token(&f, None, &nurse, one);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.agent.log()
    );
    let row: Vec<&str> = stdout.trim().split('|').collect();
    assert_eq!(row[0], "Patient 1", "clinical staff see names");
    assert!(row[1].starts_with("***-**-"), "nobody sees an SSN: {stdout}");
    assert!(
        row[2].starts_with("19") && row[2] != "1900-01-01",
        "clinical staff see birth dates: {stdout}"
    );

    let out = psql_with_token(&f, None, &analyst, one);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = stdout.trim().split('|').collect();
    assert!(
        row[0].contains('*') && row[1].starts_with("***-**-") && row[2] == "1900-01-01",
        "{stdout}"
    );

    // Same statement, different decisions: an unbounded read of a PHI table
    // pauses past the row threshold for approval (none comes: it times
    // out), TRUNCATE never runs.
    let out = psql_with_token(&f, None, &nurse, "SELECT name FROM patients");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("hipaa.hold_bulk_phi_select") && stderr.contains("timed out"),
        "{stderr}"
    );
    let out = psql_with_token(&f, None, &nurse, "TRUNCATE visits");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hipaa.deny_truncate"));

    // Tokens that must not get in.
    let mut expired = issuer.claims("nurse-1", "loopgate");
    expired["exp"] = serde_json::json!(loopgate::identity::test_issuer::now_secs() - 600);
    let wrong_audience = issuer.mint(&issuer.claims("nurse-1", "someone-else"));
    for (what, bad) in [
        ("garbage", "not-a-jwt".to_owned()),
        ("expired", issuer.mint(&expired)),
        ("wrong audience", wrong_audience),
    ] {
        let out = psql_with_token(&f, None, &bad, one);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("authentication failed"),
            "{what}: {stderr}"
        );
    }

    // A bound token works only from its unit.
    let etl = token("etl-bot", &[]);
    let out = psql_with_token(&f, None, &etl, "SELECT 1");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "etl-bot outside its unit"
    );
    let out = psql_with_token(&f, Some("etl.service"), &etl, "SELECT 1");
    assert!(
        out.status.success(),
        "etl-bot in etl.service: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every decision is recorded with the principal.
    let events = f.agent.wait_events("commands", |e| commands(e).len() >= 5);
    let nurse_commands: Vec<&Value> = commands(&events)
        .into_iter()
        .filter(|e| e["principal"]["subject"] == "nurse-1")
        .collect();
    assert!(
        nurse_commands
            .iter()
            .any(|e| e["principal"]["groups"][0] == "clinical-staff")
    );
    assert!(
        nurse_commands
            .iter()
            .any(|e| e["decision"]["rule_id"] == "hipaa.deny_truncate")
    );
    let ends: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "session_end" && e["outcome"]["status"] == "auth_failed")
        .collect();
    assert!(ends.len() >= 4, "refused logins are recorded: {}", ends.len());

    // A broken policy file is refused on reload; the old pack keeps deciding.
    std::fs::write(policies.join("broken.rego"), "package loopgate\nthis is not rego {").unwrap();
    f.agent.wait_events("the refused reload", |e| {
        e.iter()
            .any(|e| e["kind"] == "policy_reload" && e["decision"]["verdict"] == "error")
    });
    let out = psql_with_token(&f, None, &nurse, "TRUNCATE visits");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hipaa.deny_truncate"),
        "the old policy still decides"
    );
    drop(runtime);
}
