//! Client → server: every message the client sends is checked here before
//! it reaches the database. Statements are analysed (once per distinct
//! text, cached), decided by the policy engine, recorded, and only then
//! forwarded; a refused statement never reaches the server.
use std::{collections::HashMap, sync::Arc, time::Instant};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{
    Service, SessionError,
    catalog::Catalog,
    frame::{self, Frame, MAX_MESSAGE, cstr, take_i16, take_i32},
    pending::{Command, Gate, GateProgress, Pending},
    record,
    rows::Column,
    wire::{self, sqlstate},
};
use crate::{
    approval::{HoldRequest, Origin, Resolution, Ticket},
    policy::{Hold, PolicyDecision, PolicyInput, Principal, ProcessInfo, SessionInfo},
    proxy::Session,
    sql::{Analysis, AnalyzedStatement},
};

/// A prepared statement as the client named it.
struct Prepared {
    analysis: Arc<Analysis>,
    decision: PolicyDecision,
}

impl Prepared {
    /// The one statement of the Parse (None for an empty statement).
    fn statement(&self) -> Option<&AnalyzedStatement> {
        self.analysis.statements.first()
    }
}

/// A bound portal: its statement and the parameter values as recorded.
struct Portal {
    prepared: Arc<Prepared>,
    parameters: Vec<String>,
    /// Row-threshold progress across the portal's Executes; only for a
    /// statement whose hold has a row threshold.
    gate: Option<Arc<GateProgress>>,
}

pub(super) struct Frontend<'s> {
    svc: &'s Service,
    session: &'s Session,
    catalog: &'s tokio::sync::Mutex<Catalog>,
    /// The caller as the policy sees it, built once per session.
    principal: Principal,
    process: ProcessInfo,
    session_info: SessionInfo,
    statements: HashMap<Bytes, Arc<Prepared>>,
    portals: HashMap<Bytes, Portal>,
    /// After a refused extended-protocol message, everything up to the next
    /// Sync is dropped, as the server itself does after an error.
    skipping: bool,
    pending: mpsc::Sender<Pending>,
}

/// Rule id of a COPY refused because its columns could not be determined.
const COPY_UNKNOWN_RULE: &str = "loopgate.copy_columns_unknown";

/// Recorded parameter values are cut to this many characters.
const PARAMETER_MAX: usize = 128;

/// While a statement is held, the client may go on sending (pipelining);
/// up to this much is buffered, then reading pauses.
const HELD_READ_LIMIT: usize = 1024 * 1024;

enum Flow {
    Continue,
    Terminate,
    /// A statement waits for approval; nothing after it is forwarded.
    Hold(Box<Held>),
}

/// A statement held for approval, and what is forwarded once approved.
struct Held {
    ticket: Ticket,
    /// What the server side expects once the statement is forwarded.
    release: Pending,
    /// The client's message (Query or Execute), forwarded on approval.
    message: Bytes,
    /// Extended protocol: a refusal skips to Sync; simple: ReadyForQuery follows.
    extended: bool,
}

impl<'s> Frontend<'s> {
    pub fn new(
        svc: &'s Service,
        session: &'s Session,
        catalog: &'s tokio::sync::Mutex<Catalog>,
        pending: mpsc::Sender<Pending>,
    ) -> Self {
        Frontend {
            svc,
            session,
            catalog,
            principal: svc.principal_of(session),
            process: svc.process_of(session),
            session_info: SessionInfo {
                id: session.id.to_string(),
                ..SessionInfo::default()
            },
            statements: HashMap::new(),
            portals: HashMap::new(),
            skipping: false,
            pending,
        }
    }

