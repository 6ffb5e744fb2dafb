//! Client → server: every message the client sends is checked here before
//! it reaches the database. Statements are analysed (once per distinct
//! text, cached), decided by the policy engine, recorded, and only then
//! forwarded; a refused statement never reaches the server.
use std::{sync::Arc, time::Instant};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{
    Service, SessionError,
    catalog::Catalog,
    frame::{self, Frame, MAX_MESSAGE, cstr},
    pending::{Command, Gate, GateProgress, Pending, Target},
    record,
    rows::Column,
    statements::Statements,
    wire::{self, sqlstate},
};
use crate::{
    approval::{HoldRequest, Resolution},
    enforce::{self, Caller, held_before_run},
    policy::{Action, PolicyDecision},
    session::Session,
    sql::AnalyzedStatement,
};

pub(super) struct Frontend<'s> {
    svc: &'s Service,
    session: &'s Session,
    catalog: &'s tokio::sync::Mutex<Catalog>,
    /// The caller as the policy sees it, built once per session.
    caller: Caller,
    /// Prepared statements and portals by the client's names.
    statements: Statements,
    /// After a refused extended-protocol message, everything up to the next
    /// Sync is dropped, as the server itself does after an error.
    skipping: bool,
    pending: mpsc::Sender<Pending>,
}

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
    hold: enforce::Held,
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
            caller: Caller::of(session, None, None),
            statements: Statements::default(),
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
                    let Some(resolution) = wait_for(&mut held.hold, client, &mut buf).await else {
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
        let Held {
            hold,
            release,
            message,
            extended,
        } = held;
        match hold.release(resolution) {
            Ok(_) => {
                self.queue(release).await?;
                out.extend_from_slice(&message);
                Ok(())
            }
            Err(refusal) => {
                record::unrun(self.session, &release, refusal.status());
                self.refuse(wire::refusal(&refusal), extended).await
            }
        }
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
            b'B' => self.bind(frame, out).await?,
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
            b'D' | b'C' => {
                if !self.skipping {
                    let target = Target::parse(frame.body()).ok_or_else(|| malformed("Describe or Close"))?;
                    if tag == b'C' {
                        self.statements.closed(&target);
                        self.queue(Pending::Close(target)).await?;
                    } else {
                        self.statements.described(&target);
                        self.queue(Pending::Describe { target, forward: true }).await?;
                    }
                    out.extend_from_slice(&frame.bytes);
                }
            }
            b'H' => {
                if !self.skipping {
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
        // A simple Query destroys the unnamed statement and portal.
        self.statements.forget_unnamed();
        let analysis = self.statements.resolve_executes(self.svc.analysis.analyze(text));
        let decisions: Vec<PolicyDecision> = analysis.statements.iter().map(|s| self.decide(s)).collect();
        if let Some(refusal) = decisions.iter().find(|d| matches!(d, PolicyDecision::Deny { .. })) {
            let reply = record::refusal(&self.svc.enforcer, self.session, &analysis.statements, refusal).await?;
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
        for stmt in &analysis.statements {
            self.statements.runs(stmt);
        }
        let held = decisions
            .iter()
            .zip(&commands)
            .find_map(|(d, c)| held_before_run(d).map(|hold| (hold, c.event_id)));
        if let Some((hold, command_id)) = held {
            let text: Vec<&str> = analysis.statements.iter().map(|s| s.normalized_text.as_str()).collect();
            let request = enforce::hold_request(self.session, command_id, text.join("; "), Vec::new(), hold);
            return self
                .hold(request, Pending::Query(commands), frame.bytes.freeze(), false)
                .await;
        }
        self.queue(Pending::Query(commands)).await?;
        out.extend_from_slice(&frame.bytes);
        Ok(None)
    }

    /// Opens an approval request for a statement and tells the client what
    /// it waits for; the caller waits on the returned hold.
    async fn hold(
        &mut self,
        request: HoldRequest,
        release: Pending,
        message: Bytes,
        extended: bool,
    ) -> Result<Option<Box<Held>>, SessionError> {
        let hold = match self.svc.enforcer.open(self.session, request).await {
            Ok(h) => h,
            Err(refusal) => {
                record::unrun(self.session, &release, refusal.status());
                self.refuse(wire::refusal(&refusal), extended).await?;
                return Ok(None);
            }
        };
        let (message_text, hint) = hold.notice();
        self.queue(Pending::Reply {
            bytes: wire::notice(&message_text, &hint),
            ready: false,
        })
        .await?;
        Ok(Some(Box::new(Held {
            hold,
            release,
            message,
            extended,
        })))
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
            let reply = record::refusal(&self.svc.enforcer, self.session, &analysis.statements, &decision).await?;
            return self.refuse_extended(reply).await;
        }
        let name = Bytes::copy_from_slice(name);
        self.statements.parsed(name.clone(), analysis, decision);
        self.queue(Pending::Parse { statement: name }).await?;
        out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    async fn bind(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), SessionError> {
        if self.skipping {
            return Ok(());
        }
        let bind =
            frame::decode_bind(frame.body()).map_err(|e| SessionError::Protocol(format!("malformed Bind: {e}")))?;
        let parameters = bind
            .parameters
            .iter()
            .map(|p| record::parameter(&self.svc.masker, p.value, p.binary))
            .collect();
        let (portal, statement) = (
            Bytes::copy_from_slice(bind.portal),
            Bytes::copy_from_slice(bind.statement),
        );
        let formats = bind.result_formats;
        self.statements.bound(portal.clone(), &statement, parameters);
        self.queue(Pending::Bind {
            portal,
            statement,
            formats,
        })
        .await?;
        out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    /// Before an Execute of a portal whose columns the server side has not
    /// been told: loopgate's own Describe, answered to loopgate only, so
    /// its rows are masked by their real columns.
    async fn describe_first(&mut self, portal: &[u8], out: &mut BytesMut) -> Result<(), SessionError> {
        if !self.statements.needs_describe(portal) {
            return Ok(());
        }
        let mut body = Vec::with_capacity(portal.len() + 2);
        body.push(b'P');
        body.extend_from_slice(portal);
        body.push(0);
        frame::put_message(out, b'D', &body);
        self.queue(Pending::Describe {
            target: Target::Portal(Bytes::copy_from_slice(portal)),
            forward: false,
        })
        .await
    }

    /// Execute: recorded with its bound parameters; held ones wait here.
    async fn execute(&mut self, frame: Frame, out: &mut BytesMut) -> Result<Option<Box<Held>>, SessionError> {
        if self.skipping {
            return Ok(None);
        }
        let (portal, _) = cstr(frame.body()).ok_or_else(|| malformed("Execute"))?;
        let Some(bound) = self.statements.portal(portal) else {
            let reply = wire::error("34000", "loopgate: portal was not bound through loopgate");
            self.refuse_extended(reply).await?;
            return Ok(None);
        };
        let prepared = bound.prepared.clone();
        if prepared.ambiguous {
            let reply = wire::error(
                "42P05",
                "loopgate: this prepared statement's name was parsed twice; close it (or DEALLOCATE it) and parse it again",
            );
            self.refuse_extended(reply).await?;
            return Ok(None);
        }
        let parameters = bound.parameters.clone();
        let gate = bound.gate.clone();
        let Some(stmt) = prepared.statement() else {
            // An empty statement: nothing runs, nothing to record.
            self.queue(Pending::Execute(Command {
                event_id: uuid::Uuid::nil(),
                fingerprint: String::new(),
                mask: Vec::new(),
                copy_columns: Vec::new(),
                copy_types: Vec::new(),
                copy_format: None,
                portal: Some(Bytes::copy_from_slice(portal)),
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
        let mut command = match self.record_allowed(stmt, &prepared.decision, parameters, gate).await {
            Ok(command) => command,
            Err(reply) => {
                self.refuse_extended(reply).await?;
                return Ok(None);
            }
        };
        command.portal = Some(Bytes::copy_from_slice(portal));
        self.statements.runs(stmt);
        self.describe_first(portal, out).await?;
        if let (Some(hold), Some(parameters)) = (hold, held_parameters) {
            let request = enforce::hold_request(
                self.session,
                command.event_id,
                stmt.normalized_text.clone(),
                parameters,
                hold,
            );
            return self
                .hold(request, Pending::Execute(command), frame.bytes.freeze(), true)
                .await;
        }
        self.queue(Pending::Execute(command)).await?;
        out.extend_from_slice(&frame.bytes);
        Ok(None)
    }

    /// The real columns of a COPY TO's data and their types: its query is
    /// described (not run) on the session's side connection.
    async fn describe_copy(&self, query: &str) -> Result<(Vec<Column>, Vec<u32>), String> {
        let mut catalog = self.catalog.lock().await;
        let fields = catalog.describe(query).await?;
        let types = fields.iter().map(|f| f.type_oid).collect();
        let fields: Vec<(String, u32, i16)> = fields.into_iter().map(|f| (f.name, f.table_oid, f.attnum)).collect();
        Ok((catalog.resolve(&self.svc.tables, &fields).await, types))
    }

    fn decide(&self, stmt: &AnalyzedStatement) -> PolicyDecision {
        self.svc.enforcer.decide(&self.caller, Action::Sql { statement: stmt })
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
        let copy_format = stmt.classification.as_ref().ok().and_then(|c| c.copy_format.clone());
        let (copy_columns, copy_types) = match stmt.classification.as_ref().ok().and_then(|c| c.copy_query.as_deref()) {
            Some(query) => match self.describe_copy(query).await {
                Ok(columns) => columns,
                Err(e) => {
                    tracing::warn!(session = %self.session.id, error = %e, "refusing COPY: its columns are unknown");
                    return Err(record::refuse_copy(&self.svc.enforcer, self.session, stmt, parameters).await);
                }
            },
            None => (Vec::new(), Vec::new()),
        };
        // The gate's request shows the parameters too; copied only then.
        let gate_parameters =
            matches!(decision, PolicyDecision::Hold(h) if h.row_threshold.is_some()).then(|| parameters.clone());
        let info = record::command_info(stmt, parameters);
        let admitted = self
            .svc
            .enforcer
            .admit(self.session, decision, info)
            .await
            .map_err(|refusal| wire::refusal(&refusal))?;
        let gate = admitted.threshold.as_ref().map(|(hold, threshold)| {
            let parameters = gate_parameters.unwrap_or_default();
            let request = enforce::hold_request(
                self.session,
                admitted.event_id,
                stmt.normalized_text.clone(),
                parameters,
                hold,
            );
            Box::new(Gate {
                threshold: *threshold,
                request,
                progress: progress.unwrap_or_default(),
            })
        });
        Ok(Command {
            event_id: admitted.event_id,
            fingerprint: stmt.fingerprint.to_string(),
            mask: admitted.mask,
            copy_columns,
            copy_types,
            copy_format,
            portal: None,
            lineage: stmt.classification.as_ref().ok().map(|c| Arc::clone(&c.lineage)),
            started: admitted.started,
            gate,
        })
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
}

/// Waits for a held statement's outcome while watching the client: `None`
/// if it disconnects. What it sends meanwhile is buffered, up to a limit.
async fn wait_for<R: AsyncRead + Unpin>(
    held: &mut enforce::Held,
    client: &mut R,
    buf: &mut BytesMut,
) -> Option<Resolution> {
    loop {
        tokio::select! {
            r = held.wait() => return Some(r),
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

fn malformed(what: &str) -> SessionError {
    SessionError::Protocol(format!("malformed {what} message"))
}
