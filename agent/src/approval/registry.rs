//! The pending requests. A held command gets a [`Ticket`] and waits on it;
//! approvers decide through [`Approvals::decide`]. Every transition is an
//! `approval` audit event carrying the command's event id, and a decision is
//! recorded before it takes effect: no command is released unrecorded.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};
use uuid::Uuid;

use super::{ApprovalView, Approver, ProcessView, journal::Journal, now_unix_ms, webhook::Webhook};
use crate::{
    audit::{AuditError, AuditLog, CommandInfo, Decision, Event, EventKind, Verdict},
    policy::Hold,
};

/// Where a held command comes from: its session, its `command` event and
/// who sent it. Every `approval` event of the request repeats it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    #[serde(flatten)]
    pub session: crate::session::Context,
    /// The held command's `command` event.
    pub command_id: Uuid,
}

/// What a handler asks to hold.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    pub origin: Origin,
    /// Masked, as recorded.
    pub command: String,
    pub parameters: Vec<String>,
    pub hold: Hold,
    /// For a row-threshold gate: rows the client already received.
    pub rows_sent: Option<u64>,
}

/// How a request ended, as its waiter learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Approved {
        approvers: Vec<String>,
    },
    Denied {
        approver: String,
        reason: Option<String>,
    },
    TimedOut {
        after: Duration,
    },
    /// Ended by the agent: it is stopping, or could not record a decision.
    Withdrawn {
        reason: String,
    },
}

impl Resolution {
    pub fn is_approved(&self) -> bool {
        matches!(self, Resolution::Approved { .. })
    }

    /// Why the request ended without approval, for the client's error; the
    /// caller adds what became of the command (not run, or cut short).
    pub fn refusal(&self, id: &str) -> String {
        match self {
            Resolution::Approved { .. } => format!("loopgate: approval {id} was granted"),
            Resolution::Denied {
                approver,
                reason: Some(r),
            } => format!("loopgate: approval {id} denied by {approver}: {r}"),
            Resolution::Denied { approver, reason: None } => {
                format!("loopgate: approval {id} denied by {approver}")
            }
            Resolution::TimedOut { after } => format!(
                "loopgate: approval {id} timed out after {}s without a decision",
                after.as_secs()
            ),
            Resolution::Withdrawn { reason } => format!("loopgate: approval {id} withdrawn: {reason}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// `reason` is recorded with the approval (why it is fine to run).
    Approve {
        reason: Option<String>,
    },
    Deny {
        reason: Option<String>,
    },
}

/// What a decision did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Enough approvals: the command runs.
    Released,
    /// Recorded; more approvals are needed.
    Counted {
        have: usize,
        need: u32,
    },
    Denied,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no pending approval {0:?} (decided, timed out, or never existed)")]
    NotFound(String),
    #[error("{who} is not in the approver group {group:?}")]
    NotApprover { who: String, group: String },
    #[error("{0} requested this command and cannot approve it")]
    SelfApproval(String),
    #[error("{0} has already approved this request")]
    AlreadyApproved(String),
    #[error("the decision could not be recorded, so it was not applied: {0}")]
    Audit(AuditError),
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("the agent is stopping")]
    Stopping,
    #[error("the approval request could not be recorded: {0}")]
    Audit(#[from] AuditError),
}

/// What every `approval` event of a request repeats; also what the
/// journal keeps.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Context {
    #[serde(flatten)]
    pub origin: Origin,
    pub rule_id: String,
}

impl Context {
    fn of(r: &HoldRequest) -> Self {
        Context {
            origin: r.origin.clone(),
            rule_id: r.hold.rule_id.clone(),
        }
    }
}

struct Entry {
    view: ApprovalView,
    context: Arc<Context>,
    started: Instant,
    resolve: oneshot::Sender<Resolution>,
}

/// Requests kept in the decision history (`Approvals::history`).
const HISTORY: usize = 200;

/// A request that ended, as the approvals page lists it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ended {
    pub approval: ApprovalView,
    /// `approved`, `denied`, `timed_out` or `cancelled`.
    pub outcome: String,
    /// Who approved or denied (empty for a timeout or withdrawal).
    pub by: Vec<String>,
    pub reason: Option<String>,
    pub ended_unix_ms: u64,
}

