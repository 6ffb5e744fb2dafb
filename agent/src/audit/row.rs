//! The flat, auditor-facing shape of an event: one column per field, in one
//! fixed order. The WAL, the hash chain and the Parquet files all use this
//! shape, so what an auditor reads is exactly what was hashed.
use super::event::{CommandInfo, Decision, Event, EventKind, Outcome, Principal, ProcessInfo, TargetRef, Verdict};
use std::sync::Arc;

use uuid::Uuid;

/// Logical type of a column; nullability is part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// Non-null UTF-8.
    Str,
    /// Nullable UTF-8.
    OptStr,
    /// Non-null 64-bit integer.
    Int,
    /// Nullable 64-bit integer.
    OptInt,
    /// Non-null µs since the Unix epoch, UTC.
    Time,
    /// Non-null list of UTF-8 (empty when absent).
    List,
}

/// One value of a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Str(Option<String>),
    Int(Option<i64>),
    Time(i64),
    List(Vec<String>),
}

pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty }
}

use ColumnType::{Int, List, OptInt, OptStr, Str, Time};

/// Schema v1, in canonical order. Append new columns at the end (before
/// `prev_hash`) only together with a schema version bump.
pub const COLUMNS: &[Column] = &[
    col("event_id", Str),
    col("session_id", OptStr),
    col("seq", Int),
    col("kind", Str),
    col("time", Time),
    col("agent_host", Str),
    col("agent_version", Str),
    col("client_address", OptStr),
    col("principal_subject", OptStr),
    col("principal_issuer", OptStr),
    col("principal_email", OptStr),
    col("principal_groups", List),
    col("process_pid", OptInt),
    col("process_tgid", OptInt),
    col("process_uid", OptInt),
    col("process_user", OptStr),
    col("process_gid", OptInt),
    col("process_comm", OptStr),
    col("process_exe", OptStr),
    col("process_cmdline", OptStr),
    col("process_cgroup", OptStr),
    col("process_unit", OptStr),
    col("target_name", OptStr),
    col("target_protocol", OptStr),
    col("target_address", OptStr),
    col("command_id", OptStr),
    col("command_text", OptStr),
    col("command_fingerprint", OptStr),
    col("command_kind", OptStr),
    col("command_tables", List),
    col("command_columns", List),
    col("command_parameters", List),
    col("decision", OptStr),
    col("decision_rule_id", OptStr),
    col("decision_reason", OptStr),
    col("decision_approver", OptStr),
    col("decision_wait_us", OptInt),
    col("decision_approval_id", OptStr),
    col("result_status", OptStr),
    col("result_rows", OptInt),
    col("result_bytes_to_client", OptInt),
    col("result_bytes_to_server", OptInt),
    col("result_error_code", OptStr),
    col("result_masked_fields", List),
    col("result_masked_count", OptInt),
    col("duration_us", OptInt),
    col("prev_hash", Str),
    col("hash", Str),
];

pub const EVENT_ID: usize = 0;
pub const SESSION_ID: usize = 1;
pub const SEQ: usize = 2;
pub const KIND: usize = 3;
pub const TIME: usize = 4;
pub const HOST: usize = 5;
pub const COMMAND_TEXT: usize = 26;
pub const COMMAND_PARAMETERS: usize = 31;
pub const PREV_HASH: usize = COLUMNS.len() - 2;
pub const HASH: usize = COLUMNS.len() - 1;

/// A row: one cell per entry of [`COLUMNS`].
pub type Row = Vec<Cell>;

/// Receives an event's columns in [`COLUMNS`] order (see [`walk`]).
pub trait ColumnVisitor {
    fn str(&mut self, v: Option<&str>);
    fn int(&mut self, v: Option<i64>);
    fn time(&mut self, v: i64);
    fn list(&mut self, v: &[String]);
}

fn int<T: TryInto<i64>>(v: Option<T>) -> Option<i64> {
    v.map(|v| v.try_into().unwrap_or(i64::MAX))
}

