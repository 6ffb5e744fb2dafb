//! `cargo xtask demo`: loopgate doing its job in a few minutes, on this
//! machine, with nothing left behind.
//!
//! A throwaway PostgreSQL with synthetic patients (identifiers from
//! reserved ranges: SSNs 987-65-432x, which SSA never issues; phones
//! 555-01xx; example.org mail), the agent with the HIPAA pack on a cgroup of
//! its own, and an "automation" — psql and a Python script — inside that
//! cgroup. Each step says what it shows and checks that it happened: a
//! step that does not do what it narrates stops the demo with an error.
//! At the end the auditor's DuckDB query runs over the audit files and
//! `loopgate audit verify` checks the chain, and `loopgate audit report`
//! summarises the run (its HTML page is kept in target/demo/). Everything
//! else it started is stopped and removed, on failure too.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, ExitCode, Output, Stdio},
    time::{Duration, Instant},
};

use loopgate_e2e::{
    Agent, PgServer, Target,
    clinic::policy_pack,
    ebpf_available, group_name, loopgate_bin,
    postgres::{APP_PASSWORD, APP_USER, PgOptions},
    python,
};
use serde_json::{Value, json};

/// The approver group: one every Debian/Ubuntu has (`users`, gid 100).
const APPROVERS_GID: u32 = 100;
/// The second person who approves: `daemon` (uid 1), put in that group.
const APPROVER_UID: u32 = 1;
/// Rows a bulk read may return before it pauses for approval.
const ROW_THRESHOLD: u64 = 5;
const PATIENTS: usize = 20;
/// Where the report's page is kept after the demo.
const REPORT_PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/demo/audit-report.html");

type Step = Result<String, String>;
type StepFn = fn(&mut Demo) -> Step;