pub struct Approvals {
    pending: Mutex<HashMap<String, Entry>>,
    /// The newest ended requests, oldest first.
    ended: Mutex<std::collections::VecDeque<Ended>>,
    audit: AuditLog,
    journal: Option<Journal>,
    webhook: Option<Webhook>,
    stopping: AtomicBool,
}

impl Approvals {
    /// The agent's approvals, as `[approvals]` configures them.
    pub fn open(config: &super::ApprovalsConfig, audit: AuditLog) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let journal = Journal::open(&config.state_dir)
            .with_context(|| format!("approvals journal {}", config.state_dir.display()))?;
        let webhook = match &config.webhook_url {
            Some(url) => Some(
                Webhook::new(url, config.webhook_ca_file.as_deref(), config.link_base.clone())
                    .map_err(|e| anyhow::anyhow!("[approvals] webhook: {e}"))?,
            ),
            None => None,
        };
        Ok(Self::new(audit, Some(journal), webhook))
    }

    pub fn new(audit: AuditLog, journal: Option<Journal>, webhook: Option<Webhook>) -> Arc<Self> {
        Arc::new(Approvals {
            pending: Mutex::new(HashMap::new()),
            ended: Mutex::default(),
            audit,
            journal,
            webhook,
            stopping: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a request: recorded, journalled, announced. The command must
    /// not run until the ticket resolves as approved.
    pub async fn hold(self: &Arc<Self>, request: HoldRequest) -> Result<Ticket, HoldError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(HoldError::Stopping);
        }
        let id = self.fresh_id();
        let view = view_of(&id, &request);
        let context = Arc::new(Context::of(&request));
        let mut requested = transition(&context, &id, Verdict::Hold);
        requested.command = Some(CommandInfo {
            text: Some(request.command.clone()),
            parameters: request.parameters.clone(),
            ..CommandInfo::default()
        });
        if let Some(d) = requested.decision.as_mut() {
            d.reason = Some(match request.rows_sent {
                Some(rows) => format!("{} (paused after {rows} rows)", request.hold.reason),
                None => request.hold.reason.clone(),
            });
        }
        self.audit.append(requested).await?;
        if let Some(journal) = &self.journal {
            journal.write(&id, &context);
        }
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + request.hold.timeout;
        self.lock().insert(
            id.clone(),
            Entry {
                view: view.clone(),
                context,
                started: Instant::now(),
                resolve: tx,
            },
        );
        tracing::info!(approval = %id, rule = %request.hold.rule_id, session = %request.origin.session.session_id, "command held for approval");
        if let Some(webhook) = &self.webhook {
            webhook.announce(&view);
        }
        Ok(Ticket {
            approvals: self.clone(),
            view,
            rx,
            deadline,
            done: false,
        })
    }

    fn fresh_id(&self) -> String {
        let pending = self.lock();
        loop {
            let id = new_id();
            if !pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// How many requests are pending.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Pending requests `who` may decide (root sees all).
    pub fn list(&self, who: &Approver) -> Vec<ApprovalView> {
        let mut views: Vec<ApprovalView> = self
            .lock()
            .values()
            .filter(|e| who.uid == Some(0) || who.in_group(&e.view.approver_group))
            .map(|e| e.view.clone())
            .collect();
        views.sort_by(|a, b| (a.requested_unix_ms, &a.id).cmp(&(b.requested_unix_ms, &b.id)));
        views
    }

    /// Requests that ended, newest first, that `who` could have decided.
    pub fn history(&self, who: &Approver) -> Vec<Ended> {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended
            .iter()
            .rev()
            .filter(|e| who.uid == Some(0) || who.in_group(&e.approval.approver_group))
            .cloned()
            .collect()
    }

    /// Tells the webhook and keeps the request in the history, with the
    /// approver's `note` (an approval's reason).
    fn conclude(&self, view: &ApprovalView, resolution: &Resolution, note: Option<&str>) {
        if let Some(webhook) = &self.webhook {
            webhook.conclude(view, resolution);
        }
        let (outcome, by, reason) = match resolution {
            Resolution::Approved { approvers } => ("approved", approvers.clone(), note.map(str::to_owned)),
            Resolution::Denied { approver, reason } => ("denied", vec![approver.clone()], reason.clone()),
            Resolution::TimedOut { after } => (
                "timed_out",
                Vec::new(),
                Some(format!("no decision within {}s", after.as_secs())),
            ),
            Resolution::Withdrawn { reason } => ("cancelled", Vec::new(), Some(reason.clone())),
        };
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.len() == HISTORY {
            ended.pop_front();
        }
        ended.push_back(Ended {
            approval: view.clone(),
            outcome: outcome.to_owned(),
            by,
            reason,
            ended_unix_ms: now_unix_ms(),
        });
    }

    pub fn show(&self, who: &Approver, id: &str) -> Result<ApprovalView, DecideError> {
        let pending = self.lock();
        let entry = pending.get(id).ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
        if who.uid != Some(0) && !who.in_group(&entry.view.approver_group) {
            return Err(DecideError::NotApprover {
                who: who.name.clone(),
                group: entry.view.approver_group.clone(),
            });
        }
        Ok(entry.view.clone())
    }

    /// Applies `who`'s decision. It is recorded first; if that fails, the
    /// decision is not applied (a final one withdraws the request).
    pub async fn decide(&self, id: &str, who: &Approver, choice: Choice) -> Result<Decided, DecideError> {
        enum Step {
            Final(Box<Entry>, Resolution),
            Partial(Arc<Context>, usize, u32),
        }
        let step = {
            let mut pending = self.lock();
            let entry = pending
                .get_mut(id)
                .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
            let group = &entry.view.approver_group;
            if !who.in_group(group) {
                return Err(DecideError::NotApprover {
                    who: who.name.clone(),
                    group: group.clone(),
                });
            }
            match &choice {
                Choice::Approve { .. } => {
                    if is_requester(who, &entry.context) {
                        return Err(DecideError::SelfApproval(who.name.clone()));
                    }
                    if entry.view.approvals.contains(&who.name) {
                        return Err(DecideError::AlreadyApproved(who.name.clone()));
                    }
                    entry.view.approvals.push(who.name.clone());
                    let (have, need) = (entry.view.approvals.len(), entry.view.min_approvals);
                    if have as u64 >= u64::from(need) {
                        let approvers = entry.view.approvals.clone();
                        let entry = pending.remove(id).ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
                        Step::Final(Box::new(entry), Resolution::Approved { approvers })
                    } else {
                        Step::Partial(entry.context.clone(), have, need)
                    }
                }
                Choice::Deny { reason } => {
                    let entry = pending.remove(id).ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
                    let resolution = Resolution::Denied {
                        approver: who.name.clone(),
                        reason: reason.clone(),
                    };
                    Step::Final(Box::new(entry), resolution)
                }
            }
        };
        match step {
            Step::Partial(context, have, need) => {
                let mut event = transition(&context, id, Verdict::Approved);
                if let Some(d) = event.decision.as_mut() {
                    d.approver = Some(who.name.clone());
                    d.reason = Some(match &choice {
                        Choice::Approve { reason: Some(r) } => format!("approval {have} of {need}; still held: {r}"),
                        _ => format!("approval {have} of {need}; still held"),
                    });
                }
                if let Err(e) = self.audit.append(event).await {
                    if let Some(entry) = self.lock().get_mut(id) {
                        entry.view.approvals.retain(|a| a != &who.name);
                    }
                    return Err(DecideError::Audit(e));
                }
                tracing::info!(approval = %id, approver = %who.name, have, need, "approval counted");
                Ok(Decided::Counted { have, need })
            }
            Step::Final(entry, resolution) => {
                let entry = *entry;
                let decided = if resolution.is_approved() {
                    Decided::Released
                } else {
                    Decided::Denied
                };
                let note = match &choice {
                    Choice::Approve { reason } => reason.as_deref(),
                    Choice::Deny { .. } => None,
                };
                let mut event = self.outcome_event(&entry, &resolution, Some(who));
                if let (Some(d), Some(note)) = (event.decision.as_mut(), note) {
                    d.reason = Some(format!("{}: {note}", d.reason.as_deref().unwrap_or_default()));
                }
                if let Err(e) = self.audit.append(event).await {
                    let withdrawn = Resolution::Withdrawn {
                        reason: "the audit trail could not record its decision".into(),
                    };
                    self.close(entry, withdrawn, None);
                    return Err(DecideError::Audit(e));
                }
                tracing::info!(approval = %id, approver = %who.name, ?decided, "approval decided");
                self.close(entry, resolution, note);
                Ok(decided)
            }
        }
    }

    /// Withdraws every pending request (the agent is stopping): each
    /// waiter's client gets an error, and each withdrawal is recorded.
    pub async fn withdraw_all(&self, reason: &str) {
        self.stopping.store(true, Ordering::SeqCst);
        let entries: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        for entry in entries {
            let resolution = Resolution::Withdrawn {
                reason: reason.to_owned(),
            };
            let event = self.outcome_event(&entry, &resolution, None);
            if let Err(e) = self.audit.append(event).await {
                tracing::error!(approval = %entry.view.id, error = %e, "could not record a withdrawn approval");
            }
            self.close(entry, resolution, None);
        }
    }

    /// Records requests a previous run left pending (it crashed or was
    /// killed: their clients' connections died with it).
    pub async fn recover(&self) -> Result<usize, AuditError> {
        let Some(journal) = &self.journal else {
            return Ok(0);
        };
        let mut n = 0;
        for (id, context) in journal.leftovers() {
            let mut event = transition(&context, &id, Verdict::Cancelled);
            if let Some(d) = event.decision.as_mut() {
                d.reason = Some(
                    "the agent stopped while this request was pending; the held command never ran and its client's connection was closed"
                        .into(),
                );
            }
            self.audit.append(event).await?;
            journal.remove(&id);
            tracing::warn!(approval = %id, "recorded an approval request left pending by the previous run");
            n += 1;
        }
        Ok(n)
    }

    /// Ends a request: journal entry removed, outcome announced, waiter told.
    fn close(&self, entry: Entry, resolution: Resolution, note: Option<&str>) {
        if let Some(journal) = &self.journal {
            journal.remove(&entry.view.id);
        }
        self.conclude(&entry.view, &resolution, note);
        // The waiter may have left; then nobody needs telling.
        let _ = entry.resolve.send(resolution);
    }

    /// Takes a request out of the pending set, if it is still there.
    fn take(&self, id: &str) -> Option<Entry> {
        self.lock().remove(id)
    }

    /// The event of a final transition.
    fn outcome_event(&self, entry: &Entry, resolution: &Resolution, who: Option<&Approver>) -> Event {
        let verdict = match resolution {
            Resolution::Approved { .. } => Verdict::Approved,
            Resolution::Denied { .. } => Verdict::Denied,
            Resolution::TimedOut { .. } => Verdict::TimedOut,
            Resolution::Withdrawn { .. } => Verdict::Cancelled,
        };
        let mut event = transition(&entry.context, &entry.view.id, verdict);
        if let Some(d) = event.decision.as_mut() {
            d.approver = who.map(|w| w.name.clone());
            d.wait_us = Some(entry.started.elapsed().as_micros() as u64);
            d.reason = Some(match resolution {
                Resolution::Approved { approvers } => format!("released by {}", approvers.join(", ")),
                Resolution::Denied { reason, .. } => reason.clone().unwrap_or_else(|| "denied".into()),
                Resolution::TimedOut { after } => format!("no decision within {}s", after.as_secs()),
                Resolution::Withdrawn { reason } => reason.clone(),
            });
        }
        event
    }

    /// Ends a request its waiter gave up on (timed out, or its client
    /// left). The waiter is told at once; the event is recorded in the
    /// background, and only then is the journal entry removed, so a request
    /// whose end never reached the trail is recorded by the next start.
    fn abandon(self: &Arc<Self>, id: &str, resolution: Resolution) -> bool {
        let Some(entry) = self.take(id) else {
            return false;
        };
        let event = self.outcome_event(&entry, &resolution, None);
        self.conclude(&entry.view, &resolution, None);
        let _ = entry.resolve.send(resolution);
        let (approvals, id) = (self.clone(), id.to_owned());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    match approvals.audit.append(event).await {
                        Ok(_) => {
                            if let Some(journal) = &approvals.journal {
                                journal.remove(&id);
                            }
                        }
                        Err(e) => {
                            tracing::error!(approval = %id, error = %e, "could not record the end of an approval request")
                        }
                    }
                });
            }
            Err(_) => tracing::error!(approval = %id, "no runtime to record the end of an approval request"),
        }
        true
    }
}