/// Visits every column of `e` in [`COLUMNS`] order, borrowing its values:
/// the one place that says which field is which column. The chain encodes
/// from it directly, without building a row.
pub fn walk(e: &Event, v: &mut impl ColumnVisitor) {
    let mut uuid = Uuid::encode_buffer();
    let no_principal = Principal::default();
    let no_process = ProcessInfo::default();
    let no_command = CommandInfo::default();
    let no_outcome = Outcome::default();
    let p = e.principal.as_deref().unwrap_or(&no_principal);
    let pr = e.process.as_deref().unwrap_or(&no_process);
    let t = e.target.as_ref();
    let c = e.command.as_ref().unwrap_or(&no_command);
    let d = e.decision.as_ref();
    let o = e.outcome.as_ref().unwrap_or(&no_outcome);
    v.str(Some(e.event_id.hyphenated().encode_lower(&mut uuid)));
    v.str(e.session_id.map(|u| &*u.hyphenated().encode_lower(&mut uuid)));
    v.int(int(Some(e.seq)));
    v.str(Some(e.kind.as_str()));
    v.time(e.time_us);
    v.str(Some(&e.host));
    v.str(Some(&e.agent_version));
    v.str(e.client_address.as_deref());
    v.str(p.subject.as_deref());
    v.str(p.issuer.as_deref());
    v.str(p.email.as_deref());
    v.list(&p.groups);
    v.int(int(pr.pid));
    v.int(int(pr.tgid));
    v.int(int(pr.uid));
    v.str(pr.user.as_deref());
    v.int(int(pr.gid));
    v.str(pr.comm.as_deref());
    v.str(pr.exe.as_deref());
    v.str(pr.cmdline.as_deref());
    v.str(pr.cgroup.as_deref());
    v.str(pr.unit.as_deref());
    v.str(t.map(|t| t.name.as_str()));
    v.str(t.map(|t| t.protocol.as_str()));
    v.str(t.map(|t| t.address.as_str()));
    v.str(e.command_id.map(|u| &*u.hyphenated().encode_lower(&mut uuid)));
    v.str(c.text.as_deref());
    v.str(c.fingerprint.as_deref());
    v.str(c.kind.as_deref());
    v.list(&c.tables);
    v.list(&c.columns);
    v.list(&c.parameters);
    v.str(d.map(|d| d.verdict.as_str()));
    v.str(d.and_then(|d| d.rule_id.as_deref()));
    v.str(d.and_then(|d| d.reason.as_deref()));
    v.str(d.and_then(|d| d.approver.as_deref()));
    v.int(int(d.and_then(|d| d.wait_us)));
    v.str(d.and_then(|d| d.approval_id.as_deref()));
    v.str(o.status.as_deref());
    v.int(int(o.rows));
    v.int(int(o.bytes_to_client));
    v.int(int(o.bytes_to_server));
    v.str(o.error_code.as_deref());
    v.list(&o.masked_fields);
    v.int(int(o.masked_count));
    v.int(int(e.duration_us));
    v.str(Some(&e.prev_hash));
    v.str(Some(&e.hash));
}

/// Builds a row from [`walk`].
#[cfg(test)]
struct RowBuilder(Row);

#[cfg(test)]
impl ColumnVisitor for RowBuilder {
    fn str(&mut self, v: Option<&str>) {
        self.0.push(Cell::Str(v.map(str::to_owned)));
    }
    fn int(&mut self, v: Option<i64>) {
        self.0.push(Cell::Int(v));
    }
    fn time(&mut self, v: i64) {
        self.0.push(Cell::Time(v));
    }
    fn list(&mut self, v: &[String]) {
        self.0.push(Cell::List(v.to_vec()));
    }
}

/// Flattens `event` into a row (the append path encodes without one).
#[cfg(test)]
pub fn event_to_row(e: &Event) -> Row {
    let mut row = RowBuilder(Vec::with_capacity(COLUMNS.len()));
    walk(e, &mut row);
    row.0
}

/// Why a row could not be turned back into an event.
#[derive(Debug, thiserror::Error)]
#[error("column {column}: {problem}")]
pub struct RowError {
    pub column: &'static str,
    pub problem: String,
}

/// Reads cells in column order, checking each against its declared type.
struct Cells<'a> {
    row: &'a [Cell],
    at: usize,
}

impl Cells<'_> {
    fn next(&mut self) -> Result<(&'static str, &Cell), RowError> {
        let column = COLUMNS.get(self.at).map(|c| c.name).unwrap_or("?");
        let cell = self.row.get(self.at).ok_or_else(|| RowError {
            column,
            problem: "missing".into(),
        })?;
        self.at += 1;
        Ok((column, cell))
    }
    fn opt_str(&mut self) -> Result<Option<String>, RowError> {
        match self.next()? {
            (_, Cell::Str(v)) => Ok(v.clone()),
            (column, other) => Err(wrong(column, other)),
        }
    }
    fn str(&mut self) -> Result<String, RowError> {
        let column = COLUMNS.get(self.at).map(|c| c.name).unwrap_or("?");
        self.opt_str()?.ok_or_else(|| RowError {
            column,
            problem: "null in a non-null column".into(),
        })
    }
    fn opt_int<T: TryFrom<i64>>(&mut self) -> Result<Option<T>, RowError> {
        match self.next()? {
            (column, Cell::Int(v)) => v
                .map(|v| {
                    T::try_from(v).map_err(|_| RowError {
                        column,
                        problem: format!("{v} out of range"),
                    })
                })
                .transpose(),
            (column, other) => Err(wrong(column, other)),
        }
    }
    fn time(&mut self) -> Result<i64, RowError> {
        match self.next()? {
            (_, Cell::Time(v)) => Ok(*v),
            (column, other) => Err(wrong(column, other)),
        }
    }
    fn list(&mut self) -> Result<Vec<String>, RowError> {
        match self.next()? {
            (_, Cell::List(v)) => Ok(v.clone()),
            (column, other) => Err(wrong(column, other)),
        }
    }
}

