//! One policy pack for a fleet: a signed bundle in object storage (a real
//! s3s-fs server) decides for the agent, a newer revision takes over
//! within a poll, foreign-signed and rolled-back bundles are refused, and
//! with the store gone a restarted agent decides with the last good one.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use loopgate::objstore::{self, S3Url};
use loopgate_e2e::{
    PgOptions,
    clinic::{Clinic, policy_pack},
    loopgate_bin, require_ebpf,
    s3::S3Server,
};
use object_store::{ObjectStoreExt as _, PutPayload};
use serde_json::Value;

const BUNDLE_KEY: &str = "fleet/hipaa.bundle";

/// A frozen-deletes rule a fleet's policy owners might roll out.
const FREEZE_DELETES: &str = r#"package loopgate.hipaa

deny contains {"rank": 5, "rule_id": "fleet.freeze_deletes", "reason": "DELETE is frozen fleet-wide"} if {
	input.statement.classification.kind == "delete"
}
"#;

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let out = Command::new(loopgate_bin())
        .args(["audit", "keygen", "--out"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&public, &out.stdout).expect("write public key");
    (key, public)
}

/// `loopgate policy bundle build`, as the fleet's policy owners run it.
fn build(pack: &Path, key: &Path, revision: u64, out: &Path) -> Vec<u8> {
    let built = Command::new(loopgate_bin())
        .args(["policy", "bundle", "build"])
        .arg(pack)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out)
        .args(["--revision", &revision.to_string()])
        .output()
        .expect("bundle build");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    std::fs::read(out).expect("read bundle")
}

fn publish(s3: &S3Server, bytes: Vec<u8>) {
    let url = S3Url::parse(&s3.url("")).expect("url");
    let store = objstore::open(&url, &s3.client_config(), objstore::Open::default()).expect("client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(store.put(&object_store::path::Path::from(BUNDLE_KEY), PutPayload::from(bytes)))
        .expect("publish bundle");
}

/// Waits until `check` holds for the audit trail.
fn wait_until(f: &Clinic, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    f.agent.wait_events(what, |events| check(events))
}

fn reloads(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["kind"] == "policy_reload").collect()
}

fn refused_by(f: &Clinic, sql: &str) -> String {
    let out = f.psql(sql);
    assert!(!out.status.success(), "{sql} ran:\n{}", f.agent.log());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_fleet_bundle_decides_updates_and_outlives_its_store() {
    require_ebpf!();
    let mut s3 = S3Server::start("policy");
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(work.path(), "policy-signing");
    let (stranger, _) = keygen(work.path(), "stranger");
    let pack = policy_pack(work.path(), serde_json::json!({}));
    let rev1 = build(&pack, &key, 1, &work.path().join("rev1.bundle"));
    publish(&s3, rev1.clone());

    let extra = format!(
        "[policy.bundle]\nurl = \"s3://{}/{BUNDLE_KEY}\"\npublic_keys = [\"{}\"]\npoll_secs = 1\ncache_dir = \"{}\"\n{}",
        s3.bucket,
        public.display(),
        work.path().join("bundle-cache").display(),
        s3.connection_toml("policy.bundle.s3", work.path())
    );
    let mut f = Clinic::start(PgOptions::default(), &extra);

    // The HIPAA pack from the bucket decides (the built-in policy would
    // name a builtin.* rule).
    assert!(refused_by(&f, "TRUNCATE visits").contains("hipaa.deny_truncate"));
    f.psql_ok("DELETE FROM visits");
    let status = f.agent.status();
    assert_eq!(status["policy_bundle"]["revision"], 1, "{status:#}");
    assert_eq!(status["policy_bundle"]["loaded_from"], "store", "{status:#}");

    // Revision 2 freezes deletes: in force within a poll, and recorded.
    std::fs::write(pack.join("fleet.rego"), FREEZE_DELETES).expect("write rule");
    publish(&s3, build(&pack, &key, 2, &work.path().join("rev2.bundle")));
    wait_until(&f, "revision 2 loaded", |e| {
        reloads(e).iter().any(|r| {
            r["decision"]["verdict"] == "allow"
                && r["decision"]["reason"]
                    .as_str()
                    .is_some_and(|t| t.contains("revision 2 "))
        })
    });
    assert!(refused_by(&f, "DELETE FROM visits").contains("fleet.freeze_deletes"));

    // Signed by a key the agent does not trust: refused, revision 2 stays.
    std::fs::remove_file(pack.join("fleet.rego")).expect("rm rule");
    publish(&s3, build(&pack, &stranger, 3, &work.path().join("rev3.bundle")));
    wait_until(&f, "the foreign bundle refused", |e| {
        reloads(e).iter().any(|r| {
            r["decision"]["verdict"] == "error"
                && r["decision"]["reason"]
                    .as_str()
                    .is_some_and(|t| t.contains("no trusted signature"))
        })
    });
    assert!(refused_by(&f, "DELETE FROM visits").contains("fleet.freeze_deletes"));
    let status = f.agent.status();
    assert_eq!(status["policy_bundle"]["revision"], 2, "{status:#}");
    assert!(
        status["policy_bundle"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no trusted signature")),
        "{status:#}"
    );

    // A validly signed older bundle is a rollback: refused too.
    publish(&s3, rev1);
    wait_until(&f, "the rollback refused", |e| {
        reloads(e).iter().any(|r| {
            r["decision"]["reason"]
                .as_str()
                .is_some_and(|t| t.contains("rollback refused"))
        })
    });
    assert!(refused_by(&f, "DELETE FROM visits").contains("fleet.freeze_deletes"));

    // The store goes away and the agent restarts: the last good bundle
    // (revision 2) decides.
    s3.stop();
    f.agent.kill9();
    f.agent.spawn();
    assert!(refused_by(&f, "DELETE FROM visits").contains("fleet.freeze_deletes"));
    let status = f.agent.status();
    assert_eq!(status["policy_bundle"]["revision"], 2, "{status:#}");
    assert_eq!(status["policy_bundle"]["loaded_from"], "cache", "{status:#}");
    // Polls keep failing quietly; decisions go on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.agent.status()["policy_bundle"]["last_error"].is_null() {
        assert!(Instant::now() < deadline, "no fetch error shown");
        std::thread::sleep(Duration::from_millis(100));
    }
    f.psql_ok("SELECT count(*) FROM visits");
}
