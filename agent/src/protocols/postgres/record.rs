//! The audit records of a PostgreSQL session's commands.
use std::sync::Arc;

use crate::{
    audit::{CommandInfo, Decision, Event, EventKind, Outcome, Verdict},
    policy::Hold,
    proxy::Session,
    sql::AnalyzedStatement,
};

/// The `command` event for `stmt`, before it is forwarded or refused.
pub fn command(session: &Session, stmt: &AnalyzedStatement, decision: Decision, parameters: Vec<String>) -> Event {
    let mut e = base(session, EventKind::Command);
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
    e.command = Some(CommandInfo {
        text: Some(stmt.normalized_text.clone()),
        fingerprint: Some(stmt.fingerprint.to_string()),
        kind,
        tables,
        columns,
        parameters,
    });
    e.decision = Some(decision);
    e
}

/// The `command_result` event of a finished command.
pub fn result(session: &Session, command: &super::pending::Command, outcome: Outcome) -> Event {
    let mut e = base(session, EventKind::CommandResult);
    e.command_id = Some(command.event_id);
    e.command = Some(CommandInfo {
        fingerprint: Some(command.fingerprint.clone()),
        ..CommandInfo::default()
    });
    e.duration_us = Some(command.started.elapsed().as_micros() as u64);
    e.outcome = Some(outcome);
    e
}

/// The `command_result` of a recorded `command` that never reached the
/// server (blocked, or refused after a hold): nothing ran, no rows.
pub fn not_run(session: &Session, command: &Event, status: &str) -> Event {
    let mut e = base(session, EventKind::CommandResult);
    e.command_id = Some(command.event_id);
    e.command = Some(CommandInfo {
        fingerprint: command.command.as_ref().and_then(|c| c.fingerprint.clone()),
        ..CommandInfo::default()
    });
    e.duration_us = Some(0);
    e.outcome = Some(Outcome {
        status: Some(status.to_owned()),
        rows: Some(0),
        ..Outcome::default()
    });
    e
}

pub fn allow() -> Decision {
    Decision::new(Verdict::Allow)
}

pub fn block(rule_id: &str, reason: &str) -> Decision {
    Decision::new(Verdict::Block).rule(rule_id).reason(reason)
}

/// A statement held before it runs, until approved.
pub fn hold(hold: &Hold) -> Decision {
    Decision::new(Verdict::Hold).rule(&hold.rule_id).reason(&hold.reason)
}

/// A statement that runs, but whose results pause at a row threshold.
pub fn gated(hold: &Hold, threshold: u64) -> Decision {
    let reason = format!("{}; results pause after {threshold} rows until approved", hold.reason);
    Decision::new(Verdict::Allow).rule(&hold.rule_id).reason(reason)
}

fn base(session: &Session, kind: EventKind) -> Event {
    let mut e = Event::new(kind).session(session.id);
    e.client_address = Some(Arc::clone(&session.client_address));
    e.principal = session.principal.get().cloned();
    e.process = Some(Arc::clone(&session.process));
    e.target = Some(session.target_ref());
    e
}
