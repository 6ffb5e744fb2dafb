use sqlparser::{dialect::PostgreSqlDialect, parser::Parser};

use super::*;

fn lineage(sql: &str) -> Lineage {
    let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
    of_statement(&parsed[0])
}

fn columns(sql: &str) -> Vec<OutputColumn> {
    match lineage(sql).result {
        ResultLineage::Columns(c) => c,
        other => panic!("{sql}: {other:?}"),
    }
}

/// Sources of each output column as `table.column` strings.
fn sources(sql: &str) -> Vec<Vec<String>> {
    columns(sql)
        .iter()
        .map(|c| c.derivation.sources.iter().map(ToString::to_string).collect())
        .collect()
}

fn one(sql: &str) -> Derivation {
    let c = columns(sql);
    assert_eq!(c.len(), 1, "{sql}: {c:?}");
    c[0].derivation.clone()
}

#[test]
fn plain_columns_are_direct_and_expressions_are_not() {
    let d = one("select ssn from patients");
    assert!(d.direct && !d.opaque);
    assert_eq!(sources("select p.ssn from patients p"), [["patients.ssn"]]);
    for sql in [
        "select ssn || 'x' from patients",
        "select 'a' || ssn from patients",
        "select substr(ssn, 1, 3) from patients",
        "select encode(convert_to(ssn, 'UTF8'), 'base64') from patients",
        "select encode(ssn::bytea, 'hex') from patients",
        "select reverse(ssn) from patients",
        "select translate(ssn, '0123456789', 'abcdefghij') from patients",
        "select replace(ssn, '-', '.') from patients",
        "select format('%s', ssn) from patients",
        "select ssn::text from patients",
        "select (ssn) || '' from patients",
        "select case when true then ssn end from patients",
        "select coalesce(null, ssn) from patients",
        "select array[ssn] from patients",
        "select row(ssn, 1) from patients",
        "select (ssn, 1) from patients",
        "select to_jsonb(ssn) ->> 0 from patients",
    ] {
        let d = one(sql);
        assert!(!d.direct, "{sql}");
        assert_eq!(
            d.sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["patients.ssn"],
            "{sql}"
        );
        assert!(!d.opaque && !d.safe, "{sql}");
    }
}

#[test]
fn whole_rows_and_json_constructors_take_every_column() {
    for sql in [
        "select to_json(p) from patients p",
        "select row_to_json(p) from patients p",
        "select row_to_json(p.*) from patients p",
        "select to_jsonb(p) ->> 'ssn' from patients p",
        "select json_agg(patients) from patients",
    ] {
        let d = one(sql);
        assert!(d.sources.iter().any(Source::whole_row), "{sql}: {d:?}");
    }
    let d = one("select json_build_object('s', ssn, 'e', email) from patients");
    assert_eq!(d.sources.len(), 2);
}

#[test]
fn aggregates_and_safe_functions() {
    assert_eq!(sources("select array_agg(mrn) from patients"), [["patients.mrn"]]);
    // `i` may also be a column of patients (only the server knows): both count.
    assert_eq!(
        sources("select string_agg(substr(ssn, i, 1), '') from patients, generate_series(1, 11) i"),
        [["patients.i", "patients.ssn"]]
    );
    for sql in [
        "select count(ssn) from patients",
        "select count(*) from patients",
        "select length(ssn) from patients",
        "select ssn is null from patients",
        "select octet_length(email) from patients",
    ] {
        assert!(one(sql).safe, "{sql}");
    }
    // A safe part adds nothing; the rest still counts.
    assert_eq!(
        sources("select length(ssn)::text || email from patients"),
        [["patients.email"]]
    );
    assert!(!one("select length(ssn)::text from patients").safe);
    assert!(one("select length(ssn)::text from patients").sources.is_empty());
    // Schema-qualified elsewhere: not PostgreSQL's length.
    assert!(one("select public.length(ssn) from patients").opaque);
}

#[test]
fn unknown_functions_are_opaque() {
    assert!(one("select my_secret()").opaque);
    assert!(one("select pg_temp.f(id) from patients").opaque);
    assert!(!one("select upper(city) from patients").opaque);
    assert!(!one("select pg_catalog.format_type(atttypid, atttypmod) from pg_attribute").opaque);
    assert!(one("select x from my_table_func() x").opaque);
}

