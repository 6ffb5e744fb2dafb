//! The HIPAA pack's decisions on SQL classified by the real analyzer, and the
//! engine's failure modes: errors fail closed, bad packs never replace good ones.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, SystemTime},
};

use super::*;
use crate::{
    mask::{MaskAction, MaskConfig, Masker},
    policy::{Action, PolicyHandle, Principal, ProcessInfo, SessionInfo, TargetInfo, cli, watch},
    sql::{Analyzer, SqlConfig},
};

fn pack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A writable copy of the pack.
fn pack_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(pack_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn analyzer() -> Analyzer {
    Analyzer::new(
        &SqlConfig::default(),
        Masker::new(&MaskConfig::default(), None).unwrap(),
    )
}

struct Caller {
    principal: Principal,
    target: TargetInfo,
}

fn caller(subject: &str, groups: &[&str], identity: &str) -> Caller {
    Caller {
        principal: Principal {
            subject: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        },
        target: TargetInfo {
            name: "clinic".into(),
            protocol: "postgres".into(),
            identity: identity.into(),
        },
    }
}

fn analyst() -> Caller {
    caller("alice", &["analysts"], "token")
}

fn decide(policy: &dyn PolicyEngine, who: &Caller, sql: &str) -> PolicyDecision {
    let analysis = analyzer().analyze(sql);
    assert_eq!(analysis.statements.len(), 1, "{sql}");
    let process = ProcessInfo {
        pid: 7,
        uid: 1000,
        unit: Some("etl.service".into()),
        exe: Some("/usr/bin/psql".into()),
        comm: "psql".into(),
        ..ProcessInfo::default()
    };
    let session = SessionInfo {
        id: "s-1".into(),
        database: Some("clinic".into()),
        application_name: None,
    };
    policy.decide(&PolicyInput {
        principal: &who.principal,
        process: &process,
        target: &who.target,
        action: Action::Sql {
            statement: &analysis.statements[0],
        },
        session: Some(&session),
        time: SystemTime::now(),
    })
}

fn rule(d: &PolicyDecision) -> &str {
    d.rule_id().unwrap_or("allow")
}

fn mode_of(d: &PolicyDecision, column: &str) -> Option<MaskAction> {
    d.mask_overrides().iter().find(|m| m.column == column).map(|m| m.mode)
}

fn pack() -> RegoPolicy {
    RegoPolicy::load(pack_dir()).unwrap()
}

#[test]
fn pack_rego_tests_pass() {
    let report = run_tests(pack_dir()).unwrap();
    let failed: Vec<_> = report.outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(report.passed() >= 20, "{}", report.passed());
}

#[test]
fn pack_denies_destructive_and_opaque_sql() {
    let p = pack();
    let a = analyst();
    for (sql, expected) in [
        ("truncate scratch", "hipaa.deny_truncate"),
        ("TRUNCATE public.patients, visits", "hipaa.deny_truncate"),
        ("drop table patients", "hipaa.deny_drop_phi_table"),
        ("DROP TABLE public.visits", "hipaa.deny_drop_phi_table"),
        ("alter table patients drop column ssn", "hipaa.deny_alter_drop_phi"),
        ("ALTER TABLE patients DROP ssn", "hipaa.deny_alter_drop_phi"),
        ("drop database clinic", "hipaa.deny_drop_database"),
        ("drop schema public cascade", "hipaa.deny_drop_database"),
        ("selec * frm patients", "hipaa.deny_unparseable"),
        ("DO $$ BEGIN PERFORM 1; END $$", "hipaa.deny_dynamic_sql"),
        (
            "select * from dblink('x', 'select 1') t(a int)",
            "hipaa.deny_dynamic_sql",
        ),
        ("copy patients to program 'sh'", "hipaa.deny_dynamic_sql"),
    ] {
        let d = decide(&p, &a, sql);
        assert!(matches!(d, PolicyDecision::Deny { .. }), "{sql}: {d:?}");
        assert_eq!(rule(&d), expected, "{sql}");
    }
    for sql in [
        "drop table scratch",
        "alter table patients add column note text",
        "insert into visits (patient_id) values (1)",
        "begin",
    ] {
        assert!(decide(&p, &a, sql).is_allow(), "{sql}");
    }
}

#[test]
fn pack_holds_bulk_phi_exports() {
    let p = pack();
    let a = analyst();
    let d = decide(&p, &a, "select * from patients");
    let PolicyDecision::Hold(hold) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(hold.rule_id, "hipaa.hold_bulk_phi_select");
    assert_eq!(hold.approver_group, "phi-approvers");
    assert_eq!((hold.min_approvals, hold.timeout), (1, Duration::from_secs(900)));
    assert_eq!(hold.row_threshold, Some(1000));
    assert_eq!(mode_of(&d, "patients.ssn"), Some(MaskAction::Partial));

    assert_eq!(
        rule(&decide(&p, &a, "select name from patients limit 5000")),
        "hipaa.hold_bulk_phi_select"
    );
    assert_eq!(
        rule(&decide(&p, &a, "select name from patients limit $1")),
        "hipaa.hold_bulk_phi_select"
    );
    let copy = decide(&p, &a, "copy patients to stdout");
    assert_eq!(rule(&copy), "hipaa.hold_phi_export");
    assert!(matches!(&copy, PolicyDecision::Hold(h) if h.row_threshold.is_none()));
    assert_eq!(
        rule(&decide(
            &p,
            &a,
            "copy (select ssn from patients where id = 1) to stdout"
        )),
        "hipaa.hold_phi_export"
    );

    assert!(decide(&p, &a, "select name from patients limit 10").is_allow());
    assert!(decide(&p, &a, "select name from patients where id = 42").is_allow());
    assert!(decide(&p, &a, "select * from scratch").is_allow());
    assert!(decide(&p, &a, "explain select * from patients").is_allow());
}

#[test]
fn pack_masks_phi_with_group_exceptions() {
    let p = pack();
    let sql = "select name, ssn from patients p join visits v on v.pid = p.id where p.id = 1";
    let d = decide(&p, &analyst(), sql);
    assert!(d.is_allow(), "{d:?}");
    assert_eq!(mode_of(&d, "patients.name"), Some(MaskAction::Redact));
    assert_eq!(mode_of(&d, "patients.ssn"), Some(MaskAction::Partial));
    assert_eq!(mode_of(&d, "visits.diagnosis"), Some(MaskAction::Redact));

    let clinician = caller("bob", &["clinical-staff"], "token");
    let d = decide(&p, &clinician, sql);
    assert_eq!(mode_of(&d, "patients.name"), Some(MaskAction::Keep));
    assert_eq!(mode_of(&d, "visits.diagnosis"), Some(MaskAction::Keep));
    assert_eq!(mode_of(&d, "patients.ssn"), Some(MaskAction::Partial));
    assert!(decide(&p, &clinician, "select 1").mask_overrides().is_empty());
}

#[test]
fn pack_denies_unknown_principals_except_process_identity() {
    let p = pack();
    let sql = "select id from scratch where id = 1";
    assert_eq!(
        rule(&decide(&p, &caller("", &[], "token"), sql)),
        "hipaa.deny_unknown_principal"
    );
    assert_eq!(
        rule(&decide(&p, &caller("", &[], ""), sql)),
        "hipaa.deny_unknown_principal"
    );
    assert!(decide(&p, &caller("", &[], "process"), sql).is_allow());
    assert!(decide(&p, &caller("unix:etl", &[], "process"), sql).is_allow());
}

/// A one-module pack deciding with `body` (Rego, package loopgate).
fn tiny_pack(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.rego"), format!("package loopgate\n\n{body}\n")).unwrap();
    dir
}

fn assert_policy_error(d: &PolicyDecision) {
    assert_eq!(rule(d), POLICY_ERROR_RULE, "{d:?}");
    assert!(matches!(d, PolicyDecision::Deny { .. }));
}

#[test]
fn evaluation_errors_and_bad_output_fail_closed() {
    let sql = "select 1";
    for body in [
        // Conflicting values for a complete rule: an evaluation error.
        "decision := {\"decision\": \"allow\"}\ndecision := {\"decision\": \"deny\", \"rule_id\": \"x\", \"reason\": \"y\"} if input.principal.subject != \"\"",
        // Undefined for this input.
        "decision := {\"decision\": \"allow\"} if input.principal.subject == \"root\"",
        "decision := {\"decision\": \"maybe\"}",
        "decision := \"allow\"",
        "decision := {\"decision\": \"deny\"}",
        "decision := {\"decision\": \"hold\", \"rule_id\": \"r\", \"reason\": \"x\"}",
        "decision := {\"decision\": \"hold\", \"rule_id\": \"r\", \"reason\": \"x\", \"approval\": {\"group\": \"g\", \"min_approvals\": 0}}",
        "decision := {\"decision\": \"allow\", \"mask\": [{\"column\": \"ssn\", \"mode\": \"shred\"}]}",
        "decision := {\"decision\": \"allow\", \"extra\": 1}",
    ] {
        let dir = tiny_pack(body);
        let policy = RegoPolicy::load(dir.path()).unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_policy_error(&decide(&policy, &analyst(), sql));
        // Errors are not cached: the second call evaluates again and fails again.
        assert_policy_error(&decide(&policy, &analyst(), sql));
    }
    // The same machinery accepts a well-formed hold.
    let dir = tiny_pack(
        "decision := {\"decision\": \"hold\", \"rule_id\": \"r\", \"reason\": \"x\", \"approval\": {\"group\": \"g\"}}",
    );
    let d = decide(&RegoPolicy::load(dir.path()).unwrap(), &analyst(), sql);
    assert!(
        matches!(&d, PolicyDecision::Hold(h) if h.min_approvals == 1 && h.row_threshold.is_none()),
        "{d:?}"
    );
}

#[test]
fn load_errors_name_file_and_line() {
    let dir = tiny_pack("decision := {\"decision\": \"allow\"}\n\nbroken if {\n  input.x ==\n}");
    let e = RegoPolicy::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("p.rego:"), "{e}");
    assert!(e.contains(":7:") || e.contains(":6:"), "{e}");

    let dir = tiny_pack("decision := {\"decision\": \"allow\"}");
    std::fs::write(dir.path().join("catalog.json"), "{\n  \"a\": 1,\n  oops\n}").unwrap();
    let e = RegoPolicy::load(dir.path()).unwrap_err();
    assert!(matches!(&e, PolicyError::Data { line: 3, .. }), "{e}");
    assert!(e.to_string().contains("catalog.json:3:"), "{e}");

    let dir = tiny_pack("allow := true");
    assert!(matches!(
        RegoPolicy::load(dir.path()),
        Err(PolicyError::NoEntryPoint { .. })
    ));

    let dir = tiny_pack("decision := {\"decision\": data.nowhere.x + unknown_var}");
    assert!(RegoPolicy::load(dir.path()).is_err());

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(RegoPolicy::load(empty.path()), Err(PolicyError::Empty { .. })));
    assert!(matches!(
        RegoPolicy::load("/nonexistent/policies"),
        Err(PolicyError::Io { .. })
    ));
}

