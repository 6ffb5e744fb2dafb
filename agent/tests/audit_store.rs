//! The audit store end to end: appends, Parquet files, restarts, the CLI,
//! retention and DuckDB.
mod audit_common;

use audit_common::*;
use loopgate::audit::{AuditLog, AuditStore, Event, EventKind, FsyncMode, reader, verify};
use std::collections::HashSet;
use uuid::Uuid;

#[tokio::test]
async fn acknowledged_events_end_up_in_chained_parquet_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(config(dir.path()));
    let session = Uuid::now_v7();
    let mut ids = Vec::new();
    for i in 0..2000 {
        let e = command_event(session, i);
        ids.push(e.event_id);
        let seq = store.append_seq(e).await.expect("append");
        assert_eq!(seq, i + 1);
    }
    store.shutdown().await.expect("shutdown");

    assert_eq!(wal_segments(dir.path()), 0, "shutdown converts every segment");
    let files = parquet_files(dir.path());
    assert!(files.len() > 3, "64 KiB segments give several files");
    for f in &files {
        let rel = f.strip_prefix(dir.path()).expect("under dir");
        let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert!(parts[0].starts_with("date=20"), "{rel:?}");
        assert!(parts[1].starts_with("host="), "{rel:?}");
    }
    let v = verify::verify(dir.path()).expect("chain holds");
    assert_eq!(v.events, 2000);
    assert_eq!(v.last_seq, 2000);
    let events = reader::events(dir.path()).expect("read");
    assert_eq!(events.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    let mut expected = command_event(session, 1999);
    let got = &events[1999];
    expected.event_id = got.event_id;
    expected.time_us = got.time_us;
    expected.seq = 2000;
    expected.prev_hash = events[1998].hash.clone();
    expected.hash = got.hash.clone();
    assert_eq!(*got, expected, "every field survives WAL and Parquet");
}

#[tokio::test]
async fn an_empty_store_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(config(dir.path()));
    store.shutdown().await.expect("shutdown");
    let v = verify::verify(dir.path()).expect("empty chain holds");
    assert_eq!((v.events, v.files), (0, 0));
    let out = loopgate_audit(&["verify", "--dir", dir.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test]
async fn restarts_append_to_the_same_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1: clean shutdown, head comes back from the newest file's metadata.
    let store = open(config(dir.path()));
    for i in 0..10 {
        store
            .append_seq(command_event(Uuid::now_v7(), i))
            .await
            .expect("append");
    }
    store.shutdown().await.expect("shutdown");
    // 2: dropped without shutdown, head comes back from the WAL.
    let store = open(config(dir.path()));
    assert_eq!(store.health().last_seq, 10);
    for i in 0..10 {
        let seq = store
            .append_seq(command_event(Uuid::now_v7(), i))
            .await
            .expect("append");
        assert_eq!(seq, 11 + i);
    }
    drop(store);
    let store = open(config(dir.path()));
    assert_eq!(store.health().last_seq, 20);
    store
        .append_seq(Event::new(EventKind::AgentStart))
        .await
        .expect("append");
    store.shutdown().await.expect("shutdown");
    let v = verify::verify(dir.path()).expect("one chain across restarts");
    assert_eq!(v.events, 21);
}

#[tokio::test]
async fn tail_json_shows_events_still_only_in_the_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.fsync = FsyncMode::Always;
    let log = AuditLog::new(open(cfg));
    let session = Uuid::now_v7();
    for i in 0..5 {
        log.append(command_event(session, i)).await.expect("append");
    }
    assert_eq!(parquet_files(dir.path()).len(), 0, "nothing converted yet");
    let d = dir.path().to_str().expect("utf-8");
    let out = loopgate_audit(&["tail", "--json", "--dir", d]);
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Event> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is an event"))
        .collect();
    assert_eq!(lines.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    let out = loopgate_audit(&["tail", "-n", "2", "--dir", d]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("#5 command") && text.contains("patients-db"), "{text}");

    let out = loopgate_audit(&["replay", &session.to_string(), "--dir", d]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("session {session}")), "{text}");
    assert!(text.contains("postgres 10.0.0.5:5432"), "{text}");
    assert_eq!(text.matches(" command ").count(), 5, "{text}");
    let out = loopgate_audit(&["replay", &Uuid::now_v7().to_string(), "--dir", d]);
    assert_eq!(out.status.code(), Some(1), "unknown session");
    log.close().await.expect("close");
}

