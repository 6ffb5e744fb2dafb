//! Server → client: every message the server sends passes here. Results
//! are masked row by row (streamed, nothing buffered beyond one message),
//! server messages are scanned, and each finished command is recorded with
//! its outcome.
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use pgwire::messages::{DecodeContext, Message as _, PgWireBackendMessage, data::RowDescription};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{
    Service, SessionError,
    cancel::CancelTarget,
    catalog::Catalog,
    copy::CopyOut,
    frame::{self, Frame, MAX_MESSAGE},
    pending::{Command, Pending, Target},
    record,
    rows::{self, Column, ResultMask},
    wire::{self, sqlstate},
};
use crate::{
    audit::{Event, Outcome},
    mask::{MaskAction, MaskRule},
    session::Session,
    sql::lineage::Lineage,
};

/// How long the masking plan of a RowDescription is reused for identical
/// descriptions. Column names behind the table OIDs are trusted for the
/// catalog's TTL already; this adds at most a second to it.
const PLAN_REUSE: Duration = Duration::from_secs(1);

/// The last result description planned, for the next identical one (a
/// statement run again and again describes its result the same way).
struct Planned {
    description: Bytes,
    overrides: Vec<MaskRule>,
    lineage: Option<Arc<Lineage>>,
    mask: ResultMask,
    rewritten: Option<BytesMut>,
    at: Instant,
}

/// What a prepared statement's or portal's result looks like, as far as
/// loopgate has been told.
#[derive(Clone)]
enum Shape {
    /// Not described (yet), or its description was lost with an error.
    Unknown,
    /// Returns no rows.
    NoData,
    Rows(Arc<Described>),
}

/// A described result: the server's description and the real columns.
struct Described {
    /// The RowDescription as the server sent it.
    description: Bytes,
    columns: Vec<Column>,
}

/// A plan built for some result of a statement or portal, reused for the
/// next with the same formats and policy overrides.
struct CachedPlan {
    formats: Vec<i16>,
    overrides: Vec<MaskRule>,
    /// The lineage of the statement it was planned for.
    lineage: Option<Arc<Lineage>>,
    mask: ResultMask,
}

struct StatementState {
    /// Which Parse made it: a name (the unnamed statement above all) is
    /// parsed again and again, and a portal bound earlier keeps the plan
    /// of the statement it was bound from.
    parse: u64,
    shape: Shape,
    plan: Option<CachedPlan>,
}

struct PortalState {
    statement: Bytes,
    /// The [`StatementState::parse`] of the statement it was bound from:
    /// the statement's cached plan is shared only while it is that one.
    parse: u64,
    /// From the statement at Bind, or the portal's own Describe.
    shape: Shape,
    /// The portal was described itself: its description carries the
    /// result formats already.
    own: bool,
    formats: Vec<i16>,
    plan: Option<CachedPlan>,
}

/// Whether two commands' results have the same lineage (a reused plan
/// must mask the same derived columns).
fn same_lineage(a: Option<&Arc<Lineage>>, b: Option<&Arc<Lineage>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

/// Accounting of the command whose results are streaming.
#[derive(Default)]
struct Tally {
    rows: u64,
    bytes: u64,
    masked: u64,
    masked_columns: BTreeSet<String>,
}

pub(super) struct Backend<'s> {
    svc: &'s Service,
    session: &'s Session,
    catalog: &'s tokio::sync::Mutex<Catalog>,
    queue: VecDeque<Pending>,
    /// Index of the running statement within a simple Query at the head.
    statement: usize,
    /// Transaction status from the last ReadyForQuery.
    status: u8,
    result: Option<ResultMask>,
    last_planned: Option<Planned>,
    copy: Option<CopyOut>,
    /// Prepared statements and portals of the session, as the server
    /// answered their Parse, Bind, Describe and Close.
    statements: HashMap<Bytes, StatementState>,
    portals: HashMap<Bytes, PortalState>,
    /// Parses completed so far (numbers [`StatementState::parse`]).
    parses: u64,
    tally: Tally,
    /// Where to cancel the server's running query (a denied row gate).
    cancel: Option<CancelTarget>,
    /// The current command's results were denied past its row threshold:
    /// the client has its error; everything up to ReadyForQuery is dropped.
    discarding: bool,
    /// The current command's status when loopgate ended its results
    /// (a denied gate, refused COPY data).
    forced_status: Option<&'static str>,
    /// Results of commands finished since the last write to the client:
    /// recorded right after that write, so chaining them (encoding and
    /// hashing) does not hold up the reply; on drop for whatever is left.
    results: Vec<Event>,
}