fn main() -> ExitCode {
    if !ebpf_available() {
        eprintln!("demo: needs root and cgroup v2 with eBPF (run it as root: sudo cargo xtask demo)");
        return ExitCode::FAILURE;
    }
    let mut demo = match Demo::start() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let steps: [(&str, StepFn); 8] = [
        ("masked rows", Demo::masked_rows),
        ("a script's tool call", Demo::python_tool_call),
        ("a blocked DROP", Demo::blocked_drop),
        ("an export held, then approved", Demo::held_export),
        ("a bulk read paused, then denied", Demo::row_gate),
        ("the auditor's query", Demo::auditor_query),
        ("the chain verified", Demo::verify),
        ("the week's report", Demo::report),
    ];
    let mut summary = Vec::new();
    let mut failed = false;
    for (name, step) in steps {
        narrate(&format!("── {name}"));
        match step(&mut demo) {
            Ok(what) => summary.push((name, "ok", what)),
            Err(why) => {
                eprintln!("demo: step {name:?} did not do what it should: {why}");
                eprintln!("agent log (last lines):\n{}", tail(&demo.agent.log(), 30));
                summary.push((name, "FAILED", why));
                failed = true;
                break;
            }
        }
    }
    narrate("── summary");
    for (name, status, what) in &summary {
        eprintln!("  {status:<6} {name:<34} {what}");
    }
    narrate("cleaning up: the agent detaches, its cgroup and pins are removed, PostgreSQL stops");
    drop(demo);
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

struct Demo {
    // Dropped in this order: the agent first (detaches), then PostgreSQL.
    agent: Agent,
    pg: PgServer,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start() -> Result<Demo, String> {
        narrate("starting a throwaway PostgreSQL 15 with synthetic patients");
        let pg = PgServer::start(PgOptions::default());
        pg.psql(&format!(
            "CREATE TABLE patients (id int PRIMARY KEY, name text, ssn text, phone text, email text, \
                                    mrn text, dob date, city text);
             INSERT INTO patients
               SELECT i, 'Test Patient ' || i, '987-65-432' || (i % 10),
                      '(555) 555-01' || lpad((i % 100)::text, 2, '0'),
                      'patient' || i || '@example.org', 'MRN' || lpad(i::text, 8, '0'),
                      date '1950-01-01' + i * 400, 'Springfield'
               FROM generate_series(1, {PATIENTS}) i;
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON patients TO {APP_USER};"
        ));
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        let group = group_name(APPROVERS_GID)?;
        let policies = policy_pack(
            dir.path(),
            json!({"group": group, "min_approvals": 1, "timeout_secs": 120, "row_threshold": ROW_THRESHOLD}),
        );
        let password_file = dir.path().join("patients-db.password");
        std::fs::write(&password_file, APP_PASSWORD).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
        let hash_key = dir.path().join("hash.key");
        std::fs::write(&hash_key, "demo-demo-demo-demo-demo-demo-32").map_err(|e| e.to_string())?;
        narrate(&format!(
            "starting loopgate with the HIPAA pack: PostgreSQL at {} is a target; approvers are group {group:?}",
            pg.addr
        ));
        let target = Target::postgres("patients-db", pg.addr, APP_USER, &password_file);
        let extra = format!(
            "[mask]\nhash_key_file = \"{}\"\n[policy]\ndir = \"{}\"\n",
            hash_key.display(),
            policies.display()
        );
        let agent = Agent::start(&[target], &extra);
        narrate(&format!(
            "the automation runs in cgroup {} as user nobody, with no database password",
            agent.cgroup
        ));
        Ok(Demo { agent, pg, _dir: dir })
    }

    /// psql inside the intercepted cgroup, as nobody, with no password.
    fn psql(&self, sql: &str) -> Command {
        let mut cmd = self.agent.loopgate(&["exec"]);
        cmd.args(["--user", "nobody", "--", "psql", "-X", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                &self.pg.addr.ip().to_string(),
                "-p",
                &self.pg.addr.port().to_string(),
            ])
            .args(["-U", "automation", "-d", "postgres", "-c", sql]);
        cmd
    }

    fn masked_rows(&mut self) -> Step {
        let sql = "SELECT id, name, ssn, phone, email, mrn FROM patients ORDER BY id LIMIT 3";
        let raw = self.pg.psql(sql);
        eprintln!(
            "  the database itself holds (read directly, as its superuser):\n{}",
            indent(&raw)
        );
        eprintln!("  the automation asks:  {sql}");
        let out = run(self.psql(sql))?;
        eprintln!("{}", indent(&out));
        if out.contains("987-65-432") || out.contains("@example.org") || out.contains("Test Patient") {
            return Err("raw PHI reached the automation".into());
        }
        Ok("SSN, name, phone, e-mail and MRN masked; the automation never held a password".into())
    }

    fn python_tool_call(&mut self) -> Step {
        let script = "import sys, psycopg\n\
                      with psycopg.connect(sys.argv[1]) as c:\n\
                      \x20   row = c.execute('select name, email, phone, dob from patients where id = %s', (7,)).fetchone()\n\
                      \x20   print(row)\n";
        let dsn = format!(
            "host={} port={} user=agent dbname=postgres connect_timeout=10",
            self.pg.addr.ip(),
            self.pg.addr.port()
        );
        let mut cmd = self.agent.loopgate(&["exec"]);
        cmd.arg("--").arg(python()).args(["-c", script, &dsn]);
        eprintln!(
            "  a Python agent, as root (root in the cgroup is intercepted too), looks up patient 7 with psycopg:"
        );
        let out = run(cmd)?;
        eprintln!("{}", indent(&out));
        if out.contains("Test Patient 7") || out.contains("patient7@example.org") {
            return Err("raw PHI reached the script".into());
        }
        Ok("the same masking for a driver's prepared statement".into())
    }

    fn blocked_drop(&mut self) -> Step {
        eprintln!("  the automation tries:  DROP TABLE patients");
        let out = self.psql("DROP TABLE patients").output().map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{}", indent(&stderr));
        if out.status.success() {
            return Err("DROP TABLE ran".into());
        }
        let still_there = self.pg.psql("SELECT count(*) FROM patients");
        if still_there.trim() != PATIENTS.to_string() {
            return Err(format!("patients has {still_there} rows after the DROP"));
        }
        let rule = stderr
            .split("rule ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .unwrap_or("?")
            .to_owned();
        Ok(format!("refused by {rule}, never reached the database"))
    }

    fn held_export(&mut self) -> Step {
        let sql = "COPY patients TO STDOUT";
        eprintln!("  the automation exports:  {sql}");
        let child = spawn(self.psql(sql))?;
        let request = self.wait_pending()?;
        let id = request["id"].as_str().unwrap_or_default().to_owned();
        eprintln!(
            "  held: approval {id} (rule {}), psql waits in place",
            request["rule_id"].as_str().unwrap_or("?")
        );
        eprintln!(
            "  a second person ({}) approves: loopgate approvals approve {id}",
            user_name(APPROVER_UID)
        );
        let approved = self.approvals(&["approve", &id])?;
        eprintln!("{}", indent(&approved));
        let out = finish(child)?;
        if !out.status.success() {
            return Err(format!(
                "the approved export failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let data = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "  the export runs, masked:\n{}",
            indent(&data.lines().take(3).collect::<Vec<_>>().join("\n"))
        );
        if data.contains("987-65-432") || data.contains("@example.org") {
            return Err("the export carried raw PHI".into());
        }
        Ok(format!(
            "approval {id} released it; {} rows, masked",
            data.lines().count()
        ))
    }

    fn row_gate(&mut self) -> Step {
        let sql = "SELECT id, name, ssn FROM patients";
        eprintln!("  the automation reads everything:  {sql}");
        let child = spawn(self.psql(sql))?;
        let request = self.wait_pending()?;
        let id = request["id"].as_str().unwrap_or_default().to_owned();
        eprintln!("  paused after {ROW_THRESHOLD} rows: approval {id}");
        eprintln!("  the approver says no: loopgate approvals deny {id} --reason 'use the reporting view'");
        self.approvals(&["deny", &id, "--reason", "use the reporting view"])?;
        let out = finish(child)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{}", indent(&stderr));
        if out.status.success() {
            return Err("the denied read completed".into());
        }
        if !stderr.contains("denied by") {
            return Err("the client was not told of the denial".into());
        }
        Ok(format!(
            "paused after {ROW_THRESHOLD} rows, denied; the query was cancelled"
        ))
    }

    fn auditor_query(&mut self) -> Step {
        narrate("stopping the agent: every event is sealed into Parquet");
        let status = self.agent.sigterm();
        if !status.success() {
            return Err(format!("the agent stopped with {status}"));
        }
        let query = "select kind, decision, coalesce(decision_rule_id, '') as rule, \
                     coalesce(process_user, '') as process_user, count(*) as events \
                     from read_parquet(?, hive_partitioning = true) \
                     where kind in ('command', 'approval') group by all order by kind, decision, rule";
        let script = format!(
            "import sys, duckdb\n\
             rows = duckdb.sql({query:?}.replace('?', repr(sys.argv[1]))).fetchall()\n\
             print(f\"{{'kind':<10}} {{'decision':<10}} {{'rule':<32}} {{'process':<8}} events\")\n\
             for k, d, r, u, n in rows: print(f'{{k:<10}} {{d:<10}} {{r:<32}} {{u:<8}} {{n}}')\n"
        );
        let glob = format!("{}/**/*.parquet", self.agent.audit_dir.display());
        eprintln!("  the auditor asks DuckDB: who did what, and what was decided?");
        let out = run({
            let mut c = Command::new(python());
            c.args(["-c", &script, &glob]);
            c
        })?;
        eprintln!("{}", indent(&out));
        for needed in ["block", "hold", "approved", "denied"] {
            if !out.contains(needed) {
                return Err(format!("no {needed:?} decision in the audit"));
            }
        }
        Ok("every command, hold, approval and denial, with the process behind it".into())
    }

    fn verify(&mut self) -> Step {
        let (code, out) = self.agent.verify_audit();
        eprintln!("{}", indent(&out));
        match code {
            Some(0) => Ok("loopgate audit verify: the hash chain is intact".into()),
            other => Err(format!("verify exited with {other:?}")),
        }
    }

    fn report(&mut self) -> Step {
        let page = Path::new(REPORT_PAGE);
        if let Some(dir) = page.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let out = run({
            let mut c = Command::new(loopgate_bin());
            c.args(["audit", "report", "--since", "1h", "--dir"])
                .arg(&self.agent.audit_dir)
                .arg("--html")
                .arg(page);
            c
        })?;
        eprintln!("{}", indent(&out));
        for needed in ["blocked", "approved by", "denied"] {
            if !out.contains(needed) {
                return Err(format!("the report does not say {needed:?}"));
            }
        }
        let page = std::fs::canonicalize(page).map_err(|e| format!("{}: {e}", page.display()))?;
        Ok(format!(
            "per principal and target, refusals and approvals; the page: {}",
            page.display()
        ))
    }

    fn approvals(&self, args: &[&str]) -> Result<String, String> {
        let out = self.agent.approvals_as(APPROVER_UID, &[APPROVERS_GID], args);
        ok(&out)
    }

    /// The one pending approval request, once it appears.
    fn wait_pending(&self) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let list: Vec<Value> =
                serde_json::from_str(&self.approvals(&["list", "--json"])?).map_err(|e| e.to_string())?;
            if let Some(first) = list.into_iter().next() {
                return Ok(first);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("nothing was held within 30 s".into())
    }
}

fn narrate(line: &str) {
    eprintln!("\n{line}");
}

fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("    │ {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn ok(out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn run(mut cmd: Command) -> Result<String, String> {
    ok(&cmd.output().map_err(|e| e.to_string())?)
}

fn spawn(mut cmd: Command) -> Result<Child, String> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())
}

fn finish(child: Child) -> Result<Output, String> {
    child.wait_with_output().map_err(|e| e.to_string())
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}