#[tokio::test]
async fn verify_cli_names_the_first_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(config(dir.path()));
    for i in 0..600 {
        store
            .append_seq(command_event(Uuid::now_v7(), i))
            .await
            .expect("append");
    }
    store.shutdown().await.expect("shutdown");
    let d = dir.path().to_str().expect("utf-8");
    let out = loopgate_audit(&["verify", "--dir", d]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 600 events"));

    // tail -n reads from the head: the newest events, from Parquet.
    let out = loopgate_audit(&["tail", "-n", "3", "--json", "--dir", d]);
    let seqs: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).expect("event").seq)
        .collect();
    assert_eq!(seqs, vec![598, 599, 600]);

    let files = parquet_files(dir.path());
    std::fs::remove_file(&files[1]).expect("delete a file");
    let out = loopgate_audit(&["verify", "--dir", d]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let next = files[2].to_str().expect("utf-8");
    assert!(text.contains(&format!("BROKEN: {next}, row 0, event ")), "{text}");
    let out = loopgate_audit(&["verify", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[tokio::test]
async fn retention_deletes_old_days_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(config(dir.path()));
    let now = Event::new(EventKind::AgentStart).time_us;
    let day = 86_400_000_000i64;
    let seven_years = 7 * 365 * day;
    // Two expired days, then today.
    for (offset, n) in [(seven_years + day, 30), (seven_years, 30), (0, 30)] {
        for i in 0..n {
            let mut e = command_event(Uuid::now_v7(), i);
            e.time_us = now - offset + i64::try_from(i).expect("small");
            store.append_seq(e).await.expect("append");
        }
    }
    store.shutdown().await.expect("shutdown");
    let before = parquet_files(dir.path()).len();
    // A session recording in an expired day and one in today's.
    let partitions: Vec<_> = parquet_files(dir.path())
        .iter()
        .map(|f| f.parent().expect("partition").to_owned())
        .collect();
    let (old_cast, new_cast) = (
        partitions[0].join("recording-a-1.cast"),
        partitions[partitions.len() - 1].join("recording-b-1.cast"),
    );
    std::fs::write(&old_cast, "{}\n").expect("write");
    std::fs::write(&new_cast, "{}\n").expect("write");

    let store = open(config(dir.path()));
    let report = store
        .apply_retention(now)
        .await
        .expect("retention runs")
        .expect("something expired");
    assert_eq!(report.partitions.len(), 2);
    assert_eq!(report.cut_seq, 60);
    assert_eq!(report.event_seq, 91, "the deletion is an event");
    assert_eq!(report.recordings, 1);
    assert!(
        !old_cast.exists() && new_cast.exists(),
        "recordings go with their partition"
    );
    assert!(store.apply_retention(now).await.expect("runs").is_none());
    store.shutdown().await.expect("shutdown");

    let files = parquet_files(dir.path());
    assert_eq!(files.len(), before - report.files + 1);
    let dates: HashSet<_> = files
        .iter()
        .map(|f| {
            f.strip_prefix(dir.path())
                .expect("under")
                .iter()
                .next()
                .map(|p| p.to_os_string())
        })
        .collect();
    assert_eq!(dates.len(), 1, "only today's partition is left: {dates:?}");
    let v = verify::verify(dir.path()).expect("chain holds after retention");
    assert_eq!(v.anchored_at, Some(61));
    assert_eq!(v.events, 31);
    let events = reader::events(dir.path()).expect("read");
    let last = events.last().expect("retention event");
    assert_eq!(last.kind, EventKind::Retention);
    assert!(
        last.command
            .as_ref()
            .and_then(|c| c.text.as_deref())
            .is_some_and(|t| t.contains("through seq=60")),
        "{last:?}"
    );

    // Without the anchor the gap at the start is a break.
    std::fs::remove_file(dir.path().join("retention-anchor.json")).expect("rm anchor");
    let broken = verify::verify(dir.path()).expect_err("no anchor").expect("broken");
    assert_eq!(broken.row, Some(0));
    assert!(broken.problem.contains("starts at seq 61"), "{broken}");
}

#[tokio::test]
async fn duckdb_reads_every_file_with_the_right_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(config(dir.path()));
    let mut acked = 0u64;
    for i in 0..3000 {
        store
            .append_seq(command_event(Uuid::now_v7(), i))
            .await
            .expect("append");
        acked += 1;
    }
    store
        .append_seq(Event::new(EventKind::AgentStop))
        .await
        .expect("append");
    acked += 1;
    store.shutdown().await.expect("shutdown");

    let script = r#"
import sys, duckdb
glob = sys.argv[1] + "/**/*.parquet"
con = duckdb.connect()
rel = f"read_parquet('{glob}', hive_partitioning=true)"
print(con.execute(f"select count(*), count(distinct event_id), min(seq), max(seq) from {rel}").fetchone())
for name, typ in con.execute(f"select column_name, column_type from (describe select * from {rel})").fetchall():
    print(name, typ)
print(con.execute(f"select principal_groups[2], command_tables, result_rows from {rel} where seq = 2").fetchone())
print(con.execute(f"select count(*) from {rel} where kind = 'agent_stop' and principal_subject is null").fetchone())
import pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()
print((t.num_rows, str(t.schema.field("time").type), str(t.schema.field("command_tables").type)))
"#;
    let out = run_python(script, &[dir.path().to_str().expect("utf-8")]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(format!("({acked}, {acked}, 1, {acked})").as_str()));
    let types: std::collections::HashMap<&str, &str> = lines
        .by_ref()
        .take_while(|l| !l.starts_with('('))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(types["time"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(types["principal_groups"], "VARCHAR[]");
    assert_eq!(types["command_tables"], "VARCHAR[]");
    assert_eq!(types["result_masked_fields"], "VARCHAR[]");
    assert_eq!(types["seq"], "BIGINT");
    assert_eq!(types["process_pid"], "BIGINT");
    assert_eq!(types["command_text"], "VARCHAR");
    assert_eq!(types["date"], "DATE", "hive partition column");
    assert_eq!(types["host"], "VARCHAR", "hive partition column");
    assert_eq!(types["agent_host"], "VARCHAR");
    let rest: Vec<&str> = out.lines().filter(|l| l.starts_with('(')).collect();
    assert_eq!(rest[1], "('phi-readers', ['patients'], 1)");
    assert_eq!(rest[2], "(1,)");
    assert_eq!(
        rest[3],
        format!("({acked}, 'timestamp[us, tz=UTC]', 'list<item: string>')"),
        "pyarrow (pandas' reader) reads the partitioned dataset"
    );
}

#[tokio::test]
async fn tail_follow_prints_new_events_as_they_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(config(dir.path()));
    store
        .append_seq(Event::new(EventKind::AgentStart))
        .await
        .expect("append");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_loopgate"))
        .args(["audit", "tail", "-f", "--json", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tail -f starts");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_seq = || {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("tail -f prints within 5 s");
        serde_json::from_str::<Event>(&line).expect("json event").seq
    };
    assert_eq!(next_seq(), 1);
    let session = Uuid::now_v7();
    for i in 0..3 {
        store.append_seq(command_event(session, i)).await.expect("append");
    }
    assert_eq!([next_seq(), next_seq(), next_seq()], [2, 3, 4]);
    // Conversion to Parquet does not repeat or lose events in the follow.
    store.shutdown().await.expect("shutdown");
    let store = open(config(dir.path()));
    store
        .append_seq(Event::new(EventKind::AgentStart))
        .await
        .expect("append");
    assert_eq!(next_seq(), 5);
    let _ = child.kill();
    let _ = child.wait();
    store.shutdown().await.expect("shutdown");
}

/// A store with 16 KiB segments (many files, conversion running all the
/// time) and a task appending 4000 command events to it.
fn busy_store(dir: &std::path::Path) -> (std::sync::Arc<AuditStore>, tokio::task::JoinHandle<()>) {
    let mut cfg = config(dir);
    cfg.segment_max_bytes = 16 << 10;
    // Conversion may lag with segments this small; let the backlog grow.
    cfg.max_pending_segments = 100_000;
    let store = std::sync::Arc::new(open(cfg));
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let session = Uuid::now_v7();
            for i in 0..4000 {
                store.append_seq(command_event(session, i)).await.expect("append");
            }
        })
    };
    (store, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_a_gapless_chain_while_segments_are_converted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, writer) = busy_store(dir.path());
    let path = dir.path().to_owned();
    let reads = tokio::task::spawn_blocking(move || {
        let mut reads = 0;
        let mut last_len = 0;
        loop {
            let events = reader::events(&path).expect("read while converting");
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.seq, i as u64 + 1, "gap or repeat at {i}");
            }
            assert!(events.len() >= last_len, "events never disappear");
            last_len = events.len();
            reads += 1;
            if last_len == 4000 {
                return reads;
            }
        }
    });
    writer.await.expect("writer");
    let reads = reads.await.expect("reader");
    assert!(reads > 1, "the reader overlapped the writer");
    assert!(parquet_files(dir.path()).len() > 5);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_holds_on_a_running_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, writer) = busy_store(dir.path());
    let path = dir.path().to_owned();
    let checks = tokio::task::spawn_blocking(move || {
        let mut checks = 0;
        loop {
            let v = verify::verify(&path).expect("chain holds while converting");
            checks += 1;
            if v.events == 4000 {
                return checks;
            }
        }
    });
    writer.await.expect("writer");
    assert!(checks.await.expect("verifier") > 1);
    store.shutdown().await.expect("shutdown");
}

