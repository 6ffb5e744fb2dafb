//! The audit records of a PostgreSQL session's commands: what a statement
//! and its parameters look like on the record, refusals, and the results of
//! commands that never ran.
use bytes::BytesMut;

use super::{
    SessionError,
    pending::{Command, Pending},
    wire::{self, sqlstate},
};
use crate::{
    audit::{CommandInfo, Event, Outcome},
    enforce::{self, Enforcer},
    mask::Masker,
    policy::PolicyDecision,
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
pub fn result(session: &Session, command: &Command, outcome: Outcome) -> Event {
    let fingerprint = Some(command.fingerprint.clone());
    crate::enforce::result_event(session, command.event_id, fingerprint, command.started, outcome)
}

/// Rule id of a COPY refused because its columns could not be determined.
const COPY_UNKNOWN_RULE: &str = "loopgate.copy_columns_unknown";

/// Recorded parameter values are cut to this many characters.
const PARAMETER_MAX: usize = 128;

/// A bound parameter as the record shows it: text masked by the detectors
/// and cut short, binary values by their length only.
pub fn parameter(masker: &Masker, value: Option<&[u8]>, binary: bool) -> String {
    match value {
        None => "NULL".to_owned(),
        Some(v) if binary => format!("<{} bytes, binary>", v.len()),
        Some(v) => {
            let text = String::from_utf8_lossy(v);
            let masked = masker.mask_free_text(&text);
            let mut s: String = masked.chars().take(PARAMETER_MAX).collect();
            if masked.chars().count() > PARAMETER_MAX {
                s.push('…');
            }
            s
        }
    }
}

/// Records `statements` as refused by `decision` and returns the error
/// for the client, naming the rule.
pub async fn refusal(
    enforcer: &Enforcer,
    session: &Session,
    statements: &[AnalyzedStatement],
    decision: &PolicyDecision,
) -> Result<BytesMut, SessionError> {
    let (rule, reason) = match decision {
        PolicyDecision::Deny { rule_id, reason } => (rule_id.clone(), reason.clone()),
        PolicyDecision::Hold(h) => (h.rule_id.clone(), h.reason.clone()),
        PolicyDecision::Allow { .. } => (String::new(), String::new()),
    };
    let mut refusal = None;
    for stmt in statements {
        let info = command_info(stmt, Vec::new());
        let refused = enforcer.refuse(session, info, &rule, &reason).await;
        refusal = Some(refused.map_err(SessionError::Audit)?);
    }
    let refusal = refusal.unwrap_or(enforce::Refusal {
        cause: enforce::Cause::Policy,
        rule_id: Some(rule),
        reason,
    });
    Ok(wire::refusal(&refusal))
}

/// Records a COPY whose columns are unknown as refused (its data could
/// not be masked) and returns the error for the client.
pub async fn refuse_copy(
    enforcer: &Enforcer,
    session: &Session,
    stmt: &AnalyzedStatement,
    parameters: Vec<String>,
) -> BytesMut {
    let reason = "the columns of this COPY could not be determined, so its data cannot be masked";
    let info = command_info(stmt, parameters);
    if let Err(e) = enforcer.refuse(session, info, COPY_UNKNOWN_RULE, reason).await {
        tracing::error!(session = %session.id, error = %e, "could not record a refused COPY");
    }
    let message = format!("loopgate: statement refused by rule {COPY_UNKNOWN_RULE}: {reason}");
    wire::error(sqlstate::FEATURE_NOT_SUPPORTED, &message)
}

/// Records `command_result` for the commands of a held statement that will
/// not run (denied, timed out, or the hold could not be requested).
pub fn unrun(session: &Session, release: &Pending, status: &str) {
    let commands: &[Command] = match release {
        Pending::Query(commands) => commands,
        Pending::Execute(command) => std::slice::from_ref(command),
        _ => &[],
    };
    for c in commands.iter().filter(|c| !c.event_id.is_nil()) {
        let outcome = Outcome {
            status: Some(status.to_owned()),
            rows: Some(0),
            ..Outcome::default()
        };
        session.audit.submit(result(session, c, outcome));
    }
}
