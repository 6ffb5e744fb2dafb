//! The pipeline against an in-memory audit trail and a real approvals
//! registry: what is recorded, in which order, and what the protocol is
//! told, for every way a command can go.
use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    approval::{Approver, Choice},
    audit::{Principal as AuditPrincipal, ProcessInfo as AuditProcess, memory::MemorySink},
    policy::Hold,
};

/// A policy that answers the same for everything.
struct Fixed(PolicyDecision);

impl PolicyEngine for Fixed {
    fn decide(&self, _: &PolicyInput<'_>) -> PolicyDecision {
        self.0.clone()
    }
}

struct Harness {
    audit: MemorySink,
    approvals: Arc<Approvals>,
    session: Session,
}

fn harness() -> Harness {
    let audit = MemorySink::default();
    let approvals = Approvals::new(audit.log(), None, None);
    let session = Session::new(
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:22".parse().unwrap(),
        "bastion",
        "ssh",
        AuditProcess {
            uid: Some(1000),
            user: Some("etl".into()),
            ..AuditProcess::default()
        },
        audit.log(),
    );
    session
        .principal
        .set(Arc::new(AuditPrincipal {
            subject: Some("unix:etl".into()),
            ..AuditPrincipal::default()
        }))
        .unwrap();
    Harness {
        audit,
        approvals,
        session,
    }
}

impl Harness {
    fn enforcer(&self, decision: PolicyDecision) -> Enforcer {
        Enforcer::new(
            Arc::new(Fixed(decision)),
            self.approvals.clone(),
            TargetInfo {
                name: "bastion".into(),
                protocol: "ssh".into(),
                identity: "process".into(),
            },
        )
    }

    async fn run(&self, enforcer: &Enforcer, command: &str) -> Verdict {
        let caller = Caller::of(&self.session, None, None);
        let info = CommandInfo {
            text: Some(command.into()),
            kind: Some("ssh_exec".into()),
            ..CommandInfo::default()
        };
        let command = Command {
            action: Action::SshExec { command },
            info,
        };
        enforcer.begin(&self.session, &caller, command).await.unwrap()
    }

    /// (kind, verdict) of every event so far.
    fn trail(&self) -> Vec<(&'static str, &'static str)> {
        self.audit
            .events()
            .iter()
            .map(|e| (e.kind.as_str(), e.decision.as_ref().map_or("-", |d| d.verdict.as_str())))
            .collect()
    }
}

fn hold(timeout: Duration) -> PolicyDecision {
    PolicyDecision::Hold(Hold {
        rule_id: "ops.hold_restart".into(),
        reason: "restarts need a second person".into(),
        approver_group: "oncall".into(),
        min_approvals: 1,
        timeout,
        row_threshold: None,
        mask: Vec::new(),
    })
}

fn approver(name: &str) -> Approver {
    Approver {
        name: format!("unix:{name}"),
        uid: Some(2000),
        email: None,
        groups: vec!["oncall".into()],
        unit: None,
    }
}

#[tokio::test]
async fn an_allowed_command_is_recorded_before_it_is_forwarded_and_its_result_after() {
    let h = harness();
    let enforcer = h.enforcer(PolicyDecision::allow());
    let Verdict::Forward(admitted) = h.run(&enforcer, "uptime").await else {
        panic!("not forwarded");
    };
    // The record exists before the protocol forwards anything.
    assert_eq!(h.trail(), [("command", "allow")]);
    let events = h.audit.events();
    assert_eq!(events[0].event_id, admitted.event_id);
    assert_eq!(events[0].command.as_ref().unwrap().text.as_deref(), Some("uptime"));
    assert_eq!(events[0].target.as_ref().unwrap().name, "bastion");
    assert_eq!(
        events[0].principal.as_ref().unwrap().subject.as_deref(),
        Some("unix:etl")
    );
    let outcome = Outcome {
        status: Some("ok".into()),
        ..Outcome::default()
    };
    enforcer.finish(&h.session, &admitted, outcome).await;
    let events = h.audit.events();
    assert_eq!(events[1].kind.as_str(), "command_result");
    assert_eq!(events[1].command_id, Some(admitted.event_id));
    assert_eq!(events[1].outcome.as_ref().unwrap().status.as_deref(), Some("ok"));
}

#[tokio::test]
async fn a_denied_command_is_recorded_as_blocked_and_never_admitted() {
    let h = harness();
    let enforcer = h.enforcer(PolicyDecision::deny("ops.no_rm", "rm is refused"));
    let Verdict::Refused(refusal) = h.run(&enforcer, "rm -rf /srv").await else {
        panic!("not refused");
    };
    assert_eq!(refusal.cause, Cause::Policy);
    assert_eq!(
        refusal.message("command"),
        "loopgate: command refused by rule ops.no_rm: rm is refused"
    );
    assert_eq!(h.trail(), [("command", "block")]);
    let decision = h.audit.events()[0].decision.clone().unwrap();
    assert_eq!(decision.rule_id.as_deref(), Some("ops.no_rm"));
}