fn wrong(column: &'static str, cell: &Cell) -> RowError {
    RowError {
        column,
        problem: format!("unexpected value {cell:?}"),
    }
}

fn uuid(column: &'static str, v: &str) -> Result<Uuid, RowError> {
    Uuid::parse_str(v).map_err(|e| RowError {
        column,
        problem: e.to_string(),
    })
}

/// Rebuilds the event a row was made from. Groups that are entirely empty
/// come back as `None`.
pub fn row_to_event(row: &[Cell]) -> Result<Event, RowError> {
    let mut c = Cells { row, at: 0 };
    let event_id = uuid("event_id", &c.str()?)?;
    let session_id = c.opt_str()?.map(|v| uuid("session_id", &v)).transpose()?;
    let seq = c.opt_int::<u64>()?.unwrap_or_default();
    let kind_name = c.str()?;
    let kind = EventKind::parse(&kind_name).ok_or_else(|| RowError {
        column: "kind",
        problem: format!("unknown kind {kind_name:?}"),
    })?;
    let time_us = c.time()?;
    let host = c.str()?;
    let agent_version = c.str()?;
    let client_address = c.opt_str()?;
    let principal = Principal {
        subject: c.opt_str()?,
        issuer: c.opt_str()?,
        email: c.opt_str()?,
        groups: c.list()?,
    };
    let process = ProcessInfo {
        pid: c.opt_int()?,
        tgid: c.opt_int()?,
        uid: c.opt_int()?,
        user: c.opt_str()?,
        gid: c.opt_int()?,
        comm: c.opt_str()?,
        exe: c.opt_str()?,
        cmdline: c.opt_str()?,
        cgroup: c.opt_str()?,
        unit: c.opt_str()?,
    };
    let (tn, tp, ta) = (c.opt_str()?, c.opt_str()?, c.opt_str()?);
    let target = (tn.is_some() || tp.is_some() || ta.is_some()).then(|| TargetRef {
        name: tn.unwrap_or_default(),
        protocol: tp.unwrap_or_default(),
        address: ta.unwrap_or_default(),
    });
    let command_id = c.opt_str()?.map(|v| uuid("command_id", &v)).transpose()?;
    let command = CommandInfo {
        text: c.opt_str()?,
        fingerprint: c.opt_str()?,
        kind: c.opt_str()?,
        tables: c.list()?,
        columns: c.list()?,
        parameters: c.list()?,
    };
    let verdict = c.opt_str()?;
    let (rule_id, reason, approver, wait_us) = (c.opt_str()?, c.opt_str()?, c.opt_str()?, c.opt_int()?);
    let approval_id = c.opt_str()?;
    let decision = verdict
        .map(|v| {
            Verdict::parse(&v).ok_or_else(|| RowError {
                column: "decision",
                problem: format!("unknown decision {v:?}"),
            })
        })
        .transpose()?
        .map(|verdict| Decision {
            verdict,
            rule_id,
            reason,
            approver,
            wait_us,
            approval_id,
        });
    let outcome = Outcome {
        status: c.opt_str()?,
        rows: c.opt_int()?,
        bytes_to_client: c.opt_int()?,
        bytes_to_server: c.opt_int()?,
        error_code: c.opt_str()?,
        masked_fields: c.list()?,
        masked_count: c.opt_int()?,
    };
    let duration_us = c.opt_int()?;
    let prev_hash = c.str()?;
    let hash = c.str()?;
    Ok(Event {
        event_id,
        session_id,
        seq,
        kind,
        command_id,
        time_us,
        host: host.into(),
        agent_version: agent_version.into(),
        client_address: client_address.map(Into::into),
        principal: (principal != Principal::default()).then(|| Arc::new(principal)),
        process: (process != ProcessInfo::default()).then(|| Arc::new(process)),
        target: target.map(Arc::new),
        command: (command != CommandInfo::default()).then_some(command),
        decision,
        outcome: (outcome != Outcome::default()).then_some(outcome),
        duration_us,
        prev_hash,
        hash,
    })
}

