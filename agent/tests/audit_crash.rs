//! Crash safety: SIGKILL a writer mid-load; every acknowledged event must
//! come back exactly once, in Parquet, with the chain intact.
mod audit_common;

use audit_common::*;
use loopgate::audit::{reader, verify};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

const CHILD_DIR: &str = "LOOPGATE_AUDIT_CRASH_CHILD_DIR";
const CHILD_TEST: &str = "crash_child_writer";

fn crash_config(dir: &std::path::Path) -> loopgate::audit::AuditConfig {
    let mut cfg = config(dir);
    // Small segments, so conversions are in flight when the kill lands.
    cfg.segment_max_bytes = 256 << 10;
    cfg
}

/// Not a test on its own: the writer process of
/// `sigkill_mid_load_loses_no_acknowledged_event`, which re-executes this
/// binary with `CHILD_DIR` set. Prints `ACK <seq> <event id>` per
/// acknowledged append until it is killed.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(PathBuf::from) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Arc::new(open(crash_config(&dir)));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let session = Uuid::now_v7();
                for i in 0.. {
                    let e = command_event(session, i);
                    let id = e.event_id;
                    match store.append_seq(e).await {
                        Ok(seq) => println!("ACK {seq} {id}"),
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn sigkill_mid_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut acked: HashMap<u64, Uuid> = HashMap::new();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let parse = |line: &str, acked: &mut HashMap<u64, Uuid>| {
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (seq, id) = rest.split_once(' ').expect("ACK seq id");
            let seq: u64 = seq.parse().expect("seq");
            let id = Uuid::parse_str(id).expect("uuid");
            assert!(acked.insert(seq, id).is_none(), "seq {seq} acknowledged twice");
        }
    };
    while acked.len() < 20_000 {
        let line = lines.next().expect("the child keeps acknowledging").expect("read");
        parse(&line, &mut acked);
    }
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "SIGKILL sent");
    // Lines already in the pipe were acknowledged before the kill.
    for line in lines {
        parse(&line.expect("read"), &mut acked);
    }
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child was killed, not finished");
    let wal_left = wal_segments(dir.path());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = open(crash_config(dir.path()));
        store.shutdown().await.expect("recovery converts everything");
    });
    assert!(wal_left > 0, "the kill left WAL segments to recover");
    assert_eq!(wal_segments(dir.path()), 0, "every segment is in Parquet now");

    let v = verify::verify(dir.path()).expect("chain holds after the crash");
    let events = reader::events(dir.path()).expect("read");
    assert_eq!(events.len() as u64, v.events);
    let ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), events.len(), "no event twice");
    for (seq, id) in &acked {
        let e = events
            .get(usize::try_from(*seq).expect("fits") - 1)
            .unwrap_or_else(|| panic!("acknowledged seq {seq} lost"));
        assert_eq!((e.seq, e.event_id), (*seq, *id));
    }
    eprintln!(
        "acknowledged {}, recovered {}, {} WAL segments recovered",
        acked.len(),
        events.len(),
        wal_left
    );
}
