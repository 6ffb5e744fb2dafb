//! Just-in-time approvals end to end: the shipped HIPAA pack holds COPY TO
//! of PHI and pauses bulk PHI reads past its row threshold; unmodified psql
//! and psycopg wait in place while approvers — other unix users, as the
//! kernel names them, or OIDC tokens over the loopback API — decide.
use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::{Child, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use loopgate::identity::test_issuer::TestIssuer;
use loopgate_e2e::{
    clinic::{Clinic, PATIENTS, has_ssn, policy_pack},
    postgres::PgOptions,
    require_ebpf,
};
use serde_json::{Value, json};

/// The approver group is a unix group every Debian/Ubuntu has (`users`).
const APPROVERS_GID: u32 = 100;
/// daemon and bin approve; sys is no approver; nobody runs psql.
const ALICE: u32 = 1;
const BOB: u32 = 2;
const MALLORY: u32 = 3;
const NOBODY: u32 = 65534;

const COPY_PATIENTS: &str = "COPY patients TO STDOUT";

fn approver_group() -> String {
    loopgate_e2e::group_name(APPROVERS_GID).unwrap()
}

/// A clinic whose pack asks `approval` (merged into phi_catalog.json, with
/// the approver group set) and whose agent config adds `extra`.
fn clinic(approval: Value, patients: usize, extra: &str) -> (Clinic, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut approval = approval;
    approval["group"] = json!(approver_group());
    let policies = policy_pack(dir.path(), approval);
    let key = dir.path().join("hash.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let extra = format!(
        "[mask]\nhash_key_file = \"{}\"\n[policy]\ndir = \"{}\"\n{extra}",
        key.display(),
        policies.display()
    );
    let options = PgOptions {
        max_connections: 150,
        ..PgOptions::default()
    };
    let f = Clinic::start_sized(options, patients, &extra, |t, _| t);
    (f, dir)
}

fn approvals(f: &Clinic, uid: u32, groups: &[u32], args: &[&str]) -> Output {
    f.agent.approvals_as(uid, groups, args)
}

/// What `uid` (in the approver group) sees pending.
fn pending(f: &Clinic, uid: u32, groups: &[u32]) -> Vec<Value> {
    let out = approvals(f, uid, groups, &["list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Waits until `n` requests are pending.
fn wait_pending(f: &Clinic, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = pending(f, ALICE, &[APPROVERS_GID]);
        if list.len() >= n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} requests pending\n{}",
            list.len(),
            f.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(mut cmd: std::process::Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// The approval events of request `id`, in order.
fn transitions<'e>(events: &'e [Value], id: &str) -> Vec<&'e Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "approval" && e["decision"]["approval_id"] == id)
        .collect()
}

/// An HTTP server that hands over the body of every request it gets.
fn webhook_receiver() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/approvals", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if tx
                .send(serde_json::from_slice(&request_body(&mut stream)).unwrap())
                .is_err()
            {
                return;
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    (url, rx)
}

/// Reads one HTTP request (with a Content-Length) and returns its body.
fn request_body(stream: &mut std::net::TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a content-length");
            if raw.len() >= end + 4 + length {
                return raw[end + 4..end + 4 + length].to_vec();
            }
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "webhook request cut short");
        raw.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn copy_waits_in_place_until_an_approver_approves() {
    require_ebpf!();
    let (url, webhook) = webhook_receiver();
    let (f, _dir) = clinic(
        json!({"min_approvals": 1, "timeout_secs": 600}),
        PATIENTS,
        &format!("[approvals]\nwebhook_url = \"{url}\"\n"),
    );
    let psql = spawn(f.psql_command(COPY_PATIENTS));
    let list = wait_pending(&f, 1);
    let request = &list[0];
    let id = request["id"].as_str().unwrap().to_owned();
    assert_eq!(request["rule_id"], "hipaa.hold_phi_export");
    assert_eq!(request["requester"], "unix:nobody");
    assert_eq!(request["process"]["comm"], "psql");
    assert_eq!(request["command"], COPY_PATIENTS);
    assert_eq!(request["approver_group"], approver_group());

    // Not an approver: sees nothing, decides nothing.
    assert!(pending(&f, MALLORY, &[]).is_empty());
    let out = approvals(&f, MALLORY, &[], &["approve", &id]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("not in the approver group"),
        "{}",
        text(&out.stderr)
    );
    // The requester, even in the approver group, cannot approve.
    let out = approvals(&f, NOBODY, &[APPROVERS_GID], &["approve", &id]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("cannot approve it"),
        "{}",
        text(&out.stderr)
    );
    let shown = ok(&approvals(&f, ALICE, &[APPROVERS_GID], &["show", &id]));
    assert!(
        shown.contains(&id) && shown.contains("hipaa.hold_phi_export"),
        "{shown}"
    );

    // The webhook announced it, escaped, with the masked command.
    let hook = webhook.recv_timeout(Duration::from_secs(20)).expect("webhook");
    assert_eq!(hook["approval"]["id"], id.as_str());
    let hook_text = hook["text"].as_str().unwrap();
    assert!(
        hook_text.contains(&id) && hook_text.contains(COPY_PATIENTS),
        "{hook_text}"
    );

    // Still waiting, connection open, nothing sent yet.
    std::thread::sleep(Duration::from_millis(500));
    let mut psql = psql;
    assert!(psql.try_wait().unwrap().is_none(), "psql must wait for the decision");

    let said = ok(&approvals(&f, ALICE, &[APPROVERS_GID], &["approve", &id]));
    assert!(said.contains("the command runs"), "{said}");
    let outcome = webhook.recv_timeout(Duration::from_secs(20)).expect("outcome webhook");
    assert_eq!(outcome["outcome"], "approved");
    assert_eq!(outcome["approval"]["id"], id.as_str());
    let out = psql.wait_with_output().unwrap();
    let rows = ok(&out);
    assert_eq!(rows.lines().count(), PATIENTS, "every row after approval");
    assert!(!has_ssn(&rows), "rows are masked");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("waits for approval {id}")),
        "psql printed the notice: {stderr}"
    );

    // The trail ties the command, its approval and its result together.
    let events = f.agent.wait_events("the result", |e| {
        e.iter()
            .any(|e| e["kind"] == "command_result" && e["outcome"]["rows"] == PATIENTS as u64)
    });
    let command = events
        .iter()
        .find(|e| e["kind"] == "command" && e["decision"]["verdict"] == "hold")
        .expect("the held command");
    let command_id = command["event_id"].as_str().unwrap();
    let steps = transitions(&events, &id);
    let verdicts: Vec<&str> = steps
        .iter()
        .map(|e| e["decision"]["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["hold", "approved"]);
    assert!(steps.iter().all(|e| e["command_id"] == command_id));
    assert_eq!(steps[1]["decision"]["approver"], "unix:daemon");
    let result = events
        .iter()
        .find(|e| e["kind"] == "command_result" && e["command_id"] == command_id)
        .expect("result tied to the command");
    assert_eq!(result["outcome"]["status"], "ok");
    // The session's timeline reads as what happened.
    let session = command["session_id"].as_str().unwrap();
    let replay = std::process::Command::new(loopgate_e2e::loopgate_bin())
        .args(["audit", "replay", session, "--dir"])
        .arg(&f.agent.audit_dir)
        .output()
        .unwrap();
    let replay = ok(&replay);
    assert!(
        replay.contains(&format!(
            "decision=approved rule=hipaa.hold_phi_export approval={id} approver=unix:daemon"
        )),
        "{replay}"
    );
    assert!(!has_ssn(&f.audit_text()));
    assert_eq!(f.agent.verify_audit().0, Some(0));

    // The auditor's question, as agent/src/audit/README.md asks it, over
    // the Parquet files the stopped agent leaves.
    let mut f = f;
    f.agent.sigterm();
    let script = "import sys, duckdb\n\
        con = duckdb.connect()\n\
        con.execute(f\"create view audit as select * from read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning=true)\")\n\
        print(con.execute(\"SELECT c.principal_subject, c.command_text, a.decision_approver \
        FROM audit c JOIN audit a ON a.command_id = c.event_id \
        WHERE c.kind = 'command' AND a.kind = 'approval' AND a.decision = 'approved'\").fetchall())\n";
    let out = std::process::Command::new(loopgate_e2e::python())
        .args(["-c", script])
        .arg(&f.agent.audit_dir)
        .output()
        .unwrap();
    assert_eq!(
        ok(&out).trim(),
        "[('unix:nobody', 'COPY patients TO STDOUT', 'unix:daemon')]"
    );
}

#[test]
fn deny_timeout_and_two_person_approval() {
    require_ebpf!();
    let (f, _dir) = clinic(json!({"min_approvals": 2, "timeout_secs": 6}), PATIENTS, "");

    // Deny: psycopg gets the reason as an error; its connection goes on.
    let script = format!(
        "import sys, psycopg\n\
         conn = psycopg.connect(sys.argv[1], autocommit=True)\n\
         try:\n\
         \x20   with conn.cursor().copy({COPY_PATIENTS:?}) as copy:\n\
         \x20       for _ in copy: pass\n\
         \x20   print('copied')\n\
         except psycopg.Error as e:\n\
         \x20   print('error', e.diag.sqlstate, e.diag.message_primary)\n\
         print('after', conn.execute('SELECT count(*) FROM visits').fetchone()[0])\n"
    );
    let python = spawn(f.python_command(&script, &[]));
    let id = wait_pending(&f, 1)[0]["id"].as_str().unwrap().to_owned();
    let said = ok(&approvals(
        &f,
        ALICE,
        &[APPROVERS_GID],
        &["deny", &id, "--reason", "no ticket for this export"],
    ));
    assert!(said.contains("denied"), "{said}");
    let stdout = ok(&python.wait_with_output().unwrap());
    assert!(
        stdout.contains("error 42501") && stdout.contains("denied by unix:daemon: no ticket for this export"),
        "{stdout}"
    );
    assert!(stdout.contains("after 0"), "the session goes on: {stdout}");

    // Two approvers needed; one cannot count twice.
    let psql = spawn(f.psql_command(COPY_PATIENTS));
    let id2 = wait_pending(&f, 1)[0]["id"].as_str().unwrap().to_owned();
    let said = ok(&approvals(&f, ALICE, &[APPROVERS_GID], &["approve", &id2]));
    assert!(said.contains("1 of 2"), "{said}");
    let again = approvals(&f, ALICE, &[APPROVERS_GID], &["approve", &id2]);
    assert!(
        text(&again.stderr).contains("already approved"),
        "{}",
        text(&again.stderr)
    );
    ok(&approvals(&f, BOB, &[APPROVERS_GID], &["approve", &id2]));
    assert_eq!(ok(&psql.wait_with_output().unwrap()).lines().count(), PATIENTS);

    // Nobody decides: refused when the policy's timeout passes.
    let started = Instant::now();
    let out = f.psql(COPY_PATIENTS);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("timed out"), "{}", text(&out.stderr));
    assert!(started.elapsed() >= Duration::from_secs(5), "{:?}", started.elapsed());

    let events = f.agent.wait_events("the timeout", |e| {
        e.iter()
            .any(|e| e["kind"] == "approval" && e["decision"]["verdict"] == "timed_out")
    });
    let denied = transitions(&events, &id);
    assert_eq!(denied.last().unwrap()["decision"]["verdict"], "denied");
    assert_eq!(
        denied.last().unwrap()["decision"]["reason"],
        "no ticket for this export"
    );
    let two = transitions(&events, &id2);
    let approvers: Vec<&str> = two
        .iter()
        .filter(|e| e["decision"]["verdict"] == "approved")
        .map(|e| e["decision"]["approver"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, ["unix:daemon", "unix:bin"]);
}

#[test]
fn results_pause_at_the_row_threshold_until_approved() {
    require_ebpf!();
    // The pack's threshold is 1000 rows.
    let (f, dir) = clinic(json!({"min_approvals": 1, "timeout_secs": 600}), 10_000, "");
    let progress = dir.path().join("progress");
    let stream = |sql: &str| {
        format!(
            "import sys, psycopg\n\
             n = 0\n\
             def mark():\n\
             \x20   open({progress:?}, 'w').write(str(n))\n\
             conn = psycopg.connect(sys.argv[1], autocommit=True)\n\
             try:\n\
             \x20   for row in conn.cursor().stream({sql:?}):\n\
             \x20       n += 1\n\
             \x20       if n % 100 == 0: mark()\n\
             \x20   mark()\n\
             \x20   print('done', n)\n\
             except psycopg.Error as e:\n\
             \x20   mark()\n\
             \x20   print('error', n, e.diag.sqlstate, e.diag.message_primary)\n\
             print('after', conn.execute('SELECT count(*) FROM visits').fetchone()[0])\n",
            progress = progress.display().to_string()
        )
    };
    let read_progress = || std::fs::read_to_string(&progress).unwrap_or_default();

    // Approve: 1000 rows, a pause, then the rest.
    let python = spawn(f.python_command(&stream("SELECT id, name, ssn FROM patients"), &[]));
    let request = wait_pending(&f, 1).remove(0);
    assert_eq!(request["rule_id"], "hipaa.hold_bulk_phi_select");
    assert_eq!(request["rows_sent"], 1000);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        read_progress(),
        "1000",
        "the client has exactly the rows before the threshold"
    );
    ok(&approvals(
        &f,
        ALICE,
        &[APPROVERS_GID],
        &["approve", request["id"].as_str().unwrap()],
    ));
    let stdout = ok(&python.wait_with_output().unwrap());
    assert!(stdout.contains("done 10000"), "{stdout}");

    // Deny: wide rows keep the server writing; while paused it waits on the
    // client (backpressure); denied, its query is cancelled.
    std::fs::remove_file(&progress).unwrap();
    let wide = "SELECT id, ssn, repeat(city, 300) AS pad FROM patients";
    let python = spawn(f.python_command(&stream(wide), &[]));
    let id = wait_pending(&f, 1)[0]["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read_progress(), "1000");
    let waiting = f.pg.psql(
        "SELECT wait_event FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%repeat(city%' \
         AND pid <> pg_backend_pid()",
    );
    assert_eq!(waiting.trim(), "ClientWrite", "the server waits on loopgate's socket");
    ok(&approvals(
        &f,
        ALICE,
        &[APPROVERS_GID],
        &["deny", &id, "--reason", "too much"],
    ));
    let stdout = ok(&python.wait_with_output().unwrap());
    assert!(
        stdout.contains("error 1000 42501") && stdout.contains("too much"),
        "not one row past the threshold, then the reason: {stdout}"
    );
    assert!(stdout.contains("after 0"), "{stdout}");
    let events = f.agent.wait_events("the denied result", |e| {
        e.iter()
            .any(|e| e["kind"] == "command_result" && e["outcome"]["status"] == "denied")
    });
    let result = events
        .iter()
        .find(|e| e["kind"] == "command_result" && e["outcome"]["status"] == "denied")
        .unwrap();
    assert_eq!(
        result["outcome"]["error_code"], "57014",
        "the server's query was cancelled: {result}"
    );

    // Fetching in batches (Execute with a row limit, as JDBC does) counts
    // toward one threshold: 400 + 400 + 200 rows, then the pause.
    std::fs::remove_file(&progress).unwrap();
    let progress_arg = progress.display().to_string();
    let batches = spawn(f.python_command(
        loopgate_e2e::PG_BATCHES,
        &[&progress_arg, "SELECT id, ssn FROM patients", "400"],
    ));
    let request = wait_pending(&f, 1).remove(0);
    assert_eq!(request["rows_sent"], 1000);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read_progress(), "1000");
    let id = request["id"].as_str().unwrap();
    ok(&approvals(
        &f,
        ALICE,
        &[APPROVERS_GID],
        &["deny", id, "--reason", "batches too"],
    ));
    let stdout = ok(&batches.wait_with_output().unwrap());
    assert!(
        stdout.contains("batch 400 rows\nbatch 400 rows\nnotice\nerror 42501") && stdout.contains("batches too"),
        "{stdout}"
    );

    // A cursor's rows come by FETCH, which no threshold follows: an
    // unbounded cursor over PHI waits before it is declared.
    let psql = spawn(f.psql_command("BEGIN; DECLARE c CURSOR FOR SELECT ssn FROM patients; FETCH 5000 FROM c; COMMIT"));
    let request = wait_pending(&f, 1).remove(0);
    assert_eq!(request["rule_id"], "hipaa.hold_phi_cursor");
    ok(&approvals(
        &f,
        ALICE,
        &[APPROVERS_GID],
        &["deny", request["id"].as_str().unwrap()],
    ));
    let out = psql.wait_with_output().unwrap();
    assert!(!out.status.success() && out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn fifty_held_commands_decided_in_random_order_reach_the_right_clients() {
    require_ebpf!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuer = runtime.block_on(TestIssuer::start()).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let extra = format!(
        "[identity.oidc]\nissuer = \"{}\"\naudience = \"loopgate\"\n\
         [[identity.binding]]\nsubject = \"etl-bot\"\nunits = [\"etl.service\"]\n[approvals]\nhttp_listen = \"{api}\"\n",
        issuer.issuer()
    );
    let (f, _dir) = clinic(json!({"min_approvals": 1, "timeout_secs": 600}), PATIENTS, &extra);
    const N: usize = 50;
    let clients: Vec<Child> = (1..=N)
        .map(|i| {
            spawn(f.psql_command(&format!(
                "COPY (SELECT id, city FROM patients WHERE id = {i}) TO STDOUT"
            )))
        })
        .collect();
    let list = wait_pending(&f, N);
    assert_eq!(f.agent.status()["pending_approvals"], N);
    // Commands are recorded (and shown) with literals as `?`: requests of
    // the same shape are told apart by the process the kernel saw.
    let ids: Vec<String> = clients
        .iter()
        .enumerate()
        .map(|(n, client)| {
            let found: Vec<&Value> = list.iter().filter(|r| r["process"]["pid"] == client.id()).collect();
            assert_eq!(found.len(), 1, "one request for client {}", n + 1);
            found[0]["id"].as_str().unwrap().to_owned()
        })
        .collect();

    let mut claims = issuer.claims("approver-web", "loopgate");
    claims["groups"] = json!([approver_group()]);
    let token = issuer.mint(&claims);
    let curl = |args: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS"])
            .args(args)
            .output()
            .unwrap()
    };
    let listed = ok(&curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("http://{api}/v1/approvals"),
    ]));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["approvals"].as_array().unwrap().len(),
        N,
        "the API lists what the CLI does"
    );
    let anonymous = ok(&curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{api}/v1/approvals"),
    ]));
    assert_eq!(anonymous, "401", "the API needs a bearer token");
    // A token bound to a unit decides only from that unit, as it logs in.
    let mut bound = issuer.claims("etl-bot", "loopgate");
    bound["groups"] = json!([approver_group()]);
    let out = approvals(&f, ALICE, &[], &["--token", &issuer.mint(&bound), "approve", &ids[0]]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("token is not accepted from this process"),
        "{}",
        text(&out.stderr)
    );
    let mut order: Vec<usize> = (1..=N).collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("decision order seed {seed}");
    let mut x = seed;
    for k in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(k, (x % (k as u64 + 1)) as usize);
    }
    for &i in &order {
        let id = &ids[i - 1];
        match i % 3 {
            0 => {
                ok(&approvals(
                    &f,
                    ALICE,
                    &[APPROVERS_GID],
                    &["deny", id, "--reason", &format!("no {i}")],
                ));
            }
            1 => {
                ok(&approvals(&f, ALICE, &[APPROVERS_GID], &["approve", id]));
            }
            _ => {
                let out = std::process::Command::new("curl")
                    .args(["-sS", "--fail-with-body", "-X", "POST", "-H"])
                    .arg(format!("Authorization: Bearer {token}"))
                    .arg(format!("http://{api}/v1/approvals/{id}/approve"))
                    .output()
                    .unwrap();
                let answer = ok(&out);
                assert!(answer.contains("released"), "{answer}");
            }
        }
    }
    for (n, client) in clients.into_iter().enumerate() {
        let i = n + 1;
        let out = client.wait_with_output().unwrap();
        if i % 3 == 0 {
            assert!(
                !out.status.success() && text(&out.stderr).contains(&format!("no {i}")),
                "client {i}: {}",
                text(&out.stderr)
            );
        } else {
            let stdout = ok(&out);
            assert!(
                stdout.starts_with(&format!("{i}\t")),
                "client {i} got its own row: {stdout}"
            );
        }
    }
    let events = f.agent.events();
    let via_api = events
        .iter()
        .filter(|e| e["kind"] == "approval" && e["decision"]["approver"] == "approver-web")
        .count();
    assert_eq!(via_api, (1..=N).filter(|i| i % 3 == 2).count());
    drop(runtime);
}