/// Reads an integer cell (`seq`, ...) as u64; `None` when absent or negative.
pub fn int_at(row: &[Cell], index: usize) -> Option<u64> {
    match row.get(index) {
        Some(Cell::Int(Some(v))) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// Reads a string cell (`event_id`, `hash`, ...).
pub fn str_at(row: &[Cell], index: usize) -> Option<&str> {
    match row.get(index) {
        Some(Cell::Str(Some(v))) => Some(v),
        _ => None,
    }
}

/// Reads a list cell (`command_parameters`, ...); empty when absent.
pub fn list_at(row: &[Cell], index: usize) -> &[String] {
    match row.get(index) {
        Some(Cell::List(v)) => v,
        _ => &[],
    }
}

/// Reads the `time` cell.
pub fn time_at(row: &[Cell]) -> Option<i64> {
    match row.get(TIME) {
        Some(Cell::Time(v)) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event with every field set, so round trips cover every column.
    pub(crate) fn full_event() -> Event {
        let mut e = Event::new(EventKind::Command).session(Uuid::now_v7());
        e.command_id = Some(Uuid::now_v7());
        e.client_address = Some("127.0.0.1:40000".into());
        e.principal = Some(Arc::new(Principal {
            subject: Some("bot-1".into()),
            issuer: Some("https://idp".into()),
            email: Some("bot@example.com".into()),
            groups: vec!["etl".into(), "readers".into()],
        }));
        e.process = Some(Arc::new(ProcessInfo {
            pid: Some(10),
            tgid: Some(9),
            uid: Some(1000),
            user: Some("svc".into()),
            gid: Some(1000),
            comm: Some("psql".into()),
            exe: Some("/usr/bin/psql".into()),
            cmdline: Some("psql -h db".into()),
            cgroup: Some("/system.slice/etl.service".into()),
            unit: Some("etl.service".into()),
        }));
        e.target = Some(Arc::new(TargetRef {
            name: "patients".into(),
            protocol: "postgres".into(),
            address: "10.0.0.5:5432".into(),
        }));
        e.command = Some(CommandInfo {
            text: Some("select * from p where ssn = '***'".into()),
            fingerprint: Some("abc".into()),
            kind: Some("select".into()),
            tables: vec!["p".into()],
            columns: vec!["ssn".into(), "name".into()],
            parameters: vec!["***".into()],
        });
        e.decision = Some(Decision {
            verdict: Verdict::Approved,
            rule_id: Some("hipaa.bulk".into()),
            reason: Some("bulk read".into()),
            approver: Some("alice".into()),
            wait_us: Some(1234),
            approval_id: Some("k7q2m9xd".into()),
        });
        e.outcome = Some(Outcome {
            status: Some("ok".into()),
            rows: Some(3),
            bytes_to_client: Some(300),
            bytes_to_server: Some(40),
            error_code: None,
            masked_fields: vec!["ssn".into()],
            masked_count: Some(3),
        });
        e.duration_us = Some(99);
        e.seq = 7;
        e.prev_hash = "00".repeat(32);
        e.hash = "11".repeat(32);
        e
    }

    #[test]
    fn every_field_survives_the_flat_row() {
        let e = full_event();
        let row = event_to_row(&e);
        assert_eq!(row.len(), COLUMNS.len());
        assert_eq!(row_to_event(&row).expect("row converts back"), e);
    }

    #[test]
    fn a_bare_event_round_trips_with_empty_groups_as_none() {
        let e = Event::new(EventKind::AgentStart);
        let back = row_to_event(&event_to_row(&e)).expect("row converts back");
        assert_eq!(back, e);
    }

    #[test]
    fn index_constants_name_their_columns() {
        let names = [
            (EVENT_ID, "event_id"),
            (SESSION_ID, "session_id"),
            (SEQ, "seq"),
            (KIND, "kind"),
            (TIME, "time"),
            (HOST, "agent_host"),
            (COMMAND_TEXT, "command_text"),
            (PREV_HASH, "prev_hash"),
            (HASH, "hash"),
        ];
        for (i, name) in names {
            assert_eq!(COLUMNS[i].name, name);
        }
    }

    #[test]
    fn cells_match_their_declared_column_types() {
        for (cell, column) in event_to_row(&full_event()).iter().zip(COLUMNS) {
            let ok = matches!(
                (cell, column.ty),
                (Cell::Str(Some(_)), ColumnType::Str)
                    | (Cell::Str(_), ColumnType::OptStr)
                    | (Cell::Int(Some(_)), ColumnType::Int)
                    | (Cell::Int(_), ColumnType::OptInt)
                    | (Cell::Time(_), ColumnType::Time)
                    | (Cell::List(_), ColumnType::List)
            );
            assert!(ok, "column {} holds {cell:?}", column.name);
        }
    }
}