/// A held command's claim on its request. Wait on it; dropping it while
/// pending (the client left) cancels the request.
pub struct Ticket {
    approvals: Arc<Approvals>,
    view: ApprovalView,
    rx: oneshot::Receiver<Resolution>,
    deadline: Instant,
    done: bool,
}

impl Ticket {
    pub fn view(&self) -> &ApprovalView {
        &self.view
    }

    /// Waits for the outcome. Cancel-safe: dropping the future and calling
    /// again loses nothing.
    pub async fn wait(&mut self) -> Resolution {
        if !self.done {
            tokio::select! {
                r = &mut self.rx => {
                    self.done = true;
                    return r.unwrap_or_else(|_| withdrawn_by_agent());
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    let after = self.approvals.lock().get(&self.view.id).map(|e| e.started.elapsed());
                    if let Some(after) = after {
                        let after = Duration::from_secs(after.as_secs_f64().round() as u64);
                        if self.approvals.abandon(&self.view.id, Resolution::TimedOut { after }) {
                            tracing::info!(approval = %self.view.id, "approval timed out");
                        }
                    }
                }
            }
        }
        // Decided (or timed out just now): the resolution is on its way.
        self.done = true;
        (&mut self.rx).await.unwrap_or_else(|_| withdrawn_by_agent())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            let reason = "the client left while the command was held".to_owned();
            if self.approvals.abandon(&self.view.id, Resolution::Withdrawn { reason }) {
                tracing::info!(approval = %self.view.id, "approval request cancelled: its client left");
            }
        }
    }
}