#[test]
fn reload_keeps_the_old_policy_on_error_and_clears_the_cache() {
    let dir = pack_copy();
    let handle = PolicyHandle::load(dir.path()).unwrap();
    let a = analyst();
    assert_eq!(rule(&decide(&handle, &a, "truncate scratch")), "hipaa.deny_truncate");

    let hipaa = dir.path().join("hipaa.rego");
    let good = std::fs::read_to_string(&hipaa).unwrap();
    std::fs::write(&hipaa, good.replace("deny contains", "deny contans")).unwrap();
    let e = handle.reload(dir.path()).unwrap_err();
    assert!(e.to_string().contains("hipaa.rego"), "{e}");
    assert_eq!(rule(&decide(&handle, &a, "truncate scratch")), "hipaa.deny_truncate");

    // A valid change is picked up, and the cached decision with it.
    std::fs::write(&hipaa, good.replace("does(\"truncate\")", "does(\"no-such-kind\")")).unwrap();
    let summary = handle.reload(dir.path()).unwrap();
    assert_eq!(summary.data_files.len(), 1);
    assert!(decide(&handle, &a, "truncate scratch").is_allow());
}

#[test]
fn cached_decisions_match_evaluated_ones() {
    let p = pack();
    let a = analyst();
    let first = decide(&p, &a, "select name from patients where id = 1");
    // Other literal, same text otherwise: the analyzer's normalized text is the key.
    let second = decide(&p, &a, "select name from patients where id = 2");
    assert_eq!(first, second);
    let (hits, _) = p.cache_stats();
    assert_eq!(hits, 1);

    // Same fingerprint, different LIMIT: not the same cache entry.
    assert!(decide(&p, &a, "select name from patients limit 10").is_allow());
    assert_eq!(
        rule(&decide(&p, &a, "select name from patients limit 100000")),
        "hipaa.hold_bulk_phi_select"
    );
    // Another caller's groups: not the same entry either.
    let clinician = caller("alice", &["clinical-staff"], "token");
    let d = decide(&p, &clinician, "select name from patients where id = 3");
    assert_eq!(mode_of(&d, "patients.name"), Some(MaskAction::Keep));

    let uncached = RegoPolicy::load_with(
        pack_dir(),
        &RegoPolicyConfig {
            cache_entries: 0,
            ..RegoPolicyConfig::default()
        },
    )
    .unwrap();
    assert_eq!(decide(&uncached, &a, "select name from patients where id = 1"), first);
    assert_eq!(uncached.cache_stats().0, 0);

    // Expired entries are evaluated again.
    let expiring = RegoPolicy::load_with(
        pack_dir(),
        &RegoPolicyConfig {
            cache_ttl: Duration::ZERO,
            ..RegoPolicyConfig::default()
        },
    )
    .unwrap();
    decide(&expiring, &a, "select name from patients where id = 1");
    assert_eq!(decide(&expiring, &a, "select name from patients where id = 1"), first);
    assert_eq!(expiring.cache_stats(), (0, 2));
}