#[tokio::test]
async fn an_unrecordable_command_is_refused_fail_closed() {
    let h = harness();
    let enforcer = h.enforcer(PolicyDecision::allow());
    h.audit.fail(true);
    let Verdict::Refused(refusal) = h.run(&enforcer, "uptime").await else {
        panic!("forwarded without a record");
    };
    assert_eq!(refusal.cause, Cause::AuditUnavailable);
    assert!(refusal.message("command").contains("was not run"), "{refusal:?}");
    assert!(h.audit.events().is_empty());
    // A refusal that cannot be recorded is the protocol's to end the session on.
    let enforcer = h.enforcer(PolicyDecision::deny("r", "x"));
    let caller = Caller::of(&h.session, None, None);
    let command = Command {
        action: Action::SshShell {
            pty: true,
            term: Some("xterm"),
        },
        info: CommandInfo::default(),
    };
    assert!(enforcer.begin(&h.session, &caller, command).await.is_err());
}

#[tokio::test]
async fn a_held_command_runs_once_approved() {
    let h = harness();
    let enforcer = h.enforcer(hold(Duration::from_secs(60)));
    let Verdict::Held { admitted, mut held } = h.run(&enforcer, "systemctl restart ward").await else {
        panic!("not held");
    };
    let (message, hint) = held.notice();
    assert!(message.contains(held.id()), "{message}");
    assert!(hint.contains("oncall"), "{hint}");
    assert_eq!(h.trail(), [("command", "hold"), ("approval", "hold")]);
    let id = held.id().to_owned();
    h.approvals
        .decide(&id, &approver("alice"), Choice::Approve { reason: None })
        .await
        .unwrap();
    let resolution = held.wait().await;
    held.release(resolution).expect("approved");
    assert_eq!(h.audit.events()[0].event_id, admitted.event_id);
    assert_eq!(h.trail().last(), Some(&("approval", "approved")));
}

#[tokio::test]
async fn a_denied_hold_is_refused_with_the_approvers_reason() {
    let h = harness();
    let enforcer = h.enforcer(hold(Duration::from_secs(60)));
    let Verdict::Held { mut held, .. } = h.run(&enforcer, "systemctl restart ward").await else {
        panic!("not held");
    };
    let id = held.id().to_owned();
    let deny = Choice::Deny {
        reason: Some("not during rounds".into()),
    };
    h.approvals.decide(&id, &approver("alice"), deny).await.unwrap();
    let resolution = held.wait().await;
    let refusal = held.release(resolution).unwrap_err();
    assert!(matches!(refusal.cause, Cause::Unapproved(Resolution::Denied { .. })));
    let message = refusal.message("command");
    assert!(message.contains("denied by unix:alice: not during rounds"), "{message}");
    assert!(message.ends_with("the command was not run"), "{message}");
    assert_eq!(h.trail().last(), Some(&("approval", "denied")));
}

#[tokio::test]
async fn an_unanswered_hold_times_out_and_is_refused() {
    let h = harness();
    let enforcer = h.enforcer(hold(Duration::from_millis(50)));
    let Verdict::Held { mut held, .. } = h.run(&enforcer, "systemctl restart ward").await else {
        panic!("not held");
    };
    let resolution = held.wait().await;
    assert!(matches!(resolution, Resolution::TimedOut { .. }), "{resolution:?}");
    assert!(held.release(resolution).is_err());
    // The timeout's event is written by the registry as the request ends.
    for _ in 0..200 {
        if h.trail().last() == Some(&("approval", "timed_out")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no timed_out approval event: {:?}", h.trail());
}

#[tokio::test]
async fn a_hold_that_cannot_be_requested_is_refused_naming_its_rule() {
    let h = harness();
    let enforcer = h.enforcer(hold(Duration::from_secs(60)));
    h.approvals.withdraw_all("the agent is stopping").await;
    let Verdict::Refused(refusal) = h.run(&enforcer, "systemctl restart ward").await else {
        panic!("held while stopping");
    };
    assert_eq!(refusal.cause, Cause::HoldUnavailable);
    assert_eq!(refusal.rule_id.as_deref(), Some("ops.hold_restart"));
    // The command record says it was held; nothing says it ran.
    assert_eq!(h.trail(), [("command", "hold")]);
}

#[tokio::test]
async fn a_row_threshold_hold_runs_at_once_with_its_threshold() {
    let h = harness();
    let PolicyDecision::Hold(mut gate) = hold(Duration::from_secs(60)) else {
        unreachable!()
    };
    gate.row_threshold = Some(100);
    let enforcer = h.enforcer(PolicyDecision::Hold(gate));
    let Verdict::Forward(admitted) = h.run(&enforcer, "select").await else {
        panic!("a gated command runs at once");
    };
    assert_eq!(admitted.threshold.as_ref().map(|(_, t)| *t), Some(100));
    assert_eq!(h.trail(), [("command", "allow")]);
    let reason = h.audit.events()[0].decision.clone().unwrap().reason.unwrap();
    assert!(reason.contains("results pause after 100 rows"), "{reason}");
}
