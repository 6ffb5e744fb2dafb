//! Derived values: PHI computed into something else (`ssn || 'x'`,
//! `reverse(ssn)`, `to_json(p)`, `array_agg(mrn)`, a pg_temp function, the
//! error of a failed cast, a NOTICE) must not reach the client. Unmodified
//! psql and psycopg against a real PostgreSQL, through loopgate with the
//! built-in policy (no pack), as a new install runs.
use std::collections::BTreeSet;

use base64::Engine as _;
use loopgate_e2e::{
    clinic::{Clinic, commands},
    postgres::PgOptions,
    require_ebpf,
};

/// Patients in the fixture: every query returns at most this many rows.
const ROWS: usize = 20;

/// Queries whose every value derives from PHI: each must come back as
/// `***`, row for row.
const WHOLE: &[&str] = &[
    "select row(ssn, email, mrn) from patients",
    "select ssn || 'x' from patients",
    "select 'a' || ssn from patients",
    "select substr(ssn, 1, 3) from patients",
    "select substr(ssn, 5) from patients",
    "select encode(convert_to(ssn, 'UTF8'), 'base64') from patients",
    "select encode(ssn::bytea, 'hex') from patients",
    "select convert_to(ssn, 'UTF8') from patients",
    "select reverse(ssn) from patients",
    "select translate(ssn, '0123456789', 'abcdefghij') from patients",
    "select replace(ssn, '-', '.') from patients",
    "select regexp_replace(email, '@', ' at ') from patients",
    "select string_agg(substr(ssn, i, 1), '') from patients, generate_series(1, 11) i group by id",
    "select to_json(p) from patients p",
    "select row_to_json(p) from patients p",
    "select json_build_object('ssn', ssn, 'email', email) from patients",
    "select array_agg(mrn) from patients",
    "select format('%s/%s', mrn, phone) from patients",
    "select to_char(dob, 'YYYY-MM-DD') from patients",
    "select dob::text from patients",
    "select dob + 0 from patients",
    "select u from patients, unnest(array[ssn, email]) u",
    "select to_jsonb(p) ->> 'ssn' from patients p",
    "select p::text from patients p",
    "select (p).email from patients p",
    "select upper(email) from patients",
    "select md5(ssn) from patients",
    "select coalesce(phone, '') from patients",
    "select array_to_string(array_agg(ssn), ',') from patients",
    "select json_agg(email) from patients",
    "select (array_agg(mrn order by id))[1] from patients",
    "select row_to_json(t) from (select ssn from patients) t",
    "select case when id > 0 then phone end from patients",
    "select * from (select reverse(ssn) from patients) s",
    "select x from patients, lateral (select email || '' as x) l",
    "with c as (select ssn || '' as s from patients) select s from c",
    "with recursive r(n, s) as (select 1, min(ssn) from patients union all select n + 1, s from r where n < 3) \
     select s from r",
    "select (select max(email) from patients) from generate_series(1, 2)",
    "select x from (values ((select min(mrn) from patients))) v(x)",
    "select jsonb_agg(p) from patients p",
    "select ssn from patients union select 'x' from patients",
    "create function pg_temp.leak() returns setof text language sql as 'select ssn from patients'; \
     select pg_temp.leak()",
    // SQL-level PREPARE: EXECUTE is masked by the lineage of what it runs.
    "prepare leak(int) as select reverse(ssn) from patients where id > $1; execute leak(0)",
];

/// Statements that must be refused: they would copy PHI into an object
/// whose columns no mask rule knows.
const REFUSED: &[&str] = &[
    "create temp view v as select ssn as s from patients",
    "create temp table t as select email as e, mrn as m from patients",
    "select phone as p into temp t from patients",
    "create temp table t as select * from patients",
];

/// Errors and notices whose text would quote PHI.
const MESSAGES: &[&str] = &[
    "select (ssn || 'x')::int from patients",
    "select ('a' || email)::int from patients",
    "select mrn::int from patients",
    "create function pg_temp.say() returns void language plpgsql as $$ declare r record; begin \
     for r in select ssn, email, mrn from patients loop raise notice 'ssn % email % mrn %', r.ssn, r.email, r.mrn; \
     end loop; end $$; select pg_temp.say()",
];

/// Every raw PHI value of the fixture, and the encodings a query can turn
/// them into, as the server holds them.
fn phi_forms(f: &Clinic) -> BTreeSet<String> {
    let rows = f.pg.psql("select ssn, email, mrn, phone, dob::text from patients");
    let mut forms = BTreeSet::new();
    for line in rows.lines() {
        for value in line.split('|') {
            let b64 = base64::engine::general_purpose::STANDARD.encode(value);
            let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
            forms.extend([
                value.to_string(),
                value.chars().rev().collect(),
                b64.trim_end_matches('=').to_string(),
                hex,
                value.replace('-', "."),
                value.replace('@', " at "),
            ]);
        }
    }
    assert!(forms.len() > 5 * ROWS, "the fixture has PHI: {}", forms.len());
    forms
}

