//! The policy in force when none is configured: refuse what cannot be seen
//! (unparseable and dynamic SQL) and the irreversible (DROP DATABASE,
//! DROP TABLE, TRUNCATE, DELETE or UPDATE of every row); allow the rest.
//!
//! A statement is judged by everything it can do (`Classification::effects`):
//! its data-modifying CTEs and the body of a function it creates count, so
//! `WITH d AS (DELETE FROM t) SELECT 1` is a DELETE of every row and
//! `CREATE FUNCTION f() ... AS 'TRUNCATE t'` is a TRUNCATE. A function body
//! that cannot be analysed is dynamic SQL.
use serde::Deserialize;

use super::{PolicyDecision, PolicyEngine, PolicyInput};
use crate::sql::{DynamicSql, StatementKind};

/// Rule ids named in block messages and audit records.
pub mod rule_ids {
    pub const UNPARSEABLE: &str = "builtin.refuse_unparseable";
    pub const DYNAMIC_SQL: &str = "builtin.refuse_dynamic_sql";
    pub const DROP_DATABASE: &str = "builtin.block_drop_database";
    pub const DROP_TABLE: &str = "builtin.block_drop_table";
    pub const TRUNCATE: &str = "builtin.block_truncate";
    pub const UNBOUNDED_WRITE: &str = "builtin.block_unbounded_write";
    pub const SSH_FORWARD: &str = "builtin.block_ssh_forward";
}

/// `[policy.builtin]` in the agent config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinPolicyConfig {
    /// Forward SQL the analyzer cannot parse. Default `false`: unparseable
    /// SQL cannot be classified, so it is refused.
    pub allow_unparseable: bool,
    /// Forward dynamic SQL (DO blocks, EXECUTE, dblink, query_to_xml, COPY
    /// ... PROGRAM). Default `false`.
    pub allow_dynamic_sql: bool,
    /// Block DROP DATABASE. Default `true`.
    pub block_drop_database: bool,
    /// Block DROP TABLE. Default `true`.
    pub block_drop_table: bool,
    /// Block TRUNCATE. Default `true`.
    pub block_truncate: bool,
    /// Block DELETE and UPDATE without WHERE (every row: as irreversible
    /// as TRUNCATE). Default `true`.
    pub block_unbounded_writes: bool,
    /// Block SSH forwarding (`ssh -L`/`-R`, unix sockets, agent, X11): a
    /// forward is a tunnel whose traffic loopgate cannot see. Default `true`.
    pub block_ssh_forward: bool,
}

