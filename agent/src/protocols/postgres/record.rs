//! The audit records of a PostgreSQL session's commands.
use crate::{
    audit::{CommandInfo, Decision, Event, EventKind, Outcome, Verdict},
    policy::Hold,
    session::Session,
    sql::AnalyzedStatement,
};

/// The `command` event for `stmt`, before it is forwarded or refused.
pub fn command(session: &Session, stmt: &AnalyzedStatement, decision: Decision, parameters: Vec<String>) -> Event {
    let mut e = session.event(EventKind::Command);
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
    let mut e = session.event(EventKind::CommandResult);
    e.command_id = Some(command.event_id);
    e.command = Some(CommandInfo {
        fingerprint: Some(command.fingerprint.clone()),
        ..CommandInfo::default()
    });
    e.duration_us = Some(command.started.elapsed().as_micros() as u64);
    e.outcome = Some(outcome);
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