fn leaks<'a>(text: &str, forms: &'a BTreeSet<String>) -> Vec<&'a String> {
    forms.iter().filter(|v| text.contains(v.as_str())).collect()
}

#[test]
fn derived_values_never_reach_the_client() {
    require_ebpf!();
    let f = Clinic::start_sized(
        PgOptions::default(),
        ROWS,
        "[mask]\nmrn_pattern = \"MRN\\\\d{8}\"\n",
        |t, _| t,
    );
    let forms = phi_forms(&f);
    let mut everything = String::new();

    for sql in WHOLE {
        let out = f.psql(sql);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{sql}: {stderr}\n{}", f.agent.log());
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| !l.is_empty() && !["CREATE FUNCTION", "PREPARE"].contains(l))
            .collect();
        assert!(!lines.is_empty(), "{sql}: no rows");
        // Masked whole, as a valid value of its type: a text "***", a
        // record or array of masked fields, the sentinel date, a bytea of
        // "***" (\x2a2a2a).
        for line in &lines {
            assert!(
                ["***", "1900-01-01", "\\x2a2a2a"].iter().any(|m| line.contains(m)),
                "{sql}: not masked: {line}"
            );
        }
        everything.push_str(&stdout);
        everything.push_str(&stderr);
    }

    for sql in REFUSED {
        let out = f.psql(sql);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{sql} is refused");
        assert!(stderr.contains("loopgate.refuse_phi_copy"), "{sql}: {stderr}");
        everything.push_str(&stderr);
    }
    // Non-PHI columns can still be copied.
    f.psql_ok("create temp table t as select id, city from patients; select count(*) from t");

    for sql in MESSAGES {
        let out = f.psql(sql);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.contains("invalid input syntax") || stderr.contains("NOTICE"),
            "{sql}: the server's message arrives: {stderr}"
        );
        everything.push_str(&String::from_utf8_lossy(&out.stdout));
        everything.push_str(&stderr);
    }

    // Safe functions and non-PHI columns are served as they are.
    let counts = "select count(ssn), max(length(email)) from patients";
    assert_eq!(f.psql_ok(counts).trim(), f.pg.psql(counts));
    assert_eq!(
        f.psql_ok("select upper(city) from patients where id = 1").trim(),
        "CITY 1"
    );

    let found = leaks(&everything, &forms);
    assert!(found.is_empty(), "raw PHI reached the client: {found:?}\n{everything}");

    // The audit counts what was masked: every row of a derived column.
    let events = f.agent.wait_events("the results", |e| {
        e.iter().filter(|e| e["kind"] == "command_result").count() >= WHOLE.len()
    });
    let reverse = commands(&events)
        .into_iter()
        .find(|c| c["command"]["text"] == "select reverse(ssn) from patients")
        .expect("the reverse() command is recorded")
        .clone();
    let result = events
        .iter()
        .find(|e| e["kind"] == "command_result" && e["command_id"] == reverse["event_id"])
        .expect("its result is recorded");
    assert_eq!(result["outcome"]["rows"], ROWS as u64);
    assert_eq!(result["outcome"]["masked_count"], ROWS as u64, "{result}");
    let audit = f.audit_text();
    let found = leaks(&audit, &forms);
    assert!(found.is_empty(), "raw PHI in the audit: {found:?}");
}

/// psycopg in binary format: a derived column is masked whole as a valid
/// value of its type (text, the sentinel date, an array of masked
/// elements), so the driver decodes what it gets.
#[test]
fn derived_values_are_masked_in_binary_results() {
    require_ebpf!();
    let f = Clinic::start_sized(PgOptions::default(), ROWS, "", |t, _| t);
    let out = f.python_ok(
        r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    cur = conn.cursor(binary=True)
    cur.execute("select reverse(ssn), dob + 1, array_agg(email) over (), count(*) over () from patients")
    for row in cur.fetchall():
        print(row)
"#,
    );
    let forms = phi_forms(&f);
    let found = leaks(&out, &forms);
    assert!(found.is_empty(), "{found:?}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), ROWS, "{out}");
    for line in lines {
        assert!(
            line.starts_with("('***', datetime.date(1900, 1, 1), ['***'") && line.ends_with("'***'], 20)"),
            "{out}"
        );
    }
}
