//! The audit records of a PostgreSQL session's commands.
use crate::{
    audit::{CommandInfo, Event, Outcome},
    session::Session,
    sql::AnalyzedStatement,
};

/// How a `command` event records `stmt` (its decision is the enforcement
/// point's to add).
pub fn command_info(stmt: &AnalyzedStatement, parameters: Vec<String>) -> CommandInfo {
    let (kind, mut tables, columns) = match &stmt.classification {
        Ok(c) => (
            Some(c.kind.as_str().to_owned()),
            c.tables_read
                .iter()
                .chain(&c.tables_written)
                .cloned()
                .collect::<Vec<_>>(),
            c.columns.iter().map(|p| p.output_name().to_owned()).collect(),
        ),
        Err(_) => (Some("unparseable".to_owned()), Vec::new(), Vec::new()),
    };
    tables.sort();
    tables.dedup();
    CommandInfo {
        text: Some(stmt.normalized_text.clone()),
        fingerprint: Some(stmt.fingerprint.to_string()),
        kind,
        tables,
        columns,
        parameters,
    }
}

/// The `command_result` event of a finished command.
pub fn result(session: &Session, command: &super::pending::Command, outcome: Outcome) -> Event {
    let fingerprint = Some(command.fingerprint.clone());
    crate::enforce::result_event(session, command.event_id, fingerprint, command.started, outcome)
}