    /// Relays until the client terminates or disconnects. Forwarded messages
    /// are buffered and written when no further complete message is waiting,
    /// so a pipelined Bind/Execute/Sync costs one write.
    pub async fn run<R, W>(mut self, client: &mut R, mut buf: BytesMut, server: &mut W) -> Result<(), SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = BytesMut::new();
        loop {
            if !frame::has_complete_frame(&buf) {
                self.forward(server, &mut out).await?;
            }
            let Some(frame) = frame::read_frame(client, &mut buf, true, MAX_MESSAGE).await? else {
                return Ok(());
            };
            match self.on_message(frame, &mut out).await? {
                Flow::Continue => {}
                Flow::Terminate => return self.forward(server, &mut out).await,
                Flow::Hold(mut held) => {
                    // What came before the held statement goes ahead.
                    self.forward(server, &mut out).await?;
                    let Some(resolution) = wait_for(&mut held.ticket, client, &mut buf).await else {
                        // The client left; dropping the ticket cancels the request.
                        return Ok(());
                    };
                    self.released(*held, resolution, &mut out).await?;
                }
            }
        }
    }

    /// Writes what is buffered for the server, if anything.
    async fn forward<W: AsyncWrite + Unpin>(&self, server: &mut W, out: &mut BytesMut) -> Result<(), SessionError> {
        if !out.is_empty() {
            self.session.add_to_server(out.len());
            server.write_all(out).await?;
            out.clear();
        }
        Ok(())
    }

    /// Acts on a held statement's outcome: approved, it is forwarded in
    /// its place; otherwise the client gets the reason as an error.
    async fn released(&mut self, held: Held, resolution: Resolution, out: &mut BytesMut) -> Result<(), SessionError> {
        if resolution.is_approved() {
            self.queue(held.release).await?;
            out.extend_from_slice(&held.message);
            return Ok(());
        }
        let code = wire::unapproved_code(&resolution);
        let message = format!(
            "{}; the statement was not run",
            resolution.refusal(&held.ticket.view().id)
        );
        let error = wire::error(code, &message);
        self.refuse(error, held.extended).await
    }

    /// Answers a statement with loopgate's own error, as its protocol
    /// expects: a simple Query gets ReadyForQuery after it, an extended
    /// batch is skipped up to Sync.
    async fn refuse(&mut self, error: BytesMut, extended: bool) -> Result<(), SessionError> {
        if extended {
            self.refuse_extended(error).await
        } else {
            self.queue(Pending::Reply {
                bytes: error,
                ready: true,
            })
            .await
        }
    }

    async fn on_message(&mut self, frame: Frame, out: &mut BytesMut) -> Result<Flow, SessionError> {
        let tag = frame.tag.unwrap_or(0);
        match tag {
            b'Q' => {
                if let Some(held) = self.query(frame, out).await? {
                    return Ok(Flow::Hold(held));
                }
            }
            b'P' => self.parse(frame, out).await?,
            b'B' => self.bind(frame, out)?,
            b'E' => {
                if let Some(held) = self.execute(frame, out).await? {
                    return Ok(Flow::Hold(held));
                }
            }
            b'S' => {
                self.skipping = false;
                self.queue(Pending::Sync).await?;
                out.extend_from_slice(&frame.bytes);
            }
            b'D' | b'C' | b'H' => {
                if !self.skipping {
                    if tag == b'C' {
                        self.close(&frame);
                    }
                    out.extend_from_slice(&frame.bytes);
                }
            }
            // COPY FROM STDIN data flows to the server as it comes.
            b'd' | b'c' | b'f' => out.extend_from_slice(&frame.bytes),
            b'X' => {
                out.extend_from_slice(&frame.bytes);
                return Ok(Flow::Terminate);
            }
            b'F' => {
                // FunctionCall runs a function by OID, bypassing SQL: the
                // statement cannot be classified, so it is refused.
                let error = wire::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "loopgate: the FunctionCall protocol message is refused; call the function with SELECT",
                );
                self.refuse(error, false).await?;
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected client message type {:?}",
                    other as char
                )));
            }
        }
        Ok(Flow::Continue)
    }

    /// Simple query: every statement of the string is decided; if one is
    /// refused, none runs (the string is one implicit transaction anyway);
    /// if one is held, the whole string waits for approval.
    async fn query(&mut self, frame: Frame, out: &mut BytesMut) -> Result<Option<Box<Held>>, SessionError> {
        let text = match statement_text(frame.body()) {
            Ok(t) => t,
            Err(reply) => {
                self.refuse(reply, false).await?;
                return Ok(None);
            }
        };
        let analysis = self.svc.analysis.analyze(text);
        let decisions: Vec<PolicyDecision> = analysis.statements.iter().map(|s| self.decide(s)).collect();
        if let Some(refusal) = decisions.iter().find(|d| matches!(d, PolicyDecision::Deny { .. })) {
            let reply = self.refusal(&analysis.statements, refusal).await?;
            self.refuse(reply, false).await?;
            return Ok(None);
        }
        let mut commands = Vec::with_capacity(analysis.statements.len());
        for (stmt, decision) in analysis.statements.iter().zip(&decisions) {
            match self.record_allowed(stmt, decision, Vec::new(), None).await {
                Ok(c) => commands.push(c),
                Err(reply) => {
                    self.refuse(reply, false).await?;
                    return Ok(None);
                }
            }
        }
        let held = decisions
            .iter()
            .zip(&commands)
            .find_map(|(d, c)| held_before_run(d).map(|hold| (hold, c.event_id)));
        if let Some((hold, command_id)) = held {
            let text: Vec<&str> = analysis.statements.iter().map(|s| s.normalized_text.as_str()).collect();
            let request = self.hold_request(command_id, text.join("; "), Vec::new(), hold);
            return self
                .hold(request, Pending::Query(commands), frame.bytes.freeze(), false)
                .await;
        }
        self.queue(Pending::Query(commands)).await?;
        out.extend_from_slice(&frame.bytes);
        Ok(None)
    }

    /// Opens an approval request for a statement and tells the client what
    /// it waits for; the caller waits on the returned ticket.
    async fn hold(
        &mut self,
        request: HoldRequest,
        release: Pending,
        message: Bytes,
        extended: bool,
    ) -> Result<Option<Box<Held>>, SessionError> {
        let ticket = match self.svc.approvals.hold(request).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(session = %self.session.id, error = %e, "cannot hold a statement for approval");
                let error = wire::error(
                    sqlstate::SYSTEM_ERROR,
                    &format!(
                        "loopgate: this statement needs approval, which cannot be requested now ({e}); it was not run"
                    ),
                );
                self.refuse(error, extended).await?;
                return Ok(None);
            }
        };
        let (message_text, hint) = ticket.view().notice();
        self.queue(Pending::Reply {
            bytes: wire::notice(&message_text, &hint),
            ready: false,
        })
        .await?;
        Ok(Some(Box::new(Held {
            ticket,
            release,
            message,
            extended,
        })))
    }

    /// What an approval request says about a statement of this session.
    fn hold_request(
        &self,
        command_id: uuid::Uuid,
        command: String,
        parameters: Vec<String>,
        hold: &Hold,
    ) -> HoldRequest {
        HoldRequest {
            origin: Origin {
                session_id: self.session.id,
                command_id,
                client_address: Some(Arc::clone(&self.session.client_address)),
                principal: self.session.principal.get().cloned(),
                process: Arc::clone(&self.session.process),
                target: self.session.target_ref(),
            },
            command,
            parameters,
            hold: hold.clone(),
            rows_sent: None,
        }
    }

    /// Parse: the statement is analysed and decided now, once, and executed
    /// (and recorded) at each Execute.
    async fn parse(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), SessionError> {
        if self.skipping {
            return Ok(());
        }
        let body = frame.body();
        let (name, rest) = cstr(body).ok_or_else(|| malformed("Parse"))?;
        let text = match statement_text(rest) {
            Ok(t) => t,
            Err(reply) => return self.refuse_extended(reply).await,
        };
        let analysis = self.svc.analysis.analyze(text);
        if analysis.statements.len() > 1 {
            let reply = wire::error(
                "42601",
                "loopgate: a prepared statement must hold exactly one statement",
            );
            return self.refuse_extended(reply).await;
        }
        let decision = analysis
            .statements
            .first()
            .map_or_else(PolicyDecision::allow, |s| self.decide(s));
        if matches!(decision, PolicyDecision::Deny { .. }) {
            let reply = self.refusal(&analysis.statements, &decision).await?;
            return self.refuse_extended(reply).await;
        }
        self.statements
            .insert(Bytes::copy_from_slice(name), Arc::new(Prepared { analysis, decision }));
        out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    fn bind(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), SessionError> {
        if self.skipping {
            return Ok(());
        }
        let Bound {
            portal,
            statement,
            parameters,
        } = parse_bind(frame.body(), self)?;
        if let Some(prepared) = self.statements.get(statement).cloned() {
            let gate =
                matches!(&prepared.decision, PolicyDecision::Hold(h) if h.row_threshold.is_some()).then(Arc::default);
            let portal_state = Portal {
                prepared,
                parameters,
                gate,
            };
            self.portals.insert(Bytes::copy_from_slice(portal), portal_state);
        } else {
            // The server answers an unknown statement with its own error;
            // an Execute of this portal is refused below.
            self.portals.remove(portal);
        }
        out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    /// Execute: recorded with its bound parameters; held ones wait here.
    async fn execute(&mut self, frame: Frame, out: &mut BytesMut) -> Result<Option<Box<Held>>, SessionError> {
        if self.skipping {
            return Ok(None);
        }
        let (portal, _) = cstr(frame.body()).ok_or_else(|| malformed("Execute"))?;
        let Some(bound) = self.portals.get(portal) else {
            let reply = wire::error("34000", "loopgate: portal was not bound through loopgate");
            self.refuse_extended(reply).await?;
            return Ok(None);
        };
        let prepared = bound.prepared.clone();
        let parameters = bound.parameters.clone();
        let gate = bound.gate.clone();
        let Some(stmt) = prepared.statement() else {
            // An empty statement: nothing runs, nothing to record.
            self.queue(Pending::Execute(Command {
                event_id: uuid::Uuid::nil(),
                fingerprint: String::new(),
                mask: Vec::new(),
                copy_columns: Vec::new(),
                lineage: None,
                started: Instant::now(),
                gate: None,
            }))
            .await?;
            out.extend_from_slice(&frame.bytes);
            return Ok(None);
        };
        let hold = held_before_run(&prepared.decision);
        // The request shows the parameters too; copied only when held.
        let held_parameters = hold.map(|_| parameters.clone());
        let command = match self.record_allowed(stmt, &prepared.decision, parameters, gate).await {
            Ok(command) => command,
            Err(reply) => {
                self.refuse_extended(reply).await?;
                return Ok(None);
            }
        };
        if let (Some(hold), Some(parameters)) = (hold, held_parameters) {
            let request = self.hold_request(command.event_id, stmt.normalized_text.clone(), parameters, hold);
            return self
                .hold(request, Pending::Execute(command), frame.bytes.freeze(), true)
                .await;
        }
        self.queue(Pending::Execute(command)).await?;
        out.extend_from_slice(&frame.bytes);
        Ok(None)
    }

    fn close(&mut self, frame: &Frame) {
        let Some((&kind, rest)) = frame.body().split_first() else {
            return;
        };
        let Some((name, _)) = cstr(rest) else {
            return;
        };
        match kind {
            b'S' => {
                self.statements.remove(name);
            }
            b'P' => {
                self.portals.remove(name);
            }
            _ => {}
        }
    }

    /// The real columns of a COPY TO's data: its query is described (not
    /// run) on the session's side connection.
    async fn describe_copy(&self, query: &str) -> Result<Vec<Column>, String> {
        let mut catalog = self.catalog.lock().await;
        let fields = catalog.describe(query).await?;
        let fields: Vec<(String, u32, i16)> = fields.into_iter().map(|f| (f.name, f.table_oid, f.attnum)).collect();
        Ok(catalog.resolve(&self.svc.tables, &fields).await)
    }

    fn decide(&self, stmt: &AnalyzedStatement) -> PolicyDecision {
        let input = PolicyInput {
            principal: &self.principal,
            process: &self.process,
            target: &self.svc.target,
            statement: stmt,
            session: Some(&self.session_info),
            time: std::time::SystemTime::now(),
        };
        self.svc.policy.decide(&input)
    }

    /// Records an allowed or held statement; an allowed one may be
    /// forwarded once this returns Ok, a held one once approved. An audit
    /// failure yields the error to send instead.
    async fn record_allowed(
        &self,
        stmt: &AnalyzedStatement,
        decision: &PolicyDecision,
        parameters: Vec<String>,
        progress: Option<Arc<GateProgress>>,
    ) -> Result<Command, BytesMut> {
        let copy_columns = match stmt.classification.as_ref().ok().and_then(|c| c.copy_query.as_deref()) {
            Some(query) => match self.describe_copy(query).await {
                Ok(columns) => columns,
                Err(e) => {
                    tracing::warn!(session = %self.session.id, error = %e, "refusing COPY: its columns are unknown");
                    let reason = "the columns of this COPY could not be determined, so its data cannot be masked";
                    let event =
                        record::command(self.session, stmt, record::block(COPY_UNKNOWN_RULE, reason), parameters);
                    if self.session.audit.append(event).await.is_err() {
                        tracing::error!(session = %self.session.id, "could not record a refused COPY");
                    }
                    let message = format!("loopgate: statement refused by rule {COPY_UNKNOWN_RULE}: {reason}");
                    return Err(wire::error(sqlstate::FEATURE_NOT_SUPPORTED, &message));
                }
            },
            None => Vec::new(),
        };
        let threshold = match decision {
            PolicyDecision::Hold(hold) => hold.row_threshold.map(|t| (hold, t)),
            _ => None,
        };
        let recorded = match (decision, threshold) {
            (_, Some((hold, t))) => record::gated(hold, t),
            (PolicyDecision::Hold(hold), None) => record::hold(hold),
            _ => record::allow(),
        };
        let gate_parameters = threshold.map(|_| parameters.clone());
        let event = record::command(self.session, stmt, recorded, parameters);
        let event_id = event.event_id;
        if let Err(e) = self.session.audit.append(event).await {
            tracing::error!(session = %self.session.id, error = %e, "refusing statement: audit unavailable");
            return Err(wire::error(
                sqlstate::SYSTEM_ERROR,
                "loopgate: the audit trail cannot record this statement, so it was not run; try again later",
            ));
        }
        Ok(Command {
            event_id,
            fingerprint: stmt.fingerprint.to_string(),
            mask: decision.mask_overrides().to_vec(),
            copy_columns,
            lineage: stmt.classification.as_ref().ok().map(|c| Arc::clone(&c.lineage)),
            started: Instant::now(),
            gate: threshold.map(|(hold, threshold)| {
                let parameters = gate_parameters.unwrap_or_default();
                let request = self.hold_request(event_id, stmt.normalized_text.clone(), parameters, hold);
                Box::new(Gate {
                    threshold,
                    request,
                    progress: progress.unwrap_or_default(),
                })
            }),
        })
    }

    /// Records `statements` as refused by `decision` and returns the error
    /// for the client, naming the rule.
    async fn refusal(
        &self,
        statements: &[AnalyzedStatement],
        decision: &PolicyDecision,
    ) -> Result<BytesMut, SessionError> {
        let (rule, reason) = refusal_text(decision);
        for stmt in statements {
            let event = record::command(self.session, stmt, record::block(&rule, &reason), Vec::new());
            self.record(event).await?;
        }
        let message = format!("loopgate: statement refused by rule {rule}: {reason}");
        Ok(wire::error(sqlstate::INSUFFICIENT_PRIVILEGE, &message))
    }

    async fn record(&self, event: crate::audit::Event) -> Result<(), SessionError> {
        self.session.audit.append(event).await.map_err(SessionError::Audit)
    }

    /// Refuses an extended-protocol message: the error goes to the client
    /// in order, and the rest of the batch is dropped until Sync.
    async fn refuse_extended(&mut self, reply: BytesMut) -> Result<(), SessionError> {
        self.skipping = true;
        self.queue(Pending::Reply {
            bytes: reply,
            ready: false,
        })
        .await
    }

    async fn queue(&self, p: Pending) -> Result<(), SessionError> {
        self.pending.send(p).await.map_err(|_| SessionError::Closed)
    }

    fn mask_parameter(&self, value: Option<&[u8]>, binary: bool) -> String {
        match value {
            None => "NULL".to_owned(),
            Some(v) if binary => format!("<{} bytes, binary>", v.len()),
            Some(v) => {
                let text = String::from_utf8_lossy(v);
                let masked = self.svc.masker.mask_free_text(&text);
                let mut s: String = masked.chars().take(PARAMETER_MAX).collect();
                if masked.chars().count() > PARAMETER_MAX {
                    s.push('…');
                }
                s
            }
        }
    }
}

/// Waits for a held statement's outcome while watching the client: `None`
/// if it disconnects. What it sends meanwhile is buffered, up to a limit.
async fn wait_for<R: AsyncRead + Unpin>(ticket: &mut Ticket, client: &mut R, buf: &mut BytesMut) -> Option<Resolution> {
    loop {
        tokio::select! {
            r = ticket.wait() => return Some(r),
            n = client.read_buf(buf), if buf.len() < HELD_READ_LIMIT => match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// The statement text of a Query or Parse body: NUL-terminated UTF-8.
/// Statement text in another encoding could be read differently by the
/// analyser and by the server, so it is refused.
fn statement_text(body: &[u8]) -> Result<&str, BytesMut> {
    let (text, _) =
        cstr(body).ok_or_else(|| wire::error(sqlstate::PROTOCOL_VIOLATION, "loopgate: malformed statement text"))?;
    std::str::from_utf8(text).map_err(|_| {
        wire::error(
            "22021",
            "loopgate: statement text must be valid UTF-8 (set client_encoding to UTF8)",
        )
    })
}

/// What a Bind says: portal name, statement name, and the parameter values
/// as recorded (masked).
struct Bound<'b> {
    portal: &'b [u8],
    statement: &'b [u8],
    parameters: Vec<String>,
}

fn parse_bind<'b>(body: &'b [u8], fe: &Frontend<'_>) -> Result<Bound<'b>, SessionError> {
    let (portal, rest) = cstr(body).ok_or_else(|| malformed("Bind"))?;
    let (statement, mut rest) = cstr(rest).ok_or_else(|| malformed("Bind"))?;
    let n_formats = take_i16(&mut rest).ok_or_else(|| malformed("Bind"))?;
    if n_formats < 0 {
        return Err(malformed("Bind"));
    }
    let mut formats = Vec::with_capacity(n_formats as usize);
    for _ in 0..n_formats {
        formats.push(take_i16(&mut rest).ok_or_else(|| malformed("Bind"))?);
    }
    let n_params = take_i16(&mut rest).ok_or_else(|| malformed("Bind"))?;
    if n_params < 0 {
        return Err(malformed("Bind"));
    }
    let mut parameters = Vec::with_capacity(n_params as usize);
    for i in 0..n_params as usize {
        let len = take_i32(&mut rest).ok_or_else(|| malformed("Bind"))?;
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i).copied() == Some(1),
        };
        if len < 0 {
            parameters.push(fe.mask_parameter(None, binary));
            continue;
        }
        let len = len as usize;
        if rest.len() < len {
            return Err(malformed("Bind"));
        }
        let (value, tail) = rest.split_at(len);
        rest = tail;
        parameters.push(fe.mask_parameter(Some(value), binary));
    }
    Ok(Bound {
        portal,
        statement,
        parameters,
    })
}

/// The hold of a statement that waits before it runs (a hold with a row
/// threshold runs at once and pauses its results instead).
fn held_before_run(decision: &PolicyDecision) -> Option<&Hold> {
    match decision {
        PolicyDecision::Hold(hold) if hold.row_threshold.is_none() => Some(hold),
        _ => None,
    }
}

fn refusal_text(d: &PolicyDecision) -> (String, String) {
    match d {
        PolicyDecision::Deny { rule_id, reason } => (rule_id.clone(), reason.clone()),
        PolicyDecision::Hold(h) => (h.rule_id.clone(), h.reason.clone()),
        PolicyDecision::Allow { .. } => (String::new(), String::new()),
    }
}

fn malformed(what: &str) -> SessionError {
    SessionError::Protocol(format!("malformed {what} message"))
}
