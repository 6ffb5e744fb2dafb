//! The enforcement point every protocol calls, once per command:
//!
//! ```text
//! decide ─► deny ──────────────► record `command` (block) ─► Refused
//!        └► allow / hold ──────► record `command` (before forwarding)
//!                                  ├─ allow, or hold with a row threshold ─► Forward
//!                                  └─ hold ─► approval request ─► Held ─► approved ─► Forward
//!                                                                      └► denied / timed out ─► Refused
//! … protocol forwards, reads the result … ─► finish: record `command_result`
//! ```
//!
//! A protocol maps its wire messages to a [`Command`] (the policy's
//! [`Action`] and the audit's [`CommandInfo`]) and renders a [`Refusal`] or
//! a hold's notice in its own protocol; everything between — the policy,
//! the audit record before forwarding (fail closed when it cannot be
//! written), the approval request — is here, the same for every protocol.
mod caller;

pub use caller::Caller;

use std::{sync::Arc, time::Instant};

use uuid::Uuid;

use crate::{
    approval::{Approvals, HoldRequest, Origin, Resolution, Ticket},
    audit::{AuditError, CommandInfo, Decision, Event, EventKind, Outcome, Verdict as Recorded},
    mask::MaskRule,
    policy::{Action, Hold, PolicyDecision, PolicyEngine, PolicyInput, TargetInfo},
    session::Session,
};

/// One command as a protocol describes it.
pub struct Command<'a> {
    /// What the policy decides on.
    pub action: Action<'a>,
    /// What the audit records (text with its literals masked, never raw).
    pub info: CommandInfo,
}

/// What became of a command the protocol asked about.
pub enum Verdict {
    /// Recorded; forward it now.
    Forward(Admitted),
    /// Not run; tell the client why.
    Refused(Refusal),
    /// Recorded and waiting for approval; tell the client (see
    /// [`Held::notice`]) and wait. Once approved, forward it.
    Held { admitted: Admitted, held: Box<Held> },
}

/// A command whose record is written: it may reach the backend. Its result
/// is recorded with [`Enforcer::finish`] (or [`Admitted::result`]).
#[derive(Debug)]
pub struct Admitted {
    /// The `command` event; the result and approval events point to it.
    pub event_id: Uuid,
    pub fingerprint: Option<String>,
    pub started: Instant,
    /// The decision's mask rules, applied before the configured ones.
    pub mask: Vec<MaskRule>,
    /// A hold that lets the command run and pauses its results after this
    /// many rows (PostgreSQL's row gate).
    pub threshold: Option<(Hold, u64)>,
}

impl Admitted {
    /// The `command_result` event of this command.
    pub fn result(&self, session: &Session, outcome: Outcome) -> Event {
        result_event(session, self.event_id, self.fingerprint.clone(), self.started, outcome)
    }
}

/// The `command_result` event of command `command_id`, started at `started`.
pub fn result_event(
    session: &Session,
    command_id: Uuid,
    fingerprint: Option<String>,
    started: Instant,
    outcome: Outcome,
) -> Event {
    let mut e = session.event(EventKind::CommandResult);
    e.command_id = Some(command_id);
    e.command = Some(CommandInfo {
        fingerprint,
        ..CommandInfo::default()
    });
    e.duration_us = Some(started.elapsed().as_micros() as u64);
    e.outcome = Some(outcome);
    e
}

/// Why a command was not run. The text never quotes data values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub cause: Cause,
    /// The rule that refused it (policy refusals and holds).
    pub rule_id: Option<String>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The policy denied it.
    Policy,
    /// Its record could not be written, so it was not run (fail closed).
    AuditUnavailable,
    /// It needs approval, which could not be requested.
    HoldUnavailable,
    /// It was held and the request ended without approval.
    Unapproved(Resolution),
}

impl Refusal {
    /// The `outcome.status` of the command's `command_result`: it did not
    /// run, and this says why.
    pub fn status(&self) -> &'static str {
        match &self.cause {
            Cause::Policy => "blocked",
            Cause::AuditUnavailable | Cause::HoldUnavailable => "refused",
            Cause::Unapproved(Resolution::Denied { .. }) => "denied",
            Cause::Unapproved(Resolution::TimedOut { .. }) => "timed_out",
            Cause::Unapproved(_) => "withdrawn",
        }
    }

    /// The client's message: `loopgate: <noun> refused by rule R: reason`,
    /// or the approval's end, or the audit's unavailability. `noun` is the
    /// protocol's word for a command ("statement", "command", "request").
    pub fn message(&self, noun: &str) -> String {
        match (&self.cause, &self.rule_id) {
            (Cause::Policy, Some(rule)) => format!("loopgate: {noun} refused by rule {rule}: {}", self.reason),
            (Cause::Unapproved(_), _) => format!("{}; the {noun} was not run", self.reason),
            (Cause::AuditUnavailable, _) => {
                format!("loopgate: the audit trail cannot record this {noun}, so it was not run; try again later")
            }
            (Cause::HoldUnavailable, _) => format!(
                "loopgate: this {noun} needs approval, which cannot be requested now ({}); it was not run",
                self.reason
            ),
            (Cause::Policy, None) => format!("loopgate: {noun} refused: {}", self.reason),
        }
    }
}