fn withdrawn_by_agent() -> Resolution {
    Resolution::Withdrawn {
        reason: "the agent ended the request".into(),
    }
}

fn is_requester(who: &Approver, request: &Context) -> bool {
    let request = &request.origin.session;
    let principal = request.principal.as_ref();
    let subject = principal.and_then(|p| p.subject.as_deref());
    let email = principal.and_then(|p| p.email.as_deref());
    subject == Some(who.name.as_str())
        || (who.uid.is_some() && who.uid == request.process.uid)
        || (who.email.is_some() && who.email.as_deref() == email)
}

/// An `approval` event for request `id`, tied to the held command.
fn transition(context: &Context, id: &str, verdict: Verdict) -> Event {
    let mut e = context.origin.session.event(EventKind::Approval);
    e.command_id = Some(context.origin.command_id);
    let mut d = Decision::new(verdict).rule(&context.rule_id);
    d.approval_id = Some(id.to_owned());
    e.decision = Some(d);
    e
}

fn view_of(id: &str, r: &HoldRequest) -> ApprovalView {
    let now = now_unix_ms();
    let p = &r.origin.session.process;
    ApprovalView {
        id: id.to_owned(),
        requested_unix_ms: now,
        expires_unix_ms: now + r.hold.timeout.as_millis() as u64,
        requester: r
            .origin
            .session
            .principal
            .as_ref()
            .and_then(|p| p.subject.clone())
            .unwrap_or_else(|| "unknown".into()),
        process: ProcessView {
            pid: p.tgid.or(p.pid),
            uid: p.uid,
            user: p.user.clone(),
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            unit: p.unit.clone(),
        },
        target: r.origin.session.target.name.clone(),
        command: r.command.clone(),
        parameters: r.parameters.clone(),
        rule_id: r.hold.rule_id.clone(),
        reason: r.hold.reason.clone(),
        approver_group: r.hold.approver_group.clone(),
        min_approvals: r.hold.min_approvals,
        approvals: Vec::new(),
        rows_sent: r.rows_sent,
    }
}

