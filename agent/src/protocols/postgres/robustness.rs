//! Hostile and malformed input on both sides of a session: whatever bytes
//! arrive, the relay ends with an error or carries on — it never panics.
//! Inputs are generated from a fixed seed, so a failure reproduces.
use bytes::BytesMut;
use tokio::{io::AsyncWriteExt as _, sync::mpsc};

use super::{Service, backend::Backend, catalog::Catalog, frame::put_message, frontend::Frontend, pending::Pending};
use crate::{
    audit::{AuditConfig, AuditLog, AuditStore, ProcessInfo},
    session::Session,
};

/// xorshift64*: small, deterministic, good enough to make garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn session(dir: &std::path::Path) -> Session {
    Session::new(
        "127.0.0.1:40000".parse().unwrap(),
        // Nothing listens on port 1: the catalog's side connection fails fast.
        "127.0.0.1:1".parse().unwrap(),
        "db",
        "postgres",
        ProcessInfo::default(),
        AuditLog::new(
            AuditStore::open(AuditConfig {
                dir: dir.to_path_buf(),
                ..AuditConfig::default()
            })
            .unwrap(),
        ),
    )
}

/// A message with a plausible tag (mostly) and a random body; sometimes a
/// plausible body, so the handlers get past their first checks.
fn message(rng: &mut Rng, tags: &[u8], plausible: &[&[u8]]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let tag = if rng.below(10) == 0 {
        rng.next() as u8
    } else {
        tags[rng.below(tags.len())]
    };
    let body = if rng.below(3) == 0 {
        let mut b = plausible[rng.below(plausible.len())].to_vec();
        b.extend(rng.bytes(8));
        b
    } else {
        rng.bytes(48)
    };
    put_message(&mut out, tag, &body);
    if rng.below(20) == 0 {
        // A lying length.
        let bad = rng.next() as u32;
        out[1..5].copy_from_slice(&bad.to_be_bytes());
    }
    out.to_vec()
}

#[tokio::test]
async fn garbage_from_either_side_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let session = session(dir.path());
    let svc = Service::for_tests(session.audit.clone());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let client_plausible: &[&[u8]] = &[
        b"select 1\0",
        b"\0select ssn from patients\0\0\0",
        b"\0\0\0\0\0\x01\0\0\0\x03abc\0\0",
        b"P\0",
        b"S\0",
        b"DROP TABLE t\0",
    ];
    let server_plausible: &[&[u8]] = &[
        b"\0\x01ssn\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        b"\0\x01\0\0\0\x0b123-45-6789",
        b"SELECT 1\0",
        b"I",
        b"SERROR\0C23505\0Mdup\0DKey (ssn)=(123-45-6789) exists\0\0",
        b"\0\0\0\x01chan\0payload 123-45-6789\0",
        b"\0\0\x01\0\0",
    ];
    for _ in 0..300 {
        // Client side.
        let (mut client, mut client_far) = tokio::io::duplex(1 << 16);
        let (server_far, mut server) = tokio::io::duplex(1 << 16);
        let (tx, mut rx) = mpsc::channel(1024);
        let mut input = Vec::new();
        for _ in 0..rng.below(12) {
            input.extend(message(&mut rng, b"QPBEDCHSdcfXF", client_plausible));
        }
        client_far.write_all(&input).await.unwrap();
        drop(client_far);
        let catalog = tokio::sync::Mutex::new(Catalog::new(session.original, "127.0.0.1", &svc.upstream, &[]));
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let _ = Frontend::new(&svc, &session, &catalog, tx)
            .run(&mut client, BytesMut::new(), &mut server)
            .await;
        drain.abort();
        drop(server_far);

        // Server side, with a queue of what the server could be answering.
        let (mut upstream, mut upstream_far) = tokio::io::duplex(1 << 16);
        let (mut to_client, mut to_client_far) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel(1024);
        for p in [Pending::Sync, Pending::Query(Vec::new()), Pending::Sync] {
            tx.send(p).await.unwrap();
        }
        drop(tx);
        let mut input = Vec::new();
        for _ in 0..rng.below(12) {
            input.extend(message(&mut rng, b"TDCEINZHdcAsS1tn", server_plausible));
        }
        upstream_far.write_all(&input).await.unwrap();
        drop(upstream_far);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut to_client_far, &mut sink).await;
        });
        let _ = Backend::new(&svc, &session, &catalog, None)
            .run(&mut upstream, BytesMut::new(), &mut to_client, rx)
            .await;
        drop(to_client);
        let _ = reader.await;
    }
}