/// A recorded command's approval request, waited on. Dropping it while
/// pending (the client left) cancels the request.
pub struct Held {
    ticket: Ticket,
}

impl Held {
    /// What to tell the client now: a message and a hint naming the
    /// request, its approvers and its deadline.
    pub fn notice(&self) -> (String, String) {
        self.ticket.view().notice()
    }

    /// [`notice`](Self::notice) naming what waits in the protocol's word.
    pub fn notice_for(&self, noun: &str) -> (String, String) {
        self.ticket.view().notice_for(noun)
    }

    /// The approval request's id.
    pub fn id(&self) -> &str {
        &self.ticket.view().id
    }

    /// Waits for the outcome. Cancel-safe, so a protocol may watch its
    /// client at the same time and drop the hold if it leaves.
    pub async fn wait(&mut self) -> Resolution {
        self.ticket.wait().await
    }

    /// Approved: the command may be forwarded. Otherwise the refusal.
    pub fn release(self, resolution: Resolution) -> Result<(), Refusal> {
        if resolution.is_approved() {
            return Ok(());
        }
        Err(Refusal {
            reason: resolution.refusal(self.id()),
            rule_id: None,
            cause: Cause::Unapproved(resolution),
        })
    }
}

/// The enforcement point of one target, shared by its sessions.
pub struct Enforcer {
    policy: Arc<dyn PolicyEngine>,
    approvals: Arc<Approvals>,
    target: TargetInfo,
}

impl Enforcer {
    pub fn new(policy: Arc<dyn PolicyEngine>, approvals: Arc<Approvals>, target: TargetInfo) -> Self {
        Enforcer {
            policy,
            approvals,
            target,
        }
    }

    /// The target as the policy sees it.
    pub fn target(&self) -> &TargetInfo {
        &self.target
    }

    /// The policy's decision on `action` by `caller`.
    pub fn decide(&self, caller: &Caller, action: Action<'_>) -> PolicyDecision {
        self.policy.decide(&PolicyInput {
            principal: &caller.principal,
            process: &caller.process,
            target: &self.target,
            action,
            session: Some(&caller.session),
            time: std::time::SystemTime::now(),
        })
    }

    /// The whole pipeline for a command that stands alone: decide, record,
    /// and forward, refuse or hold. `Err` only when a refusal itself could
    /// not be recorded (the protocol ends the session: nothing may go on
    /// unrecorded).
    pub async fn begin(&self, session: &Session, caller: &Caller, command: Command<'_>) -> Result<Verdict, AuditError> {
        let decision = self.decide(caller, command.action);
        self.apply(session, &decision, command.info).await
    }

    /// Records a command as `decision` says and acts on it: the second
    /// half of [`begin`](Self::begin), for protocols that decide several
    /// commands before recording any (a PostgreSQL query string).
    pub async fn apply(
        &self,
        session: &Session,
        decision: &PolicyDecision,
        info: CommandInfo,
    ) -> Result<Verdict, AuditError> {
        if let PolicyDecision::Deny { rule_id, reason } = decision {
            return Ok(Verdict::Refused(self.refuse(session, info, rule_id, reason).await?));
        }
        let shown = held_before_run(decision).map(|_| (info.text.clone().unwrap_or_default(), info.parameters.clone()));
        let admitted = match self.admit(session, decision, info).await {
            Ok(a) => a,
            Err(refusal) => return Ok(Verdict::Refused(refusal)),
        };
        match (held_before_run(decision), shown) {
            (Some(hold), Some((text, parameters))) => Ok(self.hold(session, admitted, hold, text, parameters).await),
            _ => Ok(Verdict::Forward(admitted)),
        }
    }

    /// Records a command refused by `rule_id`, and its result (it did not
    /// run: status `blocked`, no rows); the refusal to render.
    pub async fn refuse(
        &self,
        session: &Session,
        info: CommandInfo,
        rule_id: &str,
        reason: &str,
    ) -> Result<Refusal, AuditError> {
        let fingerprint = info.fingerprint.clone();
        let event = command_event(
            session,
            info,
            Decision::new(Recorded::Block).rule(rule_id).reason(reason),
        );
        let command_id = event.event_id;
        session.audit.append(event).await?;
        let refusal = Refusal {
            cause: Cause::Policy,
            rule_id: Some(rule_id.to_owned()),
            reason: reason.to_owned(),
        };
        session
            .audit
            .submit(not_run(session, command_id, fingerprint, refusal.status()));
        Ok(refusal)
    }

