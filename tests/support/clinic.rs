//! The clinic the PostgreSQL tests run against: a real PostgreSQL with
//! PHI-shaped data, loopgate in front, and clients inside the cgroup.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

use crate::{
    Agent, Target,
    postgres::{APP_PASSWORD, APP_USER, PgOptions, PgServer},
};

/// Rows in the synthetic patients table.
pub const PATIENTS: usize = 3000;

/// A PostgreSQL server with a synthetic `patients` table (PHI-shaped
/// values) and a `visits` table, behind a loopgate agent whose target is
/// that server.
pub struct Clinic {
    pub pg: PgServer,
    pub agent: Agent,
    _secrets: tempfile::TempDir,
}

impl Clinic {
    pub fn start(options: PgOptions, agent_extra: &str) -> Clinic {
        Clinic::start_with(options, agent_extra, |target, _| target)
    }

    /// Starts with the target adjusted by `adjust` (given the server).
    pub fn start_with(
        options: PgOptions,
        agent_extra: &str,
        adjust: impl FnOnce(Target, &PgServer) -> Target,
    ) -> Clinic {
        Clinic::start_sized(options, PATIENTS, agent_extra, adjust)
    }

    /// Starts with `patients` rows in the patients table.
    pub fn start_sized(
        options: PgOptions,
        patients: usize,
        agent_extra: &str,
        adjust: impl FnOnce(Target, &PgServer) -> Target,
    ) -> Clinic {
        let pg = PgServer::start(options);
        pg.psql(&format!(
            "CREATE TABLE patients (id int PRIMARY KEY, name text, ssn text UNIQUE, phone text, email text, \
                                    mrn text, dob date, city text, note text);
             INSERT INTO patients
               SELECT i, 'Patient ' || i,
                      lpad((i % 600 + 100)::text, 3, '0') || '-' || lpad((i % 89 + 10)::text, 2, '0') || '-' || lpad((i + 1000)::text, 4, '0'),
                      '(555) ' || lpad((i % 800 + 200)::text, 3, '0') || '-' || lpad((i % 9000 + 1000)::text, 4, '0'),
                      'patient' || i || '@example.org',
                      'MRN' || lpad(i::text, 8, '0'),
                      date '1940-01-01' + (i * 37 % 25000),
                      'City ' || (i % 50),
                      CASE WHEN i % 10 = 0 THEN 'call back on 617-555-' || lpad((i % 9000 + 1000)::text, 4, '0') ELSE 'ok' END
               FROM generate_series(1, {patients}) i;
             GRANT ALL ON patients TO {APP_USER};
             CREATE TABLE visits (id serial PRIMARY KEY, patient int, reason text);
             GRANT ALL ON visits, visits_id_seq TO {APP_USER};"
        ));
        let secrets = tempfile::tempdir().unwrap();
        let password_file = secrets.path().join("patients-db");
        std::fs::write(&password_file, APP_PASSWORD).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let target = adjust(Target::postgres("patients-db", pg.addr, APP_USER, &password_file), &pg);
        let agent = Agent::start(&[target], agent_extra);
        Clinic {
            pg,
            agent,
            _secrets: secrets,
        }
    }

    /// psql inside the cgroup, as an unprivileged user who knows no password.
    pub fn psql(&self, sql: &str) -> Output {
        self.psql_command(sql).output().expect("run psql")
    }

    /// The [`Clinic::psql`] command, to spawn and wait for later.
    pub fn psql_command(&self, sql: &str) -> Command {
        let port = self.pg.addr.port().to_string();
        let host = self.pg.addr.ip().to_string();
        let mut cmd = self.agent.loopgate(&["exec"]);
        cmd.args(["--user", "nobody", "--"]).args([
            "env",
            "PGCONNECT_TIMEOUT=10",
            "psql",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "clinic-bot",
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
        cmd
    }

    pub fn psql_ok(&self, sql: &str) -> String {
        let out = self.psql(sql);
        assert!(
            out.status.success(),
            "psql failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.agent.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a Python script (the test venv: psycopg) inside the cgroup;
    /// the script gets the DSN as its first argument.
    pub fn python(&self, script: &str) -> Output {
        self.python_command(script, &[]).output().expect("run python")
    }

    /// The [`Clinic::python`] command, to spawn and wait for later; `args`
    /// follow the DSN.
    pub fn python_command(&self, script: &str, args: &[&str]) -> Command {
        let python = crate::python();
        let dsn = format!(
            "host={} port={} user=clinic-bot dbname=postgres connect_timeout=10",
            self.pg.addr.ip(),
            self.pg.addr.port()
        );
        let mut cmd = self.agent.loopgate(&["exec"]);
        cmd.arg("--").arg(python).args(["-c", script, &dsn]).args(args);
        cmd
    }

    /// Runs a Python script inside the cgroup and returns its stdout;
    /// fails the test (with the agent's log) if the script fails.
    pub fn python_ok(&self, script: &str) -> String {
        let out = self.python(script);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python failed: {}\n{stdout}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.agent.log()
        );
        stdout
    }

    /// The whole audit trail, decoded, as text.
    pub fn audit_text(&self) -> String {
        self.agent
            .events()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether `text` holds something shaped like a US SSN.
pub fn has_ssn(text: &str) -> bool {
    let b = text.as_bytes();
    b.windows(11).any(|w| {
        w.iter().enumerate().all(|(i, c)| {
            if i == 3 || i == 6 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
    })
}

/// The `command` events among `events`.
pub fn commands(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["kind"] == "command").collect()
}

/// Copies the shipped HIPAA policy pack to `dir/policies`, with the
/// `approval` settings of its catalogue overridden by `approval` (keys as
/// in phi_catalog.json); returns the pack's directory.
pub fn policy_pack(dir: &Path, approval: Value) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(crate::env::workspace_root().join("policies"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(entry.path(), policies.join(entry.file_name())).unwrap();
    }
    let catalog_path = policies.join("phi_catalog.json");
    let mut catalog: Value = serde_json::from_slice(&std::fs::read(&catalog_path).unwrap()).unwrap();
    for (key, value) in approval.as_object().expect("approval settings are an object") {
        catalog["phi_catalog"]["approval"][key] = value.clone();
    }
    std::fs::write(&catalog_path, serde_json::to_vec_pretty(&catalog).unwrap()).unwrap();
    policies
}