#[test]
fn decides_concurrently() {
    let p = Arc::new(pack());
    let cases = [
        ("truncate t", "hipaa.deny_truncate"),
        ("select * from patients", "hipaa.hold_bulk_phi_select"),
        ("select ssn from patients where id = 1", "allow"),
        ("drop table visits", "hipaa.deny_drop_phi_table"),
    ];
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let who = caller(&format!("user{}", t % 3), &["analysts"], "token");
                for i in 0..100 {
                    let (sql, expected) = cases[(i + t) % cases.len()];
                    assert_eq!(rule(&decide(p.as_ref(), &who, sql)), expected, "{sql}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (hits, misses) = p.cache_stats();
    assert_eq!(hits + misses, 800);
    assert!(hits >= 700, "{hits}");
}

#[test]
fn watcher_reloads_on_change() {
    let dir = pack_copy();
    let handle = Arc::new(PolicyHandle::new(Arc::new(RegoPolicy::load(dir.path()).unwrap())));
    let (tx, rx) = mpsc::channel();
    let _watcher = watch(
        handle.clone(),
        dir.path().to_path_buf(),
        Duration::from_millis(100),
        move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        },
    );
    std::thread::sleep(Duration::from_millis(150));
    std::fs::write(dir.path().join("extra.rego"), "package loopgate.extra\n\nx := 1\n").unwrap();
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap().is_ok());
    std::fs::write(dir.path().join("extra.rego"), "package loopgate.extra\n\nx := \n").unwrap();
    let e = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap_err();
    assert!(e.contains("extra.rego"), "{e}");
    assert_eq!(
        rule(&decide(handle.as_ref(), &analyst(), "truncate t")),
        "hipaa.deny_truncate"
    );
}