impl Drop for Backend<'_> {
    /// However the session ends — including the frontend finishing first
    /// and the backend's future being dropped mid-write — what finished is
    /// recorded.
    fn drop(&mut self) {
        self.abandon();
        self.record_results();
    }
}

/// Results kept back at most, whatever the client's reads (a long pipeline).
const MAX_UNRECORDED: usize = 64;

impl<'s> Backend<'s> {
    pub fn new(
        svc: &'s Service,
        session: &'s Session,
        catalog: &'s tokio::sync::Mutex<Catalog>,
        cancel: Option<CancelTarget>,
    ) -> Self {
        Backend {
            svc,
            session,
            catalog,
            queue: VecDeque::new(),
            statement: 0,
            status: b'I',
            result: None,
            last_planned: None,
            copy: None,
            statements: HashMap::new(),
            portals: HashMap::new(),
            parses: 0,
            tally: Tally::default(),
            cancel,
            discarding: false,
            forced_status: None,
            results: Vec::new(),
        }
    }

    pub async fn run<R, W>(
        mut self,
        server: &mut R,
        mut buf: BytesMut,
        client: &mut W,
        mut pending: mpsc::Receiver<Pending>,
    ) -> Result<(), SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = BytesMut::new();
        let mut frontend_open = true;
        loop {
            self.deliver_replies(&mut out);
            if !out.is_empty() && !frame::has_complete_frame(&buf) {
                self.flush(client, &mut out).await?;
            }
            tokio::select! {
                biased;
                p = pending.recv(), if frontend_open => match p {
                    Some(p) => self.queue.push_back(p),
                    None => frontend_open = false,
                },
                frame = frame::read_frame(server, &mut buf, true, MAX_MESSAGE) => match frame? {
                    Some(frame) => {
                        if self.at_gate(&frame) {
                            self.pause(client, &mut out).await?;
                        }
                        self.on_message(frame, &mut out).await?;
                    }
                    None => return self.flush(client, &mut out).await,
                },
            }
        }
    }

    /// Writes `out` to the client, then records the results it completed.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, client: &mut W, out: &mut BytesMut) -> Result<(), SessionError> {
        self.session.add_to_client(out.len());
        client.write_all(out).await?;
        out.clear();
        self.record_results();
        Ok(())
    }

    /// Sends the replies loopgate made that are due: those at the head of
    /// the queue, with nothing from the server owed before them.
    fn deliver_replies(&mut self, out: &mut BytesMut) {
        while let Some(Pending::Reply { .. }) = self.queue.front() {
            if let Some(Pending::Reply { bytes, ready }) = self.queue.pop_front() {
                out.extend_from_slice(&bytes);
                if ready {
                    out.extend_from_slice(&wire::ready_for_query(self.status));
                }
            }
        }
    }

    async fn on_message(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), SessionError> {
        let start = out.len();
        let tag = frame.tag.unwrap_or(0);
        match tag {
            b'T' => {
                if let Some(Pending::Describe { .. }) = self.queue.front() {
                    self.described(&frame, out).await?;
                } else {
                    self.describe(&frame, out).await?;
                }
            }
            b'n' => self.described(&frame, out).await?,
            b't' => {
                if !matches!(self.queue.front(), Some(Pending::Describe { forward: false, .. })) {
                    out.extend_from_slice(&frame.bytes);
                }
            }
            b'1' | b'2' | b'3' => {
                self.completed(tag);
                out.extend_from_slice(&frame.bytes);
            }
            b'D' => {
                self.tally.rows += 1;
                let columns = frame::peek_i16(frame.body()).unwrap_or(0).max(0) as usize;
                if self.result.as_ref().is_none_or(|m| m.width() != columns) {
                    self.result = Some(self.plan_execute(columns));
                }
                if let Some(mask) = self.result.as_mut()
                    && !mask.data_row(&frame, out).map_err(SessionError::Protocol)?
                {
                    out.extend_from_slice(&frame.bytes);
                }
            }
            b'C' => {
                self.tally.rows = rows_of(&frame).unwrap_or(self.tally.rows);
                out.extend_from_slice(&frame.bytes);
                self.finish("ok", None);
            }
            b'I' => {
                out.extend_from_slice(&frame.bytes);
                self.finish("ok", None);
            }
            b's' => {
                out.extend_from_slice(&frame.bytes);
                self.finish("suspended", None);
            }
            b'E' => {
                let code = rows::error_code(&frame);
                let masked = rows::server_message(&self.svc.masker, &frame).map_err(SessionError::Protocol)?;
                out.extend_from_slice(masked.as_deref().unwrap_or(&frame.bytes));
                self.finish("error", code);
                self.skip_after_error();
            }
            b'N' => {
                let masked = rows::server_message(&self.svc.masker, &frame).map_err(SessionError::Protocol)?;
                out.extend_from_slice(masked.as_deref().unwrap_or(&frame.bytes));
            }
            b'Z' => {
                self.status = frame.body().first().copied().unwrap_or(b'I');
                out.extend_from_slice(&frame.bytes);
                self.ready();
            }
            b'H' => self.copy_out_start(&frame, out),
            b'd' => self.copy_data(&frame, out),
            b'c' => {
                if let Some(Err(e)) = self.copy.as_ref().map(CopyOut::done) {
                    self.refuse_copy(&e, out);
                } else {
                    out.extend_from_slice(&frame.bytes);
                }
            }
            b'A' => self.notification(&frame, out)?,
            b'S' | b'G' | b'W' | b'K' => out.extend_from_slice(&frame.bytes),
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected server message type {:?}",
                    other as char
                )));
            }
        }
        if self.discarding {
            // Still accounted above (the queue stays in step); not sent.
            if tag == b'Z' {
                self.discarding = false;
            } else {
                out.truncate(start);
            }
        }
        self.tally.bytes += (out.len() - start) as u64;
        Ok(())
    }

    /// Whether `frame` is a result row past the current command's row
    /// threshold, not yet approved.
    fn at_gate(&self, frame: &Frame) -> bool {
        let row = match frame.tag {
            Some(b'D') => true,
            Some(b'd') => self.copy.is_some(),
            _ => false,
        };
        row && !self.discarding
            && self.current().and_then(|c| c.gate.as_ref()).is_some_and(|g| {
                !g.progress.approved.load(Ordering::Relaxed)
                    && g.progress.rows.load(Ordering::Relaxed) + self.tally.rows >= g.threshold
            })
    }

    /// Pauses the results at the row threshold: the rows so far reach the
    /// client, then nothing is read from the server (TCP backpressure holds
    /// the query) until approval. Approved, streaming resumes; otherwise the
    /// server's query is cancelled and the client gets the reason.
    async fn pause<W: AsyncWrite + Unpin>(&mut self, client: &mut W, out: &mut BytesMut) -> Result<(), SessionError> {
        let Some(gate) = self.current_mut().and_then(|c| c.gate.take()) else {
            return Ok(());
        };
        let mut request = gate.request;
        request.rows_sent = Some(gate.progress.rows.load(Ordering::Relaxed) + self.tally.rows);
        let (code, why) = match self.svc.enforcer.request(request).await {
            Ok(mut ticket) => {
                let (message, hint) = ticket.view().notice();
                out.extend_from_slice(&wire::notice(&message, &hint));
                self.flush(client, out).await?;
                let resolution = ticket.wait().await;
                if resolution.is_approved() {
                    gate.progress.approved.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                (
                    wire::unapproved_code(&resolution),
                    resolution.refusal(&ticket.view().id),
                )
            }
            Err(e) => {
                tracing::error!(session = %self.session.id, error = %e, "cannot hold results for approval");
                let why = format!("loopgate: these results need approval, which cannot be requested now ({e})");
                (sqlstate::QUERY_CANCELED, why)
            }
        };
        let message = format!("{why}; the rest of the result was withheld and the query cancelled");
        out.extend_from_slice(&wire::error(code, &message));
        self.discarding = true;
        self.forced_status = Some("denied");
        if let Some(target) = self.cancel.clone() {
            // Cancelled in the background: the server side must keep
            // draining meanwhile.
            tokio::spawn(async move {
                if let Err(e) = target.send().await {
                    tracing::warn!(error = %e, "could not cancel a denied query");
                }
            });
        }
        Ok(())
    }

    /// A RowDescription decoded, and its columns as the real `table.column`
    /// they come from (through the catalog).
    async fn real_columns(
        catalog: &tokio::sync::Mutex<Catalog>,
        svc: &Service,
        frame: &Frame,
    ) -> Result<(RowDescription, Vec<Column>), SessionError> {
        let desc = rows::decode_description(frame).map_err(SessionError::Protocol)?;
        let fields: Vec<(String, u32, i16)> = desc
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.table_id as u32, f.column_id))
            .collect();
        let columns = catalog.lock().await.resolve(&svc.tables, &fields).await;
        Ok((desc, columns))
    }

    /// A RowDescription: resolves its columns to the real `table.column`
    /// (so an alias cannot dodge a rule), plans masking, and forwards it.
    async fn describe(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SessionError> {
        let overrides = self.current().map_or(&[][..], |c| &c.mask[..]);
        let lineage = self.current().and_then(|c| c.lineage.clone());
        if let Some(p) = &self.last_planned
            && p.at.elapsed() < PLAN_REUSE
            && p.description == frame.bytes
            && p.overrides == overrides
            && same_lineage(p.lineage.as_ref(), lineage.as_ref())
        {
            self.result = Some(p.mask.fresh());
            out.extend_from_slice(p.rewritten.as_deref().unwrap_or(&frame.bytes));
            return Ok(());
        }
        let command_overrides = overrides.to_vec();
        let (desc, columns) = Self::real_columns(self.catalog, self.svc, frame).await?;
        let overrides = [
            &command_overrides[..],
            &[MaskRule::new(rows::UNRESOLVED, MaskAction::Redact)],
        ]
        .concat();
        let (mask, rewritten) =
            ResultMask::from_description(&self.svc.masker, desc, &columns, &overrides, lineage.as_deref())
                .map_err(SessionError::Protocol)?;
        out.extend_from_slice(rewritten.as_deref().unwrap_or(&frame.bytes));
        self.last_planned = Some(Planned {
            description: frame.bytes.clone().freeze(),
            overrides: command_overrides,
            lineage,
            mask: mask.fresh(),
            rewritten,
            at: Instant::now(),
        });
        self.result = Some(mask);
        Ok(())
    }

    /// The command whose results are arriving.
    fn current(&self) -> Option<&Command> {
        match self.queue.front()? {
            Pending::Query(commands) => commands.get(self.statement),
            Pending::Execute(c) => Some(c),
            _ => None,
        }
    }

    fn current_mut(&mut self) -> Option<&mut Command> {
        match self.queue.front_mut()? {
            Pending::Query(commands) => commands.get_mut(self.statement),
            Pending::Execute(c) => Some(c),
            _ => None,
        }
    }

    /// Records the result of the current command and moves to the next.
    fn finish(&mut self, status: &str, error_code: Option<String>) {
        let status = self.forced_status.take().unwrap_or(status);
        let tally = std::mem::take(&mut self.tally);
        let (mut masked, mut columns) = (tally.masked, tally.masked_columns);
        let copy = self.copy.take().map(CopyOut::into_mask);
        for mask in [self.result.take(), copy].into_iter().flatten() {
            mask.masked_columns(&mut columns);
            masked += mask.masked_count();
        }
        let outcome = Outcome {
            status: Some(status.to_owned()),
            rows: Some(tally.rows),
            bytes_to_client: Some(tally.bytes),
            bytes_to_server: None,
            error_code,
            masked_fields: columns.into_iter().collect(),
            masked_count: Some(masked),
        };
        if let Some(gate) = self.current().and_then(|c| c.gate.as_ref()) {
            gate.progress.rows.fetch_add(tally.rows, Ordering::Relaxed);
        }
        match self.queue.front() {
            Some(Pending::Query(commands)) => {
                if let Some(c) = commands.get(self.statement) {
                    keep_result(&mut self.results, self.session, c, outcome);
                }
                self.statement = self.statement.saturating_add(1);
            }
            Some(Pending::Execute(_)) => {
                if let Some(Pending::Execute(c)) = self.queue.pop_front() {
                    keep_result(&mut self.results, self.session, &c, outcome);
                }
            }
            _ => {}
        }
    }

    /// After a server error: the rest of a simple Query does not run, and
    /// in the extended protocol the server skips everything up to Sync.
    fn skip_after_error(&mut self) {
        if let Some(Pending::Query(commands)) = self.queue.front() {
            for c in commands.iter().skip(self.statement) {
                keep_result(&mut self.results, self.session, c, skipped());
            }
            self.statement = usize::MAX;
            return;
        }
        while let Some(front) = self.queue.front() {
            match front {
                Pending::Sync | Pending::Query(_) => break,
                Pending::Execute(c) => {
                    keep_result(&mut self.results, self.session, c, skipped());
                }
                // Whether the server got to these is not known: what they
                // named is forgotten, so its rows are described again.
                Pending::Parse { statement } => {
                    self.statements.remove(statement);
                }
                Pending::Bind { portal, .. } => {
                    self.portals.remove(portal);
                }
                Pending::Describe { target, .. } | Pending::Close(target) => self.forget(&target.clone()),
                Pending::Reply { .. } => {}
            }
            self.queue.pop_front();
        }
    }

    fn forget(&mut self, target: &Target) {
        match target {
            Target::Statement(name) => {
                self.statements.remove(name);
            }
            Target::Portal(name) => {
                self.portals.remove(name);
            }
        }
    }

    /// ParseComplete, BindComplete or CloseComplete: what the message at
    /// the head of the queue set up or closed now exists or is gone.
    fn completed(&mut self, tag: u8) {
        let expected = matches!(
            (tag, self.queue.front()),
            (b'1', Some(Pending::Parse { .. })) | (b'2', Some(Pending::Bind { .. })) | (b'3', Some(Pending::Close(_)))
        );
        if !expected {
            tracing::warn!(session = %self.session.id, tag = %(tag as char), "server answer out of step with the queue");
            return;
        }
        match self.queue.pop_front() {
            Some(Pending::Parse { statement }) => {
                self.parses += 1;
                self.statements.insert(
                    statement,
                    StatementState {
                        parse: self.parses,
                        shape: Shape::Unknown,
                        plan: None,
                    },
                );
            }
            Some(Pending::Bind {
                portal,
                statement,
                formats,
            }) => {
                let (shape, parse) = self
                    .statements
                    .get(&statement)
                    .map_or((Shape::Unknown, 0), |s| (s.shape.clone(), s.parse));
                self.portals.insert(
                    portal,
                    PortalState {
                        statement,
                        parse,
                        shape,
                        own: false,
                        formats,
                        plan: None,
                    },
                );
            }
            Some(Pending::Close(target)) => self.forget(&target),
            _ => {}
        }
    }

    /// The answer to a Describe (RowDescription or NoData): kept for the
    /// statement or portal; forwarded unless loopgate asked.
    async fn described(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SessionError> {
        let Some(Pending::Describe { target, forward }) = self.queue.front() else {
            out.extend_from_slice(&frame.bytes);
            return Ok(());
        };
        let (target, forward) = (target.clone(), *forward);
        self.queue.pop_front();
        let shape = match frame.tag {
            Some(b'T') => {
                let (_, columns) = Self::real_columns(self.catalog, self.svc, frame).await?;
                let description = frame.bytes.clone().freeze();
                Shape::Rows(Arc::new(Described { description, columns }))
            }
            _ => Shape::NoData,
        };
        if forward {
            out.extend_from_slice(&frame.bytes);
        }
        match target {
            Target::Statement(name) => {
                // Described again: the same statement, a fresh plan.
                let parse = self.statements.get(&name).map_or(0, |s| s.parse);
                self.statements.insert(
                    name,
                    StatementState {
                        parse,
                        shape,
                        plan: None,
                    },
                );
            }
            Target::Portal(name) => {
                if let Some(p) = self.portals.get_mut(&name) {
                    p.shape = shape;
                    p.own = true;
                    p.plan = None;
                }
            }
        }
        Ok(())
    }

    /// The masking plan of the rows now arriving for an Execute: its
    /// portal's description with the portal's formats. Rows whose columns
    /// loopgate does not know are withheld, never forwarded.
    fn plan_execute(&mut self, width: usize) -> ResultMask {
        let (portal, overrides) = match self.current() {
            Some(c) => (c.portal.clone(), c.mask.clone()),
            None => (None, Vec::new()),
        };
        let lineage = self.current().and_then(|c| c.lineage.clone());
        let planned = portal.and_then(|p| self.portal_plan(&p, &overrides, lineage));
        match planned {
            Some(mask) if mask.width() == width => mask,
            _ => {
                tracing::warn!(session = %self.session.id, "rows of a result whose columns are unknown: withheld");
                ResultMask::withheld(&self.svc.masker, width)
            }
        }
    }

    fn portal_plan(
        &mut self,
        portal: &[u8],
        overrides: &[MaskRule],
        lineage: Option<Arc<Lineage>>,
    ) -> Option<ResultMask> {
        let overrides_full = [overrides, &[MaskRule::new(rows::UNRESOLVED, MaskAction::Redact)]].concat();
        let p = self.portals.get_mut(portal)?;
        let fits = |c: &Option<CachedPlan>, formats: &[i16]| {
            c.as_ref()
                .filter(|c| {
                    c.formats == formats
                        && c.overrides == overrides
                        && same_lineage(c.lineage.as_ref(), lineage.as_ref())
                })
                .map(|c| c.mask.fresh())
        };
        if let Some(mask) = fits(&p.plan, &p.formats) {
            return Some(mask);
        }
        let Shape::Rows(described) = p.shape.clone() else {
            return None;
        };
        let parse = p.parse;
        if !p.own
            && let Some(mask) = self
                .statements
                .get(&p.statement)
                .filter(|s| parse != 0 && s.parse == parse)
                .and_then(|s| fits(&s.plan, &p.formats))
        {
            p.plan = Some(CachedPlan {
                formats: p.formats.clone(),
                overrides: overrides.to_vec(),
                lineage: lineage.clone(),
                mask: mask.fresh(),
            });
            return Some(mask);
        }
        let raw = Frame {
            tag: Some(b'T'),
            bytes: BytesMut::from(&described.description[..]),
        };
        let mut desc: RowDescription = match rows::decode_description(&raw) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(session = %self.session.id, error = %e, "cannot decode a kept description");
                return None;
            }
        };
        if !p.own {
            for (i, f) in desc.fields.iter_mut().enumerate() {
                f.format_code = match p.formats.len() {
                    0 => 0,
                    1 => p.formats[0],
                    _ => p.formats.get(i).copied().unwrap_or(0),
                };
            }
        }
        let planned = ResultMask::from_description(
            &self.svc.masker,
            desc,
            &described.columns,
            &overrides_full,
            lineage.as_deref(),
        );
        let (mask, _) = match planned {
            Ok(planned) => planned,
            Err(e) => {
                tracing::warn!(session = %self.session.id, error = %e, "cannot plan a portal's result");
                return None;
            }
        };
        let cached = || CachedPlan {
            formats: p.formats.clone(),
            overrides: overrides.to_vec(),
            lineage: lineage.clone(),
            mask: mask.fresh(),
        };
        if !p.own
            && let Some(s) = self.statements.get_mut(&p.statement)
            && parse != 0
            && s.parse == parse
        {
            s.plan = Some(cached());
        }
        p.plan = Some(cached());
        Some(mask)
    }

    /// When the session ends with commands unfinished (the client left
    /// mid-result, or the server closed): each gets its result record,
    /// with the rows and masking so far.
    fn abandon(&mut self) {
        if matches!(self.queue.front(), Some(Pending::Query(_) | Pending::Execute(_))) && self.current().is_some() {
            self.finish("abandoned", None);
        }
        while let Some(p) = self.queue.pop_front() {
            let commands = match p {
                Pending::Query(commands) => commands.into_iter().skip(std::mem::take(&mut self.statement)).collect(),
                Pending::Execute(c) => vec![c],
                _ => Vec::new(),
            };
            for c in &commands {
                let outcome = Outcome {
                    status: Some("abandoned".to_owned()),
                    rows: Some(0),
                    ..Outcome::default()
                };
                keep_result(&mut self.results, self.session, c, outcome);
            }
        }
    }

    /// Ends a COPY whose data cannot be masked: the client gets one error,
    /// and nothing more of this command (no CommandComplete).
    fn refuse_copy(&mut self, why: &str, out: &mut BytesMut) {
        tracing::warn!(session = %self.session.id, error = %why, "refusing COPY data");
        let message = format!("loopgate: this COPY's data cannot be masked ({why}); the rest was withheld");
        out.extend_from_slice(&wire::error(sqlstate::FEATURE_NOT_SUPPORTED, &message));
        self.discarding = true;
        self.forced_status = Some("refused");
        if let Some(target) = self.cancel.clone() {
            tokio::spawn(async move {
                if let Err(e) = target.send().await {
                    tracing::warn!(error = %e, "could not cancel a refused COPY");
                }
            });
        }
    }

    /// ReadyForQuery ends a simple Query or answers a Sync.
    fn ready(&mut self) {
        self.result = None;
        self.copy = None;
        if let Some(Pending::Query(commands)) = self.queue.front() {
            for c in commands.iter().skip(self.statement) {
                keep_result(&mut self.results, self.session, c, skipped());
            }
        }
        // Anything still owed before this point will not come.
        while let Some(p) = self.queue.pop_front() {
            match p {
                Pending::Query(_) | Pending::Sync => break,
                Pending::Execute(c) => keep_result(&mut self.results, self.session, &c, skipped()),
                _ => {}
            }
        }
        self.statement = 0;
    }

    fn copy_out_start(&mut self, frame: &Frame, out: &mut BytesMut) {
        let binary = frame.body().first() == Some(&1);
        let (columns, types, format, mut overrides, lineage) = self
            .current()
            .map(|c| {
                (
                    c.copy_columns.clone(),
                    c.copy_types.clone(),
                    c.copy_format.clone(),
                    c.mask.clone(),
                    c.lineage.clone(),
                )
            })
            .unwrap_or_default();
        overrides.push(MaskRule::new(rows::UNRESOLVED, MaskAction::Redact));
        out.extend_from_slice(&frame.bytes);
        let mask = ResultMask::for_copy(
            &self.svc.masker,
            &columns,
            &types,
            binary,
            &overrides,
            lineage.as_deref(),
        );
        match CopyOut::new(mask, format.as_ref(), binary) {
            Ok(copy) => self.copy = Some(copy),
            Err(e) => self.refuse_copy(&e, out),
        }
    }

    fn copy_data(&mut self, frame: &Frame, out: &mut BytesMut) {
        let Some(copy) = self.copy.as_mut() else {
            if !self.discarding {
                // COPY data outside a COPY loopgate saw start: withheld.
                self.refuse_copy("data without a CopyOutResponse", out);
            }
            return;
        };
        let mut data = Vec::with_capacity(frame.body().len() + 16);
        match copy.data(frame.body(), &mut data) {
            Ok(rows) => {
                self.tally.rows += rows;
                if !data.is_empty() {
                    frame::put_message(out, b'd', &data);
                }
            }
            Err(e) => self.refuse_copy(&e, out),
        }
    }

    fn notification(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SessionError> {
        let decoded = frame::decode(frame.bytes.clone(), &DecodeContext::default());
        let PgWireBackendMessage::NotificationResponse(mut n) = decoded? else {
            return Err(SessionError::Protocol("expected a NotificationResponse".into()));
        };
        match self.svc.masker.mask_free_text(&n.payload) {
            std::borrow::Cow::Borrowed(_) => out.extend_from_slice(&frame.bytes),
            std::borrow::Cow::Owned(masked) => {
                n.payload = masked;
                n.encode(out).map_err(|e| SessionError::Protocol(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Records the kept results, without waiting for their write(2).
    fn record_results(&mut self) {
        submit_all(self.session, &mut self.results);
    }
}

/// Keeps `command`'s result in `results` for [`Backend::record_results`]
/// (a free function: callers hold the queue the command is in). The
/// command itself was recorded before it ran.
fn keep_result(results: &mut Vec<Event>, session: &Session, command: &Command, outcome: Outcome) {
    if command.event_id.is_nil() {
        return;
    }
    results.push(record::result(session, command, outcome));
    if results.len() >= MAX_UNRECORDED {
        submit_all(session, results);
    }
}

fn submit_all(session: &Session, results: &mut Vec<Event>) {
    for event in results.drain(..) {
        session.audit.submit(event);
    }
}

fn skipped() -> Outcome {
    Outcome {
        status: Some("skipped".to_owned()),
        ..Outcome::default()
    }
}

/// The row count at the end of a CommandComplete tag ("SELECT 5", "INSERT 0 5").
fn rows_of(frame: &Frame) -> Option<u64> {
    let (tag, _) = frame::cstr(frame.body())?;
    std::str::from_utf8(tag).ok()?.rsplit(' ').next()?.parse().ok()
}
