//! Fail closed on a full disk, then recover by itself with nothing lost.
mod audit_common;

use audit_common::*;
use loopgate::audit::{AuditError, reader, verify};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A small tmpfs mounted under a temp dir, unmounted on every exit path.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.flush()) {
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_then_recovers_with_nothing_lost() {
    let fs = Tmpfs::mount("8m");
    let dir = fs.path.join("audit");
    let mut cfg = config(&dir);
    cfg.segment_max_bytes = 256 << 10;
    let store = open(cfg);
    let session = Uuid::now_v7();
    let mut acked = Vec::new();
    let mut i = 0;
    let mut next = || {
        i += 1;
        command_event(session, i)
    };
    for _ in 0..500 {
        let e = next();
        let id = e.event_id;
        store.append_seq(e).await.expect("append before the disk fills");
        acked.push(id);
    }

    fill(&fs.path.join("filler"));
    let mut refusal = None;
    for _ in 0..100_000 {
        let e = next();
        let id = e.event_id;
        match store.append_seq(e).await {
            Ok(_) => acked.push(id),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("a full disk refuses appends");
    assert!(
        matches!(&refusal, AuditError::Unavailable(m) if m.contains("No space left")),
        "{refusal}"
    );
    let health = store.health();
    assert!(!health.writable);
    assert!(health.last_error.is_some_and(|e| e.contains("No space left")));

    // While failing, appends fail fast instead of queueing.
    let start = Instant::now();
    for _ in 0..10_000 {
        let r = store.append_seq(next()).await;
        assert!(matches!(r, Err(AuditError::Unavailable(_))), "{r:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());

    std::fs::remove_file(fs.path.join("filler")).expect("free space");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.health().writable {
        assert!(Instant::now() < deadline, "store did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..500 {
        let e = next();
        let id = e.event_id;
        store.append_seq(e).await.expect("append after recovery");
        acked.push(id);
    }
    store.shutdown().await.expect("shutdown converts everything");
    assert_eq!(wal_segments(&dir), 0);

    let v = verify::verify(&dir).expect("chain holds");
    let events = reader::events(&dir).expect("read");
    assert_eq!(v.events, acked.len() as u64);
    assert_eq!(
        events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        acked,
        "exactly the acknowledged events, in order; no refused one"
    );
}