#[test]
fn subqueries_ctes_and_set_operations() {
    assert_eq!(
        sources("with c as (select ssn || 'x' as s from patients) select s from c"),
        [["patients.ssn"]]
    );
    assert!(!one("with c as (select ssn from patients) select ssn from c").opaque);
    assert_eq!(
        sources("select s from (select reverse(ssn) as s, id from patients) t"),
        [["patients.ssn"]]
    );
    assert_eq!(
        sources("select t.a from (select email, id from patients) t(a, b)"),
        [["patients.email"]]
    );
    assert_eq!(
        sources("select (select max(ssn) from patients) as x"),
        [["patients.ssn"]]
    );
    assert_eq!(sources("select 'a' union select ssn from patients"), [["patients.ssn"]]);
    assert_eq!(
        sources("select * from (select ssn, 1 from patients union all select 'x', 2) u"),
        [vec!["patients.ssn"], vec![]]
    );
    // Correlated references see the outer query.
    assert_eq!(
        sources("select (select v.id || p.ssn from visits v limit 1) from patients p"),
        [["patients.ssn", "visits.id"]]
    );
}

#[test]
fn recursive_ctes_carry_their_anchor() {
    let d = one(
        "with recursive r(n, s) as (select 1, ssn from patients union all select n + 1, s || '' from r where n < 3) select s from r",
    );
    assert_eq!(
        d.sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["patients.ssn"]
    );
}

#[test]
fn stars_expand_and_align_with_the_described_fields() {
    let l = lineage("select id, *, ssn || 'x' as tail from patients");
    let aligned = l.align(5);
    assert_eq!(aligned.len(), 5);
    assert!(aligned[0].as_ref().unwrap().direct);
    assert!(aligned[2].as_ref().unwrap().sources.iter().all(Source::whole_row));
    assert!(!aligned[4].as_ref().unwrap().direct);
    // A count that does not match cannot be placed.
    assert!(
        lineage("select ssn || 'x', id from patients")
            .align(3)
            .iter()
            .all(Option::is_none)
    );
    assert!(lineage("fetch 10 from c").align(2).iter().all(Option::is_none));
    // Star over a subquery is known column by column.
    let l = lineage("select * from (select reverse(ssn) r, id from patients) s");
    let aligned = l.align(2);
    assert!(aligned[0].as_ref().unwrap().sources.iter().any(|s| s.column == "ssn"));
}

#[test]
fn lateral_and_unnest() {
    assert_eq!(
        sources("select u.u from patients p, unnest(array[p.ssn, p.email]) u"),
        [["patients.email", "patients.ssn"]]
    );
    assert_eq!(
        sources("select x.r from patients p, lateral (select reverse(p.mrn) as r) x"),
        [["patients.mrn"]]
    );
    assert_eq!(
        sources("select e.e from patients, jsonb_array_elements_text(to_jsonb(array[ssn])) e"),
        [["patients.ssn"]]
    );
}

#[test]
fn returning_and_statements_without_rows() {
    assert_eq!(
        sources("update patients set phone = '1' where id = 1 returning reverse(ssn)"),
        [["patients.ssn"]]
    );
    assert_eq!(
        sources("with d as (delete from patients returning ssn) select ssn || '' from d"),
        [["patients.ssn"]]
    );
    assert_eq!(lineage("show timezone").result, ResultLineage::NoData);
    assert_eq!(
        lineage("explain select ssn from patients").result,
        ResultLineage::NoData
    );
    assert_eq!(lineage("execute p(1)").result, ResultLineage::Unknown);
}

#[test]
fn predicates_name_their_columns() {
    let l = lineage(
        "select id from patients p join visits v on v.patient_id = p.id where p.ssn like '1%' and v.notes is null",
    );
    let names: Vec<String> = l.predicate_sources.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        ["patients.id", "patients.ssn", "visits.notes", "visits.patient_id"]
    );
    let l = lineage("select count(*) filter (where email like '%@x') from patients having min(dob) > now()");
    let names: Vec<String> = l.predicate_sources.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["patients.dob", "patients.email"]);
    let l = lineage("select 1 where exists (select 1 from patients where mrn = 'M1')");
    assert!(l.predicate_sources.iter().any(|s| s.column == "mrn"));
}

#[test]
fn stored_rows_are_described() {
    let stored = |sql: &str| lineage(sql).stored.unwrap();
    assert!(
        stored("create temp table t as select ssn as s from patients")[0]
            .derivation
            .sources
            .iter()
            .any(|s| s.column == "ssn")
    );
    assert!(
        stored("select reverse(email) as e into temp t from patients")[0]
            .derivation
            .sources
            .iter()
            .any(|s| s.column == "email")
    );
    assert!(stored("create view v as select * from patients")[0].expands);
    assert!(
        stored("insert into t (a) select mrn from patients")[0]
            .derivation
            .sources
            .iter()
            .any(|s| s.column == "mrn")
    );
    assert!(stored("insert into t values (1)")[0].derivation.sources.is_empty());
    assert!(lineage("select 1").stored.is_none());
}