    /// Records the result of an admitted command that did not run (its
    /// hold was denied, timed out or could not be requested).
    pub fn unrun(&self, session: &Session, admitted: &Admitted, refusal: &Refusal) {
        let event = not_run(
            session,
            admitted.event_id,
            admitted.fingerprint.clone(),
            refusal.status(),
        );
        session.audit.submit(event);
    }

    /// Records an allowed or held command before it is forwarded; a record
    /// that cannot be written refuses it (fail closed).
    pub async fn admit(
        &self,
        session: &Session,
        decision: &PolicyDecision,
        info: CommandInfo,
    ) -> Result<Admitted, Refusal> {
        let threshold = match decision {
            PolicyDecision::Hold(hold) => hold.row_threshold.map(|t| (hold.clone(), t)),
            _ => None,
        };
        let recorded = match (decision, &threshold) {
            (_, Some((hold, t))) => {
                let reason = format!("{}; results pause after {t} rows until approved", hold.reason);
                Decision::new(Recorded::Allow).rule(&hold.rule_id).reason(reason)
            }
            (PolicyDecision::Hold(hold), None) => {
                Decision::new(Recorded::Hold).rule(&hold.rule_id).reason(&hold.reason)
            }
            _ => Decision::new(Recorded::Allow),
        };
        let fingerprint = info.fingerprint.clone();
        let event = command_event(session, info, recorded);
        let event_id = event.event_id;
        if let Err(e) = session.audit.append(event).await {
            tracing::error!(session = %session.id, error = %e, "refusing a command: audit unavailable");
            return Err(Refusal {
                cause: Cause::AuditUnavailable,
                rule_id: None,
                reason: e.to_string(),
            });
        }
        Ok(Admitted {
            event_id,
            fingerprint,
            started: Instant::now(),
            mask: decision.mask_overrides().to_vec(),
            threshold,
        })
    }

    /// Opens the approval request for a recorded command.
    pub async fn hold(
        &self,
        session: &Session,
        admitted: Admitted,
        hold: &Hold,
        command: String,
        parameters: Vec<String>,
    ) -> Verdict {
        let request = hold_request(session, admitted.event_id, command, parameters, hold);
        match self.open(session, request).await {
            Ok(held) => Verdict::Held {
                admitted,
                held: Box::new(held),
            },
            Err(refusal) => Verdict::Refused(refusal),
        }
    }

    /// Opens an approval request; the protocol tells its client and waits.
    pub async fn open(&self, session: &Session, request: HoldRequest) -> Result<Held, Refusal> {
        let rule_id = request.hold.rule_id.clone();
        match self.approvals.hold(request).await {
            Ok(ticket) => Ok(Held { ticket }),
            Err(e) => {
                tracing::error!(session = %session.id, error = %e, "cannot hold a command for approval");
                Err(Refusal {
                    cause: Cause::HoldUnavailable,
                    rule_id: Some(rule_id),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Opens an approval request of a protocol's own (a row gate that
    /// tripped) and hands back the bare ticket.
    pub async fn request(&self, request: HoldRequest) -> Result<Ticket, crate::approval::HoldError> {
        self.approvals.hold(request).await
    }

    /// Records a command's result. A result that cannot be recorded is
    /// logged: the command already ran, and its `command` record stands.
    pub async fn finish(&self, session: &Session, admitted: &Admitted, outcome: Outcome) {
        if let Err(e) = session.audit.append(admitted.result(session, outcome)).await {
            tracing::error!(session = %session.id, error = %e, "could not record a command's result");
        }
    }
}

/// The `command_result` of a command that never reached the backend.
pub fn not_run(session: &Session, command_id: Uuid, fingerprint: Option<String>, status: &str) -> Event {
    let outcome = Outcome {
        status: Some(status.to_owned()),
        rows: Some(0),
        ..Outcome::default()
    };
    let mut e = result_event(session, command_id, fingerprint, Instant::now(), outcome);
    e.duration_us = Some(0);
    e
}

/// What an approval request says about a command of `session`.
pub fn hold_request(
    session: &Session,
    command_id: Uuid,
    command: String,
    parameters: Vec<String>,
    hold: &Hold,
) -> HoldRequest {
    HoldRequest {
        origin: Origin {
            session: session.context(),
            command_id,
        },
        command,
        parameters,
        hold: hold.clone(),
        rows_sent: None,
    }
}

/// The hold of a command that waits before it runs (a hold with a row
/// threshold runs at once and pauses its results instead).
pub fn held_before_run(decision: &PolicyDecision) -> Option<&Hold> {
    match decision {
        PolicyDecision::Hold(hold) if hold.row_threshold.is_none() => Some(hold),
        _ => None,
    }
}

fn command_event(session: &Session, info: CommandInfo, decision: Decision) -> Event {
    let mut e = session.event(EventKind::Command);
    e.command = Some(info);
    e.decision = Some(decision);
    e
}

#[cfg(test)]
mod tests;
