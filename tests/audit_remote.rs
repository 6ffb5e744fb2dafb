//! Audit off the host, against a real S3-compatible server (s3s-fs):
//! sealed files and signed checkpoints arrive in the bucket, `loopgate
//! audit verify --url` checks them from the bucket alone and reports a cut
//! or rewritten end, an outage of the server process loses nothing, and
//! DuckDB reads the whole fleet as one table.
//!
//! The outage lasts $LOOPGATE_TEST_OUTAGE_SECS (default 3 s; set 60 for
//! the minute an operator would test).
use std::{
    borrow::Cow,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use loopgate::audit::recording::{self, RecordingRef};
use loopgate::audit::{AuditConfig, AuditStore, CommandInfo, Event, EventKind, Health};
use loopgate::objstore::{self, S3Url};
use loopgate_e2e::{loopgate_bin, s3::S3Server};
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutPayload};

const PREFIX: &str = "fleet/prod";

fn outage() -> Duration {
    let secs = std::env::var("LOOPGATE_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

/// A signing key made the way an operator would, and its public key file.
fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("audit-signing.key");
    let out = Command::new(loopgate_bin())
        .args(["audit", "keygen", "--out"])
        .arg(&key)
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = dir.join("audit-signing.pub");
    std::fs::write(&public, &out.stdout).expect("write public key");
    (key, public)
}

/// An audit config shipping to `s3` under PREFIX, as an operator writes it.
fn config(s3: &S3Server, dir: &Path, key: Option<&Path>, remote_extra: &str, audit_extra: &str) -> AuditConfig {
    let mut extra = remote_extra.to_owned();
    if let Some(key) = key {
        extra.push_str(&format!("\nsigning_key_file = \"{}\"", key.display()));
    }
    let toml = format!(
        "dir = \"{}\"\nretention_check_secs = 1000000\n{audit_extra}\n{}",
        dir.join("audit").display(),
        s3.remote_toml(PREFIX, dir, &extra)
            .replace("[audit.remote]", "[remote]")
            .replace("[audit.remote.s3]", "[remote.s3]")
    );
    let config: AuditConfig = toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    config.validate().expect("valid config");
    config
}

fn event(host: &str, i: usize) -> Event {
    let mut e = Event::new(EventKind::Command);
    e.host = Cow::Owned(host.to_owned());
    e.command = Some(CommandInfo {
        text: Some(format!("SELECT name FROM patients WHERE id = ? -- {i}")),
        kind: Some("select".into()),
        tables: vec!["patients".into()],
        ..CommandInfo::default()
    });
    e
}

async fn record(store: &AuditStore, host: &str, range: std::ops::Range<usize>) {
    for i in range {
        store.append_seq(event(host, i)).await.expect("append");
    }
}

fn verify_url(s3: &S3Server, public: Option<&Path>, extra: &[&str]) -> Output {
    let mut cmd = Command::new(loopgate_bin());
    cmd.args([
        "audit",
        "verify",
        "--url",
        &s3.url(PREFIX),
        "--endpoint",
        &s3.endpoint(),
        "--allow-http",
    ]);
    if let Some(p) = public {
        cmd.arg("--public-key").arg(p);
    }
    cmd.args(extra).envs(s3.env());
    cmd.output().expect("run loopgate audit verify --url")
}

/// `verify --url` exits with `code`; its stdout (a failure shows all).
fn verify_exits(code: i32, s3: &S3Server, public: Option<&Path>, extra: &[&str]) -> String {
    let out = verify_url(s3, public, extra);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `text` holds every one of `parts`.
fn assert_says(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The test's own client of the bucket: an attacker with write access,
/// or an auditor listing it.
fn bucket(s3: &S3Server) -> std::sync::Arc<object_store::aws::AmazonS3> {
    let url = S3Url::parse(&s3.url("")).expect("url");
    objstore::open(&url, &s3.client_config(), objstore::Open::default()).expect("bucket client")
}

/// The chain's files under `dir`, relative, in chain order.
fn chain_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for date in std::fs::read_dir(dir).expect("ls").flatten() {
        if !date.file_name().to_string_lossy().starts_with("date=") {
            continue;
        }
        for host in std::fs::read_dir(date.path()).expect("ls").flatten() {
            for f in std::fs::read_dir(host.path()).expect("ls").flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".parquet") && !name.starts_with('.') {
                    files.push(format!(
                        "{}/{}/{name}",
                        date.file_name().to_string_lossy(),
                        host.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    files.sort_by_key(|f| f.rsplit('-').next().map(str::to_owned));
    files
}

async fn keys(s3: &S3Server) -> Vec<String> {
    use futures_util::TryStreamExt as _;
    let store = bucket(s3);
    let mut keys: Vec<String> = store
        .list(None)
        .map_ok(|o| o.location.to_string())
        .try_collect()
        .await
        .expect("list bucket");
    keys.sort();
    keys
}

/// Waits until the store's shipping status satisfies `done`.
async fn wait_health(store: &AuditStore, what: &str, timeout: Duration, done: impl Fn(&Health) -> bool) -> Health {
    let deadline = Instant::now() + timeout;
    loop {
        let h = store.health();
        if done(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {h:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host() -> String {
    loopgate::audit::host_name().to_owned()
}

/// 120 events, 50 to a file, shipped; returns the temp dir and public key.
async fn shipped_store(s3: &S3Server) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path());
    let store = AuditStore::open(config(s3, dir.path(), Some(&key), "", "segment_max_events = 50")).expect("open");
    record(&store, &host(), 0..120).await;
    store.shutdown().await.expect("shutdown");
    (dir, public)
}

#[tokio::test]
async fn sealed_files_arrive_in_the_bucket_and_verify_from_it() {
    let s3 = S3Server::start("audit");
    let (dir, public) = shipped_store(&s3).await;
    let audit = dir.path().join("audit");

    // Every local file is in the bucket under the same hive path.
    let local: Vec<String> = chain_files(&audit)
        .into_iter()
        .map(|rel| format!("{PREFIX}/{rel}"))
        .collect();
    assert_eq!(local.len(), 3, "{local:?}");
    let keys = keys(&s3).await;
    for l in &local {
        assert!(keys.contains(l), "{l} not in the bucket: {keys:?}");
    }
    let checkpoints: Vec<&String> = keys.iter().filter(|k| k.contains("/_loopgate/checkpoints/")).collect();
    assert!(!checkpoints.is_empty(), "no checkpoint shipped: {keys:?}");

    let stdout = verify_exits(0, &s3, Some(&public), &[]);
    assert_says(
        &stdout,
        &[
            &format!("ok: host {}: 120 events in 3 objects", host()),
            "newest checkpoint seq 120",
            "0 events after it not yet vouched for",
        ],
    );
    // Every checkpoint, too.
    verify_exits(0, &s3, Some(&public), &["--all-checkpoints", "--max-age-secs", "600"]);

    // The local trail still verifies (shipping leaves it whole).
    let local = Command::new(loopgate_bin())
        .args(["audit", "verify", "--dir"])
        .arg(&audit)
        .output()
        .expect("local verify");
    assert!(local.status.success(), "{}", text(&local));
}

/// With Object Lock the PUTs carry the retention headers inside the
/// signature (presigned); the server checks it like any request.
#[tokio::test]
async fn object_lock_uploads_are_signed_and_accepted() {
    let s3 = S3Server::start("audit");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path());
    let store = AuditStore::open(config(
        &s3,
        dir.path(),
        Some(&key),
        "object_lock = \"compliance\"\nobject_lock_days = 1",
        "segment_max_events = 10",
    ))
    .expect("open");
    record(&store, &host(), 0..25).await;
    store.shutdown().await.expect("shutdown");
    assert_says(&verify_exits(0, &s3, Some(&public), &[]), &["25 events in 3 objects"]);
}

#[tokio::test]
async fn a_deleted_newest_object_is_reported_as_a_cut_end() {
    let s3 = S3Server::start("audit");
    let (_dir, public) = shipped_store(&s3).await;
    let keys = keys(&s3).await;
    let newest = keys
        .iter()
        .filter(|k| k.ends_with(".parquet"))
        .max_by_key(|k| k.rsplit('-').next().map(str::to_owned))
        .expect("a file");
    bucket(&s3)
        .delete(&object_store::path::Path::from(newest.as_str()))
        .await
        .expect("delete");

    let stdout = verify_exits(1, &s3, Some(&public), &[]);
    assert!(stdout.starts_with(&format!("BROKEN: host {}", host())), "{stdout}");
    assert_says(&stdout, &["ends at seq 100", "vouches for seq 120", "the end was cut"]);

    // Without a trusted key the chain alone looks whole: why keys matter.
    let out = verify_url(&s3, None, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no --public-key"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_rewritten_end_is_reported() {
    let s3 = S3Server::start("audit");
    let (dir, public) = shipped_store(&s3).await;
    let audit = dir.path().join("audit");
    let files = chain_files(&audit);
    assert_eq!(files.len(), 3);

    // The attacker forks the chain after the second file: same first 100
    // events, 20 different ones, every hash recomputed, so the chain is
    // whole by itself.
    let fork = tempfile::tempdir().expect("tempdir");
    for rel in &files[..2] {
        let to = fork.path().join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(audit.join(rel), &to).expect("copy");
    }
    let forger = AuditStore::open(AuditConfig {
        dir: fork.path().to_owned(),
        retention_check_secs: 1_000_000,
        ..AuditConfig::default()
    })
    .expect("open fork");
    for i in 0..20 {
        let mut e = event(&host(), i);
        e.command = Some(CommandInfo {
            text: Some("SELECT 1".into()),
            ..CommandInfo::default()
        });
        forger.append_seq(e).await.expect("append");
    }
    forger.shutdown().await.expect("shutdown");
    let forged = chain_files(fork.path());
    assert_eq!(forged.len(), 3);
    let verified = Command::new(loopgate_bin())
        .args(["audit", "verify", "--dir"])
        .arg(fork.path())
        .output()
        .expect("verify fork");
    assert!(
        verified.status.success(),
        "the forged chain holds by itself: {}",
        text(&verified)
    );

    // It replaces the newest object with its own.
    let store = bucket(&s3);
    let key = |rel: &str| object_store::path::Path::from(format!("{PREFIX}/{rel}"));
    store.delete(&key(&files[2])).await.expect("delete");
    let bytes = std::fs::read(fork.path().join(&forged[2])).expect("read forged");
    store
        .put(&key(&forged[2]), PutPayload::from(bytes))
        .await
        .expect("put forged");

    let stdout = verify_exits(1, &s3, Some(&public), &[]);
    assert_says(&stdout, &["the event at seq 120", "rewritten at or before seq 120"]);
}

/// A session recording is checked from the bucket too: the chain holds
/// its hash, so one rewritten or deleted there is reported.
#[tokio::test]
async fn a_rewritten_or_deleted_recording_in_the_bucket_is_reported() {
    let s3 = S3Server::start("audit");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path());
    // A finished recording, sealed where the SSH relay leaves one.
    let session = format!("{:032x}", std::process::id());
    let session = session.parse().expect("a session id");
    let rel = recording::relative_path(loopgate::audit::now_us(), session, 0);
    let file = dir.path().join("audit").join(&rel);
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &file,
        b"{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.1, \"o\", \"ok\"]\n",
    )
    .expect("write");
    let named = RecordingRef {
        path: rel.clone(),
        sha256: recording::sha256_file(&file).expect("hash"),
        cut_at: None,
    };
    let store = AuditStore::open(config(&s3, dir.path(), Some(&key), "", "segment_max_events = 50")).expect("open");
    record(&store, &host(), 0..10).await;
    let mut result = event(&host(), 10);
    if let Some(c) = result.command.as_mut() {
        c.parameters = named.to_parameters();
    }
    store.append_seq(result).await.expect("append");
    record(&store, &host(), 11..20).await;
    store.shutdown().await.expect("shutdown");
    let stdout = verify_exits(0, &s3, Some(&public), &[]);
    assert_says(&stdout, &["20 events", "1 recordings match their hashes"]);

    let bucket = bucket(&s3);
    let object = object_store::path::Path::from(format!("{PREFIX}/{rel}"));
    bucket
        .put(&object, PutPayload::from_static(b"{\"version\": 2}\n"))
        .await
        .expect("put rewritten");
    let stdout = verify_exits(1, &s3, Some(&public), &[]);
    assert_says(&stdout, &[&format!("recording {rel} was rewritten"), "row 10"]);
    bucket.delete(&object).await.expect("delete");
    let stdout = verify_exits(1, &s3, Some(&public), &[]);
    assert_says(&stdout, &[&format!("recording {rel} is missing from the bucket")]);
}

#[tokio::test]
async fn a_store_outage_loses_nothing_and_shipping_recovers() {
    let mut s3 = S3Server::start("audit");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path());
    let store = AuditStore::open(config(
        &s3,
        dir.path(),
        Some(&key),
        "retry_max_secs = 1\nscan_interval_secs = 1",
        "segment_max_events = 10",
    ))
    .expect("open");
    record(&store, &host(), 0..30).await;
    wait_health(&store, "the first 30 events shipped", Duration::from_secs(20), |h| {
        h.remote
            .as_ref()
            .is_some_and(|r| r.shipped_seq == Some(30) && r.last_checkpoint_seq == Some(30))
    })
    .await;

    // The server process goes away; the agent keeps recording.
    s3.stop();
    record(&store, &host(), 30..60).await;
    let down = wait_health(&store, "uploads failing", Duration::from_secs(20), |h| {
        h.remote
            .as_ref()
            .is_some_and(|r| r.consecutive_failures >= 2 && r.backlog_files == 3)
    })
    .await;
    let remote = down.remote.expect("remote");
    assert!(remote.last_error.is_some(), "{remote:#?}");
    assert_eq!(remote.shipped_seq, Some(30), "{remote:#?}");
    assert!(
        !remote.refusing_events,
        "the default backlog limit is far away: {remote:#?}"
    );
    tokio::time::sleep(outage()).await;
    record(&store, &host(), 60..70).await;

    // Back: everything that waited arrives, in order, and is checkpointed.
    s3.start_again();
    let up = wait_health(&store, "the backlog shipped", Duration::from_secs(30), |h| {
        h.remote
            .as_ref()
            .is_some_and(|r| r.backlog_files == 0 && r.shipped_seq == Some(70) && r.last_checkpoint_seq == Some(70))
    })
    .await;
    assert_eq!(up.remote.as_ref().and_then(|r| r.last_error.clone()), None);
    store.shutdown().await.expect("shutdown");

    assert_says(&verify_exits(0, &s3, Some(&public), &[]), &["70 events in 7 objects"]);
}

#[tokio::test]
async fn a_full_backlog_refuses_events_until_the_store_is_back() {
    let mut s3 = S3Server::start("audit");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = AuditStore::open(config(
        &s3,
        dir.path(),
        None,
        "retry_max_secs = 1\nmax_backlog_bytes = 1",
        "segment_max_events = 5",
    ))
    .expect("open");
    s3.stop();
    record(&store, &host(), 0..5).await;
    wait_health(&store, "the backlog limit", Duration::from_secs(20), |h| {
        h.remote.as_ref().is_some_and(|r| r.refusing_events)
    })
    .await;
    let refused = store.append_seq(event(&host(), 5)).await.expect_err("refused");
    assert!(refused.to_string().contains("wait for upload"), "{refused}");

    s3.start_again();
    wait_health(&store, "the backlog shipped", Duration::from_secs(30), |h| {
        h.remote
            .as_ref()
            .is_some_and(|r| !r.refusing_events && r.backlog_files == 0)
    })
    .await;
    store.append_seq(event(&host(), 6)).await.expect("accepted again");
    store.shutdown().await.expect("shutdown");
}

/// A fleet verified at once, each host against its own key only: one
/// host's key cannot vouch for another host's chain.
#[tokio::test]
async fn each_host_is_verified_with_its_own_key() {
    let s3 = S3Server::start("audit");
    let keys = tempfile::tempdir().expect("tempdir");
    let mut dirs = Vec::new();
    for host in ["clinic-a", "clinic-b"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, public) = keygen(dir.path());
        std::fs::copy(&public, keys.path().join(format!("{host}.pub"))).expect("copy key");
        let store = AuditStore::open(config(&s3, dir.path(), Some(&key), "", "")).expect("open");
        record(&store, host, 0..12).await;
        store.shutdown().await.expect("shutdown");
        dirs.push(dir);
    }
    let keys_dir = keys.path().to_str().expect("utf-8");
    assert_says(
        &verify_exits(0, &s3, None, &["--keys-dir", keys_dir]),
        &["ok: host clinic-a: 12 events", "ok: host clinic-b: 12 events"],
    );

    // clinic-a's key put up as clinic-b's: clinic-b's checkpoints are refused.
    std::fs::copy(keys.path().join("clinic-a.pub"), keys.path().join("clinic-b.pub")).expect("swap");
    let stdout = verify_exits(1, &s3, None, &["--keys-dir", keys_dir, "--host", "clinic-b"]);
    assert_says(&stdout, &["BROKEN: host clinic-b", "not among the trusted keys"]);
}

/// DuckDB with its httpfs extension (from PyPI, loaded from the package)
/// reads every host's files in the bucket as one table; pyarrow's S3
/// file system reads the same.
#[tokio::test]
async fn duckdb_reads_the_whole_fleet_from_the_bucket() {
    let s3 = S3Server::start("audit");
    let mut dirs = Vec::new();
    for (host, n) in [("clinic-a", 25), ("clinic-b", 40)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = AuditStore::open(config(&s3, dir.path(), None, "", "segment_max_events = 20")).expect("open");
        record(&store, host, 0..n).await;
        store.shutdown().await.expect("shutdown");
        dirs.push(dir);
    }
    let script = format!(
        r#"
import duckdb, duckdb_extension_httpfs, glob, json, os
import pyarrow.dataset as ds, pyarrow.fs as pafs
ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions", "*", "httpfs.duckdb_extension"))[0]
con = duckdb.connect()
con.execute("SET autoinstall_known_extensions = false")
con.execute(f"LOAD '{{ext}}'")
con.execute("""CREATE SECRET fleet (TYPE s3, KEY_ID '{key}', SECRET '{secret}', REGION 'us-east-1',
               ENDPOINT '127.0.0.1:{port}', URL_STYLE 'path', USE_SSL false)""")
rows = con.execute("""
  SELECT host, agent_host, count(*) AS events, max(seq) AS head
  FROM read_parquet('s3://{bucket}/{prefix}/**/*.parquet', hive_partitioning = true, union_by_name = true)
  GROUP BY ALL ORDER BY host""").fetchall()
s3 = pafs.S3FileSystem(access_key='{key}', secret_key='{secret}', endpoint_override='127.0.0.1:{port}', scheme='http', region='us-east-1')
base = '{bucket}/{prefix}'
files = [f.path for f in s3.get_file_info(pafs.FileSelector(base, recursive=True))
         if f.path.endswith('.parquet') and '/_' not in f.path[len(base):]]
table = ds.dataset(files, filesystem=s3, format='parquet', partitioning='hive', partition_base_dir=base).to_table()
print(json.dumps({{"duckdb": [list(r) for r in rows], "pyarrow_rows": table.num_rows}}))
"#,
        key = loopgate_e2e::s3::ACCESS_KEY,
        secret = loopgate_e2e::s3::SECRET_KEY,
        port = s3.port,
        bucket = s3.bucket,
        prefix = PREFIX,
    );
    let out = Command::new(loopgate_e2e::python())
        .args(["-c", &script])
        .output()
        .expect("run python");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {shown}"));
    assert_eq!(
        result["duckdb"],
        serde_json::json!([["clinic-a", "clinic-a", 25, 25], ["clinic-b", "clinic-b", 40, 40]]),
        "{shown}"
    );
    assert_eq!(result["pyarrow_rows"], 65, "{shown}");
}

/// The real agent (eBPF, a proxied echo service) ships its trail; while
/// the store's process is down `loopgate status` shows the backlog and the
/// failing upload; the agent keeps recording, and when the store is back
/// everything arrives and verifies.
#[test]
fn the_agent_ships_and_status_shows_an_outage() {
    loopgate_e2e::require_ebpf!();
    let mut s3 = S3Server::start("audit");
    let echo = loopgate_e2e::EchoServer::start(&loopgate_e2e::echo::unique_loopback_ip());
    let scratch = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(scratch.path());
    let remote = s3.remote_toml(
        PREFIX,
        scratch.path(),
        &format!(
            "signing_key_file = \"{}\"\nretry_max_secs = 1\nscan_interval_secs = 1\ncheckpoint_interval_secs = 2",
            key.display()
        ),
    );
    let mut agent = loopgate_e2e::Agent::configure(&[loopgate_e2e::Target::tcp("echo", echo.addr)], &remote);
    // Seal a segment every second, so files follow events closely.
    let toml = std::fs::read_to_string(&agent.config).expect("read config");
    let audit_line = format!("dir = \"{}\"\n", agent.audit_dir.display());
    std::fs::write(
        &agent.config,
        toml.replacen(&audit_line, &format!("{audit_line}segment_max_age_secs = 1\n"), 1),
    )
    .expect("write config");
    agent.spawn();

    let session = |agent: &loopgate_e2e::Agent| {
        let out = agent.exec(&[
            "python3",
            "-c",
            loopgate_e2e::ECHO_CLIENT,
            &echo.addr.ip().to_string(),
            &echo.addr.port().to_string(),
            "2",
            "16",
        ]);
        assert!(out.status.success(), "{}\n{}", text(&out), agent.log());
    };
    let status_until = |agent: &loopgate_e2e::Agent, what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = agent.status();
            if done(&status["audit"]["remote"]) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {status:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let head = |agent: &loopgate_e2e::Agent| agent.events().last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);

    session(&agent);
    agent.wait_events("two sessions", |e| {
        e.iter().filter(|e| e["kind"] == "session_end").count() == 2
    });
    let seq = head(&agent);
    status_until(&agent, "the first sessions shipped", &|r| {
        r["shipped_seq"].as_u64() == Some(seq) && r["last_checkpoint_seq"].as_u64() == Some(seq)
    });

    s3.stop();
    session(&agent);
    let status = status_until(&agent, "the upload failing", &|r| {
        r["consecutive_failures"].as_u64() >= Some(1) && r["backlog_files"].as_u64() >= Some(1)
    });
    assert!(status["audit"]["remote"]["last_error"].is_string(), "{status:#}");
    let shown = agent.loopgate(&["status"]).output().expect("status");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("UPLOAD FAILING") && shown.contains("backlog:") && shown.contains(&s3.url(PREFIX)),
        "{shown}"
    );
    std::thread::sleep(outage());
    session(&agent);

    s3.start_again();
    agent.wait_events("six sessions", |e| {
        e.iter().filter(|e| e["kind"] == "session_end").count() == 6
    });
    let seq = head(&agent);
    status_until(&agent, "the backlog shipped", &|r| {
        r["backlog_files"].as_u64() == Some(0) && r["shipped_seq"].as_u64() == Some(seq) && r["last_error"].is_null()
    });
    assert!(agent.sigterm().success(), "{}", agent.log());

    // Everything the agent recorded, agent_stop included, is in the bucket.
    let local = agent.events().len();
    assert_says(
        &verify_exits(0, &s3, Some(&public), &[]),
        &[&format!("{local} events in")],
    );
}