#[test]
fn a_stop_or_crash_while_pending_fails_closed_and_is_recorded() {
    require_ebpf!();
    let (mut f, _dir) = clinic(json!({"min_approvals": 1, "timeout_secs": 600}), 100, "");

    // The client leaves while held: the request ends with it.
    let mut psql = spawn(f.psql_command(COPY_PATIENTS));
    let left = wait_pending(&f, 1)[0]["id"].as_str().unwrap().to_owned();
    psql.kill().unwrap();
    psql.wait().unwrap();
    f.agent.wait_events("the abandoned request", |e| {
        transitions(e, &left).iter().any(|t| {
            t["decision"]["verdict"] == "cancelled"
                && t["decision"]["reason"] == "the client left while the command was held"
        })
    });
    assert!(pending(&f, ALICE, &[APPROVERS_GID]).is_empty());

    // SIGTERM: held commands fail at once, recorded as cancelled.
    let psql = spawn(f.psql_command(COPY_PATIENTS));
    let first = wait_pending(&f, 1)[0]["id"].as_str().unwrap().to_owned();
    f.agent.sigterm();
    let out = psql.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the agent is stopping"),
        "{}",
        text(&out.stderr)
    );

    // SIGKILL: the client's connection dies with the agent; the next start
    // records the request from its journal.
    f.agent.spawn();
    let psql = spawn(f.psql_command(COPY_PATIENTS));
    let second = wait_pending(&f, 1)[0]["id"].as_str().unwrap().to_owned();
    f.agent.kill9();
    let out = psql.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    f.agent.spawn();
    let events = f.agent.wait_events("the recovered request", |e| {
        transitions(e, &second)
            .iter()
            .any(|t| t["decision"]["verdict"] == "cancelled")
    });
    let stopped = transitions(&events, &first);
    assert_eq!(stopped.last().unwrap()["decision"]["verdict"], "cancelled");
    assert_eq!(stopped.last().unwrap()["decision"]["reason"], "the agent is stopping");
    let crashed = transitions(&events, &second);
    assert!(
        crashed.last().unwrap()["decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("agent stopped while this request was pending"),
        "{:?}",
        crashed
    );
    assert!(pending(&f, ALICE, &[APPROVERS_GID]).is_empty());
    assert_eq!(f.agent.verify_audit().0, Some(0));
}