impl Default for BuiltinPolicyConfig {
    fn default() -> Self {
        BuiltinPolicyConfig {
            allow_unparseable: false,
            allow_dynamic_sql: false,
            block_drop_database: true,
            block_drop_table: true,
            block_truncate: true,
            block_unbounded_writes: true,
            block_ssh_forward: true,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct BuiltinPolicy {
    config: BuiltinPolicyConfig,
}

impl BuiltinPolicy {
    pub fn new(config: BuiltinPolicyConfig) -> Self {
        BuiltinPolicy { config }
    }
}

fn dynamic_reason(dynamic: &DynamicSql) -> String {
    match dynamic {
        DynamicSql::DoBlock => "DO blocks are refused: their code cannot be checked".to_string(),
        DynamicSql::Execute => "EXECUTE of a prepared statement by name is refused".to_string(),
        DynamicSql::Function { name } => {
            format!("{name}() runs SQL that cannot be checked and is refused")
        }
        DynamicSql::CopyProgram => "COPY ... PROGRAM runs a server command and is refused".to_string(),
        DynamicSql::FunctionBody { language } => {
            format!(
                "a {language} function body that cannot be analysed is refused: what it does when called is unknown"
            )
        }
    }
}

impl PolicyEngine for BuiltinPolicy {
    fn decide(&self, input: &PolicyInput<'_>) -> PolicyDecision {
        let c = &self.config;
        // Besides forwards, only SQL has forms the built-in policy knows;
        // other actions are decided by a policy pack.
        if let super::Action::SshForward { channel, .. } = input.action
            && c.block_ssh_forward
        {
            return PolicyDecision::deny(
                rule_ids::SSH_FORWARD,
                format!("SSH forwarding ({channel}) is not allowed: its traffic cannot be checked"),
            );
        }
        let Some(statement) = input.statement() else {
            return PolicyDecision::allow();
        };
        let classification = match &statement.classification {
            Ok(classification) => classification,
            Err(_) if c.allow_unparseable => return PolicyDecision::allow(),
            Err(error) => return PolicyDecision::deny(rule_ids::UNPARSEABLE, error.to_string()),
        };
        if let Some(dynamic) = &classification.dynamic
            && !c.allow_dynamic_sql
        {
            return PolicyDecision::deny(rule_ids::DYNAMIC_SQL, dynamic_reason(dynamic));
        }
        let tables = || classification.tables_written.join(", ");
        let does = |kind: StatementKind| classification.kind == kind || classification.effects.contains(&kind);
        if c.block_drop_database && does(StatementKind::DropDatabase) {
            return PolicyDecision::deny(rule_ids::DROP_DATABASE, "DROP DATABASE is not allowed");
        }
        if c.block_drop_table && does(StatementKind::DropTable) {
            return PolicyDecision::deny(
                rule_ids::DROP_TABLE,
                format!("DROP TABLE is not allowed ({})", tables()),
            );
        }
        if c.block_truncate && does(StatementKind::Truncate) {
            return PolicyDecision::deny(rule_ids::TRUNCATE, format!("TRUNCATE is not allowed ({})", tables()));
        }
        if c.block_unbounded_writes
            && let Some(kind) = classification.unbounded_writes.first()
        {
            return PolicyDecision::deny(
                rule_ids::UNBOUNDED_WRITE,
                format!(
                    "{} without WHERE changes every row and is not allowed ({})",
                    kind.as_str().to_uppercase(),
                    tables()
                ),
            );
        }
        PolicyDecision::allow()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        mask::{MaskConfig, Masker},
        policy::{Action, Principal, ProcessInfo, TargetInfo},
        sql::{Analyzer, SqlConfig},
    };

    /// Decisions for each statement of `sql`.
    fn decide_all(policy: &dyn PolicyEngine, sql: &str) -> Vec<PolicyDecision> {
        let analyzer = Analyzer::new(
            &SqlConfig::default(),
            Masker::new(&MaskConfig::default(), None).unwrap(),
        );
        let principal = Principal {
            subject: "ci-bot".into(),
            groups: vec!["automation".into()],
        };
        let process = ProcessInfo {
            pid: 42,
            uid: 1000,
            comm: "psql".into(),
            ..ProcessInfo::default()
        };
        let target = TargetInfo {
            name: "clinic".into(),
            protocol: "postgres".into(),
            identity: "process".into(),
        };
        analyzer
            .analyze(sql)
            .statements
            .iter()
            .map(|statement| {
                policy.decide(&PolicyInput {
                    principal: &principal,
                    process: &process,
                    target: &target,
                    action: Action::Sql { statement },
                    session: None,
                    time: std::time::SystemTime::now(),
                })
            })
            .collect()
    }

    fn rules(policy: &dyn PolicyEngine, sql: &str) -> Vec<Option<String>> {
        decide_all(policy, sql)
            .iter()
            .map(|d| d.rule_id().map(str::to_string))
            .collect()
    }

    fn one_rule(policy: &dyn PolicyEngine, sql: &str) -> Option<String> {
        let r = rules(policy, sql);
        assert_eq!(r.len(), 1, "{sql}");
        r.into_iter().next().flatten()
    }

    #[test]
    fn default_blocks_destructive_statements_with_named_rules() {
        let p = BuiltinPolicy::default();
        assert_eq!(
            one_rule(&p, "DROP DATABASE clinic").as_deref(),
            Some(rule_ids::DROP_DATABASE)
        );
        assert_eq!(
            one_rule(&p, "DrOp   TaBlE patients").as_deref(),
            Some(rule_ids::DROP_TABLE)
        );
        assert_eq!(one_rule(&p, "truncate visits").as_deref(), Some(rule_ids::TRUNCATE));
        let d = &decide_all(&p, "drop table public.patients, visits")[0];
        assert_eq!(
            d,
            &PolicyDecision::deny(
                rule_ids::DROP_TABLE,
                "DROP TABLE is not allowed (public.patients, visits)"
            )
        );
    }

    #[test]
    fn default_allows_ordinary_work() {
        let p = BuiltinPolicy::default();
        for sql in [
            "select * from patients",
            "insert into visits values (1)",
            "update patients set x = 1 where id = 2",
            "delete from visits where id = 1",
            "begin",
            "create table t (id int)",
            "drop view v",
        ] {
            let d = &decide_all(&p, sql)[0];
            assert!(d.is_allow(), "{sql}: {d:?}");
            assert!(d.mask_overrides().is_empty());
        }
    }

    /// What a statement can do includes what its CTEs and the functions it
    /// creates can do.
    #[test]
    fn destructive_work_inside_ctes_and_function_bodies_is_blocked() {
        let p = BuiltinPolicy::default();
        for (sql, rule) in [
            (
                "with d as (delete from patients returning *) select count(*) from d",
                rule_ids::UNBOUNDED_WRITE,
            ),
            (
                "with u as (update patients set ssn = null returning id) select 1",
                rule_ids::UNBOUNDED_WRITE,
            ),
            ("delete from patients", rule_ids::UNBOUNDED_WRITE),
            (
                "create function f() returns void language sql as 'truncate patients'",
                rule_ids::TRUNCATE,
            ),
            (
                "create or replace function pg_temp.f() returns void as $$ drop table patients $$ language sql",
                rule_ids::DROP_TABLE,
            ),
            (
                "create function f() returns void language plpgsql as $$ begin truncate visits; end $$",
                rule_ids::TRUNCATE,
            ),
            (
                "create function f() returns void language plpgsql as $$ begin delete from visits; end $$",
                rule_ids::UNBOUNDED_WRITE,
            ),
            (
                "create function f() returns void language plpgsql as $$ begin execute 'drop ' || 'table patients'; end $$",
                rule_ids::DYNAMIC_SQL,
            ),
            (
                "create function f() returns int language plpython3u as 'return 1'",
                rule_ids::DYNAMIC_SQL,
            ),
            (
                "create function f() returns void language sql as 'selec oops'",
                rule_ids::DYNAMIC_SQL,
            ),
        ] {
            assert_eq!(one_rule(&p, sql).as_deref(), Some(rule), "{sql}");
        }
        for sql in [
            "with d as (delete from visits where id = 1 returning *) select * from d",
            "create function f(i int) returns int language sql as 'select i + 1'",
            "create function g() returns void language plpgsql as $$ begin delete from visits where id = 1;              perform 1 from visits for update; end $$",
            "select my_report()",
        ] {
            assert_eq!(one_rule(&p, sql), None, "{sql}");
        }
        // A call of a function loopgate does not know counts as a write.
        let analyzer = Analyzer::new(
            &SqlConfig::default(),
            Masker::new(&MaskConfig::default(), None).unwrap(),
        );
        let c = analyzer.analyze("select my_report()").statements[0]
            .classification
            .clone()
            .unwrap();
        assert!(c.effects.contains(&StatementKind::Call), "{:?}", c.effects);
        assert_eq!(c.unknown_functions, ["my_report"]);
    }

    #[test]
    fn each_statement_of_a_batch_is_decided() {
        let p = BuiltinPolicy::default();
        assert_eq!(
            rules(&p, "select 1; /* x */ drop table t; -- y\nselect 2"),
            [None, Some(rule_ids::DROP_TABLE.to_string()), None]
        );
    }

    #[test]
    fn unparseable_and_dynamic_refused_unless_configured() {
        let strict = BuiltinPolicy::default();
        assert_eq!(
            one_rule(&strict, "selec * frm t").as_deref(),
            Some(rule_ids::UNPARSEABLE)
        );
        assert_eq!(
            one_rule(&strict, "DO $$ BEGIN NULL; END $$").as_deref(),
            Some(rule_ids::DYNAMIC_SQL)
        );
        assert_eq!(
            one_rule(&strict, "select * from dblink('x', 'select 1') t(a int)").as_deref(),
            Some(rule_ids::DYNAMIC_SQL)
        );
        assert_eq!(
            one_rule(&strict, "copy t to program 'sh'").as_deref(),
            Some(rule_ids::DYNAMIC_SQL)
        );

        let lax = BuiltinPolicy::new(BuiltinPolicyConfig {
            allow_unparseable: true,
            allow_dynamic_sql: true,
            ..BuiltinPolicyConfig::default()
        });
        assert_eq!(one_rule(&lax, "selec * frm t"), None);
        assert_eq!(one_rule(&lax, "DO $$ BEGIN NULL; END $$"), None);
        // Still blocks what it blocks.
        assert_eq!(one_rule(&lax, "truncate t").as_deref(), Some(rule_ids::TRUNCATE));
    }

    #[test]
    fn blocks_can_be_switched_off() {
        let p = BuiltinPolicy::new(BuiltinPolicyConfig {
            block_truncate: false,
            ..BuiltinPolicyConfig::default()
        });
        assert_eq!(one_rule(&p, "truncate t"), None);
        assert_eq!(one_rule(&p, "drop table t").as_deref(), Some(rule_ids::DROP_TABLE));
    }

    #[test]
    fn unparseable_reason_does_not_quote_values() {
        let d = &decide_all(
            &BuiltinPolicy::default(),
            "select * from t where n = 'Jane Doe' oops 'Jane Doe'",
        )[0];
        let PolicyDecision::Deny { reason, .. } = d else {
            panic!("expected deny, got {d:?}")
        };
        assert!(!reason.contains("Jane"), "{reason}");
    }

    #[test]
    fn engine_is_usable_as_shared_trait_object() {
        let engine: Arc<dyn PolicyEngine> = Arc::new(BuiltinPolicy::default());
        let handle = std::thread::spawn(move || one_rule(engine.as_ref(), "drop database x"));
        assert_eq!(handle.join().unwrap().as_deref(), Some(rule_ids::DROP_DATABASE));
    }

    #[test]
    fn policy_input_serializes_for_rego() {
        let analyzer = Analyzer::new(
            &SqlConfig::default(),
            Masker::new(&MaskConfig::default(), None).unwrap(),
        );
        let analysis = analyzer.analyze("select ssn from patients where id = 7");
        let input = PolicyInput {
            principal: &Principal {
                subject: "alice".into(),
                groups: vec!["oncall".into()],
            },
            process: &ProcessInfo::default(),
            target: &TargetInfo {
                name: "clinic".into(),
                protocol: "postgres".into(),
                identity: String::new(),
            },
            action: Action::Sql {
                statement: &analysis.statements[0],
            },
            session: None,
            time: std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * 4 + 3600 * 9 + 60 * 30),
        };
        let json = serde_json::to_value(input).unwrap();
        assert_eq!(json["principal"]["groups"][0], "oncall");
        assert_eq!(json["statement"]["classification"]["kind"], "select");
        assert_eq!(json["statement"]["classification"]["tables_read"][0], "patients");
        assert_eq!(
            json["statement"]["normalized_text"],
            "select ssn from patients where id = ?"
        );
        // 1970-01-05 09:30 UTC was a Monday.
        assert_eq!(
            json["time"],
            serde_json::json!({"unix_secs": 379_800, "weekday": 1, "hour": 9, "minute": 30})
        );
        assert!(json["session"].is_null());
        assert_eq!(json["target"]["identity"], "");
        // The same statement as a tagged action.
        assert_eq!(json["action"]["kind"], "sql");
        assert_eq!(json["action"]["statement"], json["statement"]);
    }

    #[test]
    fn other_actions_serialize_by_kind_without_a_statement() {
        let principal = Principal::default();
        let process = ProcessInfo::default();
        let target = TargetInfo::default();
        let request = crate::policy::HttpRequest {
            method: "GET".into(),
            host: "k8s.example.org".into(),
            path: "/api/v1/namespaces/ward/secrets".into(),
            query: None,
            kubernetes: Some(crate::policy::KubernetesRequest {
                verb: "list".into(),
                resource: "secrets".into(),
                version: "v1".into(),
                namespace: Some("ward".into()),
                ..Default::default()
            }),
            fhir: None,
        };
        let input = |action| PolicyInput {
            principal: &principal,
            process: &process,
            target: &target,
            action,
            session: None,
            time: std::time::SystemTime::now(),
        };
        let exec = serde_json::to_value(input(Action::SshExec { command: "uptime" })).unwrap();
        assert_eq!(
            exec["action"],
            serde_json::json!({"kind": "ssh_exec", "command": "uptime"})
        );
        assert!(exec.get("statement").is_none(), "{exec}");
        let http = serde_json::to_value(input(Action::HttpRequest(&request))).unwrap();
        assert_eq!(http["action"]["kind"], "http_request");
        assert_eq!(http["action"]["kubernetes"]["verb"], "list");
        assert_eq!(http["action"]["kubernetes"]["namespace"], "ward");
        let tunnel = Action::SshForward {
            channel: "direct-tcpip",
            host: "db",
            port: 5432,
        };
        let forward = serde_json::to_value(input(tunnel)).unwrap();
        assert_eq!(forward["action"]["port"], 5432);
        assert_eq!(forward["action"]["channel"], "direct-tcpip");
        // The built-in policy knows SQL's destructive forms and refuses forwards.
        let policy = BuiltinPolicy::new(BuiltinPolicyConfig::default());
        let shell = Action::SshShell {
            pty: true,
            term: Some("xterm"),
        };
        assert_eq!(policy.decide(&input(shell)), PolicyDecision::allow());
        assert_eq!(policy.decide(&input(tunnel)).rule_id(), Some(rule_ids::SSH_FORWARD));
        let open = BuiltinPolicy::new(BuiltinPolicyConfig {
            block_ssh_forward: false,
            ..BuiltinPolicyConfig::default()
        });
        assert_eq!(open.decide(&input(tunnel)), PolicyDecision::allow());
    }

    #[test]
    fn config_parses_and_rejects_unknown_keys() {
        let c: BuiltinPolicyConfig = toml::from_str("allow_dynamic_sql = true").unwrap();
        assert!(c.allow_dynamic_sql && c.block_drop_table);
        assert!(toml::from_str::<BuiltinPolicyConfig>("block_drop = true").is_err());
    }
}