#[test]
fn test_runner_counts_failures_and_prints_the_closing_line() {
    let dir = tiny_pack("decision := {\"decision\": \"allow\"}");
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package loopgate_test\n\nimport data.loopgate\n\ntest_ok if loopgate.decision.decision == \"allow\"\n\n\
         test_bad if loopgate.decision.decision == \"deny\"\n\ntest_also_ok if {\n  true\n}\n",
    )
    .unwrap();
    let report = run_tests(dir.path()).unwrap();
    assert_eq!((report.passed(), report.failed()), (2, 1));
    let mut out = Vec::new();
    cli::print_report(&report, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.lines().last(), Some("2 passed, 1 failed"));
    assert!(out.contains("FAIL data.loopgate_test.test_bad: undefined"), "{out}");
    // Tests are not part of the production engine.
    assert_eq!(check(dir.path()).unwrap().modules.len(), 1);
}

#[test]
fn error_log_text_drops_quoted_values() {
    assert_eq!(
        redact_quoted("p.rego:3:1: error: cannot compare \"Jane Doe\" with 1\nmore"),
        "p.rego:3:1: error: cannot compare \"?\" with 1"
    );
}

#[test]
fn policy_test_command_exit_status() {
    use std::process::ExitCode;
    let run = |dir: &Path| {
        cli::run(cli::PolicyCommand::Test {
            dir: Some(dir.to_path_buf()),
        })
    };
    assert_eq!(run(&pack_dir()), ExitCode::SUCCESS);
    let dir = pack_copy();
    let tests = dir.path().join("hipaa_test.rego");
    let text = std::fs::read_to_string(&tests).unwrap();
    std::fs::write(
        &tests,
        text.replace("d.rule_id == \"hipaa.deny_truncate\"", "d.rule_id == \"x\""),
    )
    .unwrap();
    assert_eq!(run(dir.path()), ExitCode::FAILURE);
    // No tests at all is not a pass.
    assert_eq!(
        run(tiny_pack("decision := {\"decision\": \"allow\"}").path()),
        ExitCode::FAILURE
    );
    assert_eq!(run(Path::new("/nonexistent/policies")), ExitCode::FAILURE);
}