/// Short ids people can read out and type: 8 characters without look-alikes.
fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: a time-based id is still unique per agent.
        return format!("t{:x}", now_unix_ms());
    }
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Principal, ProcessInfo, TargetRef, memory::MemorySink as Memory};

    fn request(timeout: Duration, min: u32) -> HoldRequest {
        HoldRequest {
            origin: Origin {
                session: crate::session::Context {
                    session_id: Uuid::now_v7(),
                    client_address: None,
                    principal: Some(Arc::new(Principal {
                        subject: Some("unix:ci".into()),
                        ..Principal::default()
                    })),
                    process: Arc::new(ProcessInfo {
                        uid: Some(1000),
                        ..ProcessInfo::default()
                    }),
                    target: Arc::new(TargetRef::default()),
                },
                command_id: Uuid::now_v7(),
            },
            command: "COPY patients TO STDOUT".into(),
            parameters: vec![],
            hold: Hold {
                rule_id: "hipaa.hold_phi_export".into(),
                reason: "export".into(),
                approver_group: "phi-approvers".into(),
                min_approvals: min,
                timeout,
                row_threshold: None,
                mask: vec![],
            },
            rows_sent: None,
        }
    }

    fn approver(name: &str, uid: u32, groups: &[&str]) -> Approver {
        Approver {
            name: name.into(),
            uid: Some(uid),
            email: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            unit: None,
        }
    }

    fn setup() -> (Memory, Arc<Approvals>) {
        let memory = Memory::default();
        let approvals = Approvals::new(AuditLog::new(memory.clone()), None, None);
        (memory, approvals)
    }

    #[tokio::test]
    async fn two_distinct_approvers_release_and_the_requester_cannot() {
        let (memory, approvals) = setup();
        let mut ticket = approvals.hold(request(Duration::from_secs(60), 2)).await.unwrap();
        let id = ticket.view().id.clone();
        let alice = approver("unix:alice", 1001, &["phi-approvers"]);
        let bob = approver("unix:bob", 1002, &["phi-approvers"]);
        let outsider = approver("unix:eve", 1003, &["staff"]);
        let same_uid = approver("unix:other-name", 1000, &["phi-approvers"]);
        let same_subject = approver("unix:ci", 4242, &["phi-approvers"]);

        assert!(matches!(
            approvals.decide(&id, &outsider, Choice::Approve { reason: None }).await,
            Err(DecideError::NotApprover { .. })
        ));
        for requester in [&same_uid, &same_subject] {
            assert!(matches!(
                approvals.decide(&id, requester, Choice::Approve { reason: None }).await,
                Err(DecideError::SelfApproval(_))
            ));
        }
        assert_eq!(
            approvals
                .decide(&id, &alice, Choice::Approve { reason: None })
                .await
                .unwrap(),
            Decided::Counted { have: 1, need: 2 }
        );
        assert!(matches!(
            approvals.decide(&id, &alice, Choice::Approve { reason: None }).await,
            Err(DecideError::AlreadyApproved(_))
        ));
        assert!(approvals.list(&outsider).is_empty());
        assert_eq!(approvals.list(&bob)[0].approvals, ["unix:alice"]);
        assert_eq!(
            approvals
                .decide(&id, &bob, Choice::Approve { reason: None })
                .await
                .unwrap(),
            Decided::Released
        );
        assert_eq!(
            ticket.wait().await,
            Resolution::Approved {
                approvers: vec!["unix:alice".into(), "unix:bob".into()]
            }
        );
        assert!(matches!(
            approvals.decide(&id, &bob, Choice::Approve { reason: None }).await,
            Err(DecideError::NotFound(_))
        ));
        assert_eq!(memory.verdicts(), ["hold", "approved", "approved"]);
    }

    #[tokio::test]
    async fn timeout_and_a_departed_client_end_the_request_and_are_recorded() {
        let (memory, approvals) = setup();
        let mut ticket = approvals.hold(request(Duration::from_millis(50), 1)).await.unwrap();
        assert!(matches!(ticket.wait().await, Resolution::TimedOut { .. }));
        let ticket = approvals.hold(request(Duration::from_secs(60), 1)).await.unwrap();
        drop(ticket);
        assert!(approvals.list(&approver("unix:root", 0, &[])).is_empty());
        // The ends are recorded in the background.
        for _ in 0..100 {
            if memory.verdicts().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut verdicts = memory.verdicts();
        verdicts.sort_unstable();
        assert_eq!(verdicts, ["cancelled", "hold", "hold", "timed_out"]);
    }

    #[tokio::test]
    async fn a_decision_that_cannot_be_recorded_is_not_applied() {
        let (memory, approvals) = setup();
        let mut ticket = approvals.hold(request(Duration::from_secs(60), 1)).await.unwrap();
        let id = ticket.view().id.clone();
        memory.fail(true);
        let alice = approver("unix:alice", 1001, &["phi-approvers"]);
        assert!(matches!(
            approvals.decide(&id, &alice, Choice::Approve { reason: None }).await,
            Err(DecideError::Audit(_))
        ));
        assert!(
            matches!(ticket.wait().await, Resolution::Withdrawn { .. }),
            "an unrecorded approval never releases the command"
        );
        // And no request is opened while the trail is down.
        assert!(matches!(
            approvals.hold(request(Duration::from_secs(60), 1)).await,
            Err(HoldError::Audit(_))
        ));
    }

    #[tokio::test]
    async fn stopping_withdraws_every_request_and_refuses_new_ones() {
        let (memory, approvals) = setup();
        let mut a = approvals.hold(request(Duration::from_secs(60), 1)).await.unwrap();
        let mut b = approvals.hold(request(Duration::from_secs(60), 1)).await.unwrap();
        approvals.withdraw_all("the agent is stopping").await;
        for t in [&mut a, &mut b] {
            assert_eq!(
                t.wait().await,
                Resolution::Withdrawn {
                    reason: "the agent is stopping".into()
                }
            );
        }
        assert!(matches!(
            approvals.hold(request(Duration::from_secs(60), 1)).await,
            Err(HoldError::Stopping)
        ));
        assert_eq!(memory.verdicts(), ["hold", "hold", "cancelled", "cancelled"]);
    }

    #[tokio::test]
    async fn requests_left_in_the_journal_are_recorded_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (_memory, first) = {
            let memory = Memory::default();
            let journal = Journal::open(dir.path()).unwrap();
            (
                memory.clone(),
                Approvals::new(AuditLog::new(memory), Some(journal), None),
            )
        };
        let ticket = first.hold(request(Duration::from_secs(60), 1)).await.unwrap();
        let id = ticket.view().id.clone();
        // A crash: nothing ends the request.
        std::mem::forget(ticket);
        let memory = Memory::default();
        let second = Approvals::new(
            AuditLog::new(memory.clone()),
            Some(Journal::open(dir.path()).unwrap()),
            None,
        );
        assert_eq!(second.recover().await.unwrap(), 1);
        let events = memory.events();
        assert_eq!(events.len(), 1);
        let d = events[0].decision.as_ref().unwrap();
        assert_eq!(d.verdict, Verdict::Cancelled);
        assert_eq!(d.approval_id.as_deref(), Some(id.as_str()));
        assert_eq!(second.recover().await.unwrap(), 0, "recorded once");
    }
}