/// Results submitted without waiting are chained at once and written with
/// the next append (one `write(2)` for both); a clean close writes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_results_keep_chain_order_and_survive_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::new(open(config(dir.path())));
    let session = Uuid::now_v7();
    let mut ids = Vec::new();
    for i in 0..500 {
        let command = command_event(session, i);
        ids.push(command.event_id);
        log.append(command).await.expect("append");
        let mut result = Event::new(EventKind::CommandResult).session(session);
        result.command_id = Some(ids[ids.len() - 1]);
        ids.push(result.event_id);
        log.submit(result);
    }
    // The last result has no append behind it: close must write it.
    log.close().await.expect("close");
    let v = verify::verify(dir.path()).expect("chain holds");
    assert_eq!(v.events, 1000);
    let events = reader::events(dir.path()).expect("read");
    assert_eq!(events.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
}

/// A deferred result with nothing appended after it still reaches the WAL
/// by the fsync interval (the writer loop writes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_submitted_result_is_written_by_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::new(open(config(dir.path())));
    let session = Uuid::now_v7();
    log.append(command_event(session, 0)).await.expect("append");
    // Past the first fsync interval, so the result is the only dirty record.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    log.submit(Event::new(EventKind::CommandResult).session(session));
    let d = dir.path().to_str().expect("utf-8").to_owned();
    let mut seen = 0;
    for _ in 0..100 {
        let out = tokio::task::spawn_blocking({
            let d = d.clone();
            move || loopgate_audit(&["tail", "--json", "--dir", &d])
        })
        .await
        .expect("tail");
        seen = String::from_utf8_lossy(&out.stdout).lines().count();
        if seen == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 2, "the result is in the WAL without another append");
    log.close().await.expect("close");
}