#[test]
fn reloads_while_sessions_decide() {
    let dir = pack_copy();
    let handle = Arc::new(PolicyHandle::load(dir.path()).unwrap());
    let deciders: Vec<_> = (0..4)
        .map(|_| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    // Every pack in force denies TRUNCATE; no decision may fail.
                    assert_eq!(
                        rule(&decide(handle.as_ref(), &analyst(), "truncate t")),
                        "hipaa.deny_truncate"
                    );
                }
            })
        })
        .collect();
    for _ in 0..5 {
        handle.reload(dir.path()).unwrap();
    }
    for t in deciders {
        t.join().unwrap();
    }
}

#[test]
fn a_pack_decides_other_actions_by_kind_and_caches_them_apart() {
    let dir = tiny_pack(
        "default decision := {\"decision\": \"allow\"}\n\
         decision := {\"decision\": \"deny\", \"rule_id\": \"no_rm\", \"reason\": \"rm is refused\"} if {\n\
         \tinput.action.kind == \"ssh_exec\"\n\
         \tstartswith(input.action.command, \"rm \")\n\
         }",
    );
    let policy = RegoPolicy::load(dir.path()).unwrap();
    let who = analyst();
    let process = ProcessInfo::default();
    let exec = |command| {
        policy.decide(&PolicyInput {
            principal: &who.principal,
            process: &process,
            target: &who.target,
            action: Action::SshExec { command },
            session: None,
            time: SystemTime::now(),
        })
    };
    // Twice each: the second answer comes from the cache, under its own key.
    for _ in 0..2 {
        assert_eq!(rule(&exec("rm -rf /srv/phi")), "no_rm");
        assert_eq!(rule(&exec("uptime")), "allow");
    }
    assert!(policy.cache_stats().0 >= 2, "{:?}", policy.cache_stats());
    // SQL still decides through the same pack.
    assert_eq!(rule(&decide(&policy, &who, "select 1")), "allow");
}

/// The pack judges a statement by everything it can do, as the built-in
/// policy does: a function body or a data-modifying CTE counts.
#[test]
fn pack_judges_function_bodies_and_ctes() {
    let p = pack();
    let a = analyst();
    for (sql, expected) in [
        (
            "create function f() returns void language sql as 'truncate visits'",
            "hipaa.deny_truncate",
        ),
        (
            "create function f() returns void language sql as 'drop table patients'",
            "hipaa.deny_drop_phi_table",
        ),
        (
            "create function f() returns void language plpgsql as $$ begin drop schema public cascade; end $$",
            "hipaa.deny_drop_database",
        ),
    ] {
        let d = decide(&p, &a, sql);
        assert!(matches!(d, PolicyDecision::Deny { .. }), "{sql}: {d:?}");
        assert_eq!(rule(&d), expected, "{sql}");
    }
    assert!(decide(&p, &a, "create function f() returns int language sql as 'select 1'").is_allow());
}

/// `refuse_phi_predicates`: off by default; "deny" refuses a filter on a
/// PHI column the caller may not see, "hold" waits for approval, on SQL
/// as the analyzer classifies it.
#[test]
fn pack_refuses_phi_predicates_when_asked() {
    let sql = "select id from patients where ssn like '1%'";
    let join = "select v.id from visits v join patients p on p.email = v.reason where v.id = 1";
    let a = analyst();
    assert!(decide(&pack(), &a, sql).is_allow());
    let setting = |value: &str| {
        let dir = pack_copy();
        let path = dir.path().join("phi_catalog.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = text.replace(
            "\"refuse_phi_predicates\": \"off\"",
            &format!("\"refuse_phi_predicates\": \"{value}\""),
        );
        assert_ne!(text, changed, "the catalogue names the setting");
        std::fs::write(&path, changed).unwrap();
        let policy = RegoPolicy::load(dir.path()).unwrap();
        (policy, dir)
    };
    let (deny, _d) = setting("deny");
    for q in [sql, join] {
        let d = decide(&deny, &a, q);
        assert_eq!(rule(&d), "hipaa.deny_phi_predicate", "{q}: {d:?}");
    }
    assert!(decide(&deny, &a, "select ssn from patients where id = 1").is_allow());
    // Clinical staff may see email, not ssn.
    let staff = caller("bob", &["clinical-staff"], "oidc");
    assert!(decide(&deny, &staff, join).is_allow());
    assert_eq!(rule(&decide(&deny, &staff, sql)), "hipaa.deny_phi_predicate");
    let (hold, _h) = setting("hold");
    let d = decide(&hold, &a, sql);
    assert!(matches!(d, PolicyDecision::Hold(_)), "{d:?}");
    assert_eq!(rule(&d), "hipaa.hold_phi_predicate");
}
