//! One session channel, from open to close: its request (exec, shell,
//! subsystem) is decided at the enforcement point, then relayed to an
//! upstream channel of its own, or refused in SSH's terms (a line on
//! stderr and exit status 126) while the connection stays usable for the
//! next request. Forwards are in `forward.rs`, SFTP in `sftp_relay.rs`.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig, server};

use super::{
    Service,
    command::{PtyRequest, Request},
    upstream::Upstream,
};
use crate::{
    approval::Resolution,
    audit::typed::{Line, TypedLines},
    audit::{
        Outcome,
        cast::{Header, Recorder},
        recording::RecordingRef,
    },
    enforce::{self, Admitted, Caller, Command, Verdict},
    mask::stream::StreamMasker,
    session::Session,
};

/// The exit status of a command loopgate did not run (as a shell's
/// "found but not executable").
pub const REFUSED_STATUS: u32 = 126;
/// How long a partial output line waits for its end before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(25);
/// Input taken from a client while its request waits for approval;
/// beyond it the client is not read until the decision.
const MAX_EARLY_DATA: usize = 1 << 20;

pub(super) type ClientTx = ChannelWriteHalf<server::Msg>;
pub(super) type UpstreamTx = ChannelWriteHalf<russh::client::Msg>;

/// What every channel of one session shares.
#[derive(Clone)]
pub struct Ctx<'s> {
    pub svc: &'s Service,
    pub session: &'s Session,
    pub caller: Caller,
    pub upstream: Arc<Upstream>,
    pub client: server::Handle,
}

/// Whether a channel's work ended the session (its audit record could not
/// be written: nothing may go on unrecorded).
#[derive(Debug, PartialEq, Eq)]
pub enum ChannelEnd {
    Done,
    AuditUnavailable,
}

/// What the client sent before its request was decided or approved.
#[derive(Default)]
pub(super) struct Early {
    pub(super) pty: Option<PtyRequest>,
    pub(super) env: Vec<(String, String)>,
    pub(super) data: Vec<Bytes>,
    bytes: usize,
    pub(super) eof: bool,
}

impl Early {
    fn data(&mut self, data: Bytes) {
        self.bytes += data.len();
        self.data.push(data);
    }

    /// Whether no more input is taken while the request waits: the
    /// client's further input stays in SSH flow control (its window), so
    /// nothing is dropped and memory stays bounded.
    fn full(&self) -> bool {
        self.bytes >= MAX_EARLY_DATA
    }
}

/// Serves a session channel: waits for its request, decides it, relays it.
pub async fn session_channel(ctx: &Ctx<'_>, channel: russh::Channel<server::Msg>) -> ChannelEnd {
    let (mut rx, tx) = channel.split();
    let mut early = Early::default();
    loop {
        let request = match rx.wait().await {
            None | Some(ChannelMsg::Close) => return ChannelEnd::Done,
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            }) => {
                early.pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: terminal_modes,
                });
                continue;
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => {
                // Bounded: a client cannot grow the channel's state without end.
                if early.env.len() < MAX_ENV && variable_name.len() + variable_value.len() <= MAX_ENV_BYTES {
                    early.env.push((variable_name, variable_value));
                } else {
                    tracing::warn!(session = %ctx.session.id, "an SSH environment variable beyond loopgate's bound was not passed on");
                }
                continue;
            }
            Some(ChannelMsg::AgentForward { .. }) => {
                if super::forward::unrelayed(ctx, "agent", "", 0).await == ChannelEnd::AuditUnavailable {
                    return ChannelEnd::AuditUnavailable;
                }
                continue;
            }
            Some(ChannelMsg::RequestX11 { .. }) => {
                if super::forward::unrelayed(ctx, "x11", "", 0).await == ChannelEnd::AuditUnavailable {
                    return ChannelEnd::AuditUnavailable;
                }
                continue;
            }
            Some(ChannelMsg::Data { data }) => {
                // Input before any request is kept up to the bound, not
                // without one (no flow control holds it back here).
                if !early.full() {
                    early.data(data);
                }
                continue;
            }
            Some(ChannelMsg::Eof) => {
                early.eof = true;
                continue;
            }
            Some(ChannelMsg::Exec { command, .. }) => {
                let text = String::from_utf8_lossy(&command).into_owned();
                return run(ctx, &mut rx, &tx, Request::Exec(text), early, command).await;
            }
            Some(ChannelMsg::RequestShell { .. }) => Request::Shell,
            Some(ChannelMsg::RequestSubsystem { name, .. }) => Request::Subsystem(name),
            Some(_) => continue,
        };
        return run(ctx, &mut rx, &tx, request, early, Vec::new()).await;
    }
}

/// Decides `request` and runs it upstream, or refuses it. `raw` is an
/// exec's command as the client sent it (forwarded as is, even when it is
/// not UTF-8; the policy and the audit see its lossy text).
async fn run(
    ctx: &Ctx<'_>,
    rx: &mut ChannelReadHalf,
    tx: &ClientTx,
    request: Request,
    mut early: Early,
    raw: Vec<u8>,
) -> ChannelEnd {
    let Ctx { svc, session, .. } = ctx;
    let newline = if early.pty.is_some() { "\r\n" } else { "\n" };
    let info = request.info(&svc.masker, early.pty.as_ref());
    let title = info.text.clone().unwrap_or_default();
    let verdict = match request.action(early.pty.as_ref()) {
        Some(action) => svc.enforcer.begin(session, &ctx.caller, Command { action, info }).await,
        None => {
            let reason = "this subsystem is not known to loopgate and cannot be checked";
            svc.enforcer
                .refuse(session, info, UNKNOWN_SUBSYSTEM_RULE, reason)
                .await
                .map(Verdict::Refused)
        }
    };
    let admitted = match verdict {
        Err(e) => {
            tracing::error!(session = %session.id, error = %e, "cannot record a refused SSH request");
            let message = "loopgate: the audit trail is unavailable; the session is closed";
            refuse_on_channel(tx, &format!("{message}{newline}")).await;
            return ChannelEnd::AuditUnavailable;
        }
        Ok(Verdict::Refused(refusal)) => {
            refuse_on_channel(tx, &format!("{}{newline}", refusal.message("command"))).await;
            return ChannelEnd::Done;
        }
        Ok(Verdict::Forward(admitted)) => admitted,
        Ok(Verdict::Held { admitted, held }) => {
            match released(ctx, rx, tx, admitted, held, "command", newline, &mut early).await {
                Released::Run(admitted) => admitted,
                Released::Refused(refusal) => {
                    refuse_on_channel(tx, &format!("{}{newline}", refusal.message("command"))).await;
                    return ChannelEnd::Done;
                }
                Released::Gone => return ChannelEnd::Done,
            }
        }
    };
    let (outcome, recording) = relay(ctx, rx, tx, &request, early, raw, &title).await;
    // An SFTP operation that could not be recorded ends the session.
    let end = match outcome.status.as_deref() {
        Some(super::sftp_relay::AUDIT_UNAVAILABLE) => ChannelEnd::AuditUnavailable,
        _ => ChannelEnd::Done,
    };
    let mut result = admitted.result(session, outcome);
    if let (Some(r), Some(command)) = (recording, result.command.as_mut()) {
        command.parameters = r.to_parameters();
    }
    if let Err(e) = session.audit.append(result).await {
        tracing::error!(session = %session.id, error = %e, "could not record a command's result");
    }
    end
}

/// At most this many environment variables of a channel are passed on,
/// each at most this large (name and value).
const MAX_ENV: usize = 64;
const MAX_ENV_BYTES: usize = 8 * 1024;

/// The rule id of a refused unknown subsystem.
pub const UNKNOWN_SUBSYSTEM_RULE: &str = "loopgate.ssh_unknown_subsystem";

/// How a held request ended.
pub(super) enum Released {
    /// Approved: run it.
    Run(Admitted),
    /// Denied, timed out or not requestable (its result is recorded):
    /// tell the client.
    Refused(enforce::Refusal),
    /// The client left (the request is withdrawn and recorded so).
    Gone,
}

/// A held request: the client is told why it waits and the approval id
/// (on stderr, lines ended with `newline`), and it waits while input is
/// kept in `early`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn released(
    ctx: &Ctx<'_>,
    rx: &mut ChannelReadHalf,
    tx: &ClientTx,
    admitted: Admitted,
    mut held: Box<enforce::Held>,
    noun: &str,
    newline: &str,
    early: &mut Early,
) -> Released {
    let session = ctx.session;
    let (message, hint) = held.notice_for(noun);
    let notice = format!("{message}{newline}{hint}{newline}");
    let resolution = if tx.extended_data_bytes(1, Bytes::from(notice)).await.is_ok() {
        tracing::info!(session = %session.id, approval = held.id(), "SSH request held for approval");
        wait_for_approval(rx, &mut held, early).await
    } else {
        None
    };
    let Some(resolution) = resolution else {
        // The client left: dropping the hold withdraws the request.
        drop(held);
        withdrawn(session, &admitted);
        return Released::Gone;
    };
    match held.release(resolution) {
        Ok(()) => Released::Run(admitted),
        Err(refusal) => {
            ctx.svc.enforcer.unrun(session, &admitted, &refusal);
            Released::Refused(refusal)
        }
    }
}

/// Waits for the approval while watching the client; `None` when it left.
pub(super) async fn wait_for_approval(
    rx: &mut ChannelReadHalf,
    held: &mut enforce::Held,
    early: &mut Early,
) -> Option<Resolution> {
    loop {
        tokio::select! {
            resolution = held.wait() => return Some(resolution),
            msg = rx.wait(), if !early.full() => match msg {
                None | Some(ChannelMsg::Close) => return None,
                Some(ChannelMsg::Eof) => early.eof = true,
                Some(ChannelMsg::Data { data }) => early.data(data),
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                    if let Some(pty) = &mut early.pty {
                        (pty.cols, pty.rows, pty.pix_width, pty.pix_height) = (col_width, row_height, pix_width, pix_height);
                    }
                }
                Some(_) => {}
            },
        }
    }
}

/// The result of a held request whose client left before the decision.
pub(super) fn withdrawn(session: &Session, admitted: &Admitted) {
    let event = enforce::not_run(session, admitted.event_id, admitted.fingerprint.clone(), "withdrawn");
    session.audit.submit(event);
}

/// Tells the client why and ends the channel: stderr, exit status 126.
async fn refuse_on_channel(tx: &ClientTx, message: &str) {
    let _ = tx
        .extended_data_bytes(1, Bytes::copy_from_slice(message.as_bytes()))
        .await;
    let _ = tx.exit_status(REFUSED_STATUS).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

/// Opens the upstream channel for an admitted request, replays what the
/// client set up (pty, environment, early input) and relays both ways,
/// masking text output; the outcome carries the exit status, and the
/// recording of that masked output, when one was made.
async fn relay(
    ctx: &Ctx<'_>,
    rx: &mut ChannelReadHalf,
    tx: &ClientTx,
    request: &Request,
    early: Early,
    raw: Vec<u8>,
    title: &str,
) -> (Outcome, Option<RecordingRef>) {
    let Ctx { svc, session, .. } = ctx;
    let newline = if early.pty.is_some() { "\r\n" } else { "\n" };
    let failed = |code: &str| Outcome {
        status: Some("error".into()),
        error_code: Some(code.to_owned()),
        ..Outcome::default()
    };
    let masking = svc.mask_output && request.output_is_text();
    // The recording exists before the command runs: one that cannot be
    // written refuses the command (nothing runs unrecorded).
    let recorder = match masking.then(|| start_recording(ctx, tx, request, early.pty.as_ref(), title)) {
        Some(Err(())) => {
            let message =
                format!("loopgate: the session recording cannot be written, so the command was not run{newline}");
            refuse_on_channel(tx, &message).await;
            return (failed(RECORDING_FAILED), None);
        }
        Some(Ok(r)) => r,
        None => None,
    };
    let up = match ctx.upstream.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "the server refused a session channel");
            let message = format!("loopgate: the server refused the channel{newline}");
            refuse_on_channel(tx, &message).await;
            return (failed("open_failed"), None);
        }
    };
    let (mut up_rx, up_tx) = up.split();
    if let Some(p) = &early.pty {
        let _ = up_tx
            .request_pty(false, &p.term, p.cols, p.rows, p.pix_width, p.pix_height, &p.modes)
            .await;
    }
    for (name, value) in &early.env {
        let _ = up_tx.set_env(false, name.as_str(), value.as_str()).await;
    }
    let sent = match request {
        Request::Exec(_) => up_tx.exec(true, raw).await,
        Request::Shell => up_tx.request_shell(true).await,
        Request::Subsystem(name) => up_tx.request_subsystem(true, name.as_str()).await,
    };
    let mut accepted = sent.is_ok();
    while accepted {
        match up_rx.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | None => accepted = false,
            Some(_) => {}
        }
    }
    if !accepted {
        let message = format!("loopgate: the server refused the request{newline}");
        refuse_on_channel(tx, &message).await;
        let _ = up_tx.close().await;
        return (failed("request_failed"), None);
    }
    if matches!(request, Request::Subsystem(name) if name == "sftp") {
        let outcome = super::sftp_relay::relay(ctx, rx, tx, &mut up_rx, &up_tx, early).await;
        let _ = tx.close().await;
        return (outcome, None);
    }
    let mut out = Output {
        stdout: StreamMasker::new(svc.masker.clone()),
        stderr: StreamMasker::new(svc.masker.clone()),
        typed: matches!(request, Request::Shell).then(TypedLines::default),
        lines: Vec::new(),
        recorder,
        counts: Counts::default(),
    };
    for data in early.data {
        session.add_to_server(data.len());
        out.typed_input(&data);
        let _ = up_tx.data_bytes(data).await;
    }
    if early.eof {
        let _ = up_tx.eof().await;
    }

    let mut exit: Option<String> = None;
    let mut status = "closed";
    let client_id = tx.id();
    // Once the client closes (OpenSSH does once both sides sent EOF), the
    // server's exit status may still be on its way: it is relayed if it
    // comes within this long.
    let mut client_closed = false;
    let mut server_eof = false;
    let after_close = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(after_close);
    loop {
        let pending = out.has_pending(masking);
        tokio::select! {
            msg = rx.wait(), if !client_closed => match msg {
                Some(ChannelMsg::Data { data }) => {
                    out.counts.to_server += data.len() as u64;
                    session.add_to_server(data.len());
                    out.typed_input(&data);
                    if up_tx.data_bytes(data).await.is_err() { break; }
                }
                Some(ChannelMsg::Eof) => { let _ = up_tx.eof().await; }
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                    if let Some(r) = &mut out.recorder { r.resize(col_width, row_height); }
                    let _ = up_tx.window_change(col_width, row_height, pix_width, pix_height).await;
                }
                Some(ChannelMsg::Signal { signal }) => { let _ = up_tx.signal(signal).await; }
                Some(ChannelMsg::Close) => {
                    let _ = up_tx.close().await;
                    client_closed = true;
                    after_close.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                None => {
                    let _ = up_tx.close().await;
                    break;
                }
                Some(_) => {}
            },
            _ = &mut after_close, if client_closed => break,
            msg = up_rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    out.typed_output(&data);
                    let bytes = if masking { out.stdout.push(&data) } else { data.to_vec() };
                    if out.send(session, tx, None, bytes).await.is_err() { break; }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    // Every extended stream (stderr is 1; others are rare) goes
                    // through the stderr masker: none is relayed raw.
                    let bytes = if masking { out.stderr.push(&data) } else { data.to_vec() };
                    if out.send(session, tx, Some(ext), bytes).await.is_err() { break; }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    out.flush(session, tx).await;
                    status = if exit_status == 0 { "ok" } else { "failed" };
                    exit = Some(format!("exit:{exit_status}"));
                    let _ = tx.exit_status(exit_status).await;
                    if std::mem::take(&mut server_eof) { let _ = tx.eof().await; }
                }
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag }) => {
                    out.flush(session, tx).await;
                    status = "failed";
                    exit = Some(format!("signal:{}", signal_text(&signal_name)));
                    let _ = ctx.client.exit_signal_request(client_id, signal_name, core_dumped, error_message, lang_tag).await;
                    if std::mem::take(&mut server_eof) { let _ = tx.eof().await; }
                }
                // sshd sends EOF before the exit status: passed on at once,
                // the client (EOF both ways) may close before the status
                // reaches it through loopgate, and exit 255. It follows the
                // status instead (or the close).
                Some(ChannelMsg::Eof) => {
                    out.flush(session, tx).await;
                    server_eof = true;
                }
                None | Some(ChannelMsg::Close) => {
                    out.flush(session, tx).await;
                    if std::mem::take(&mut server_eof) { let _ = tx.eof().await; }
                    if exit.is_none() { status = "closed"; }
                    break;
                }
                Some(_) => {}
            },
            _ = tokio::time::sleep(FLUSH_AFTER), if pending => {
                out.flush(session, tx).await;
                out.expire_lines(false);
            }
        }
        record_typed_lines(ctx, &mut out);
        if out.recorder.as_ref().is_some_and(Recorder::failed) {
            // Output the recording cannot hold is not relayed on.
            let message =
                format!("\r\nloopgate: the session recording cannot be written; the channel is closed{newline}");
            let _ = tx.extended_data_bytes(1, Bytes::from(message)).await;
            let _ = up_tx.close().await;
            break;
        }
    }
    let _ = tx.close().await;
    out.expire_lines(true);
    record_typed_lines(ctx, &mut out);
    let recording = out.recorder.take().map(Recorder::finish);
    if matches!(recording, Some(None)) {
        status = RECORDING_FAILED;
    }
    let outcome = Outcome {
        status: Some(status.to_owned()),
        bytes_to_client: Some(out.counts.to_client),
        bytes_to_server: Some(out.counts.to_server),
        error_code: exit,
        masked_count: masking.then_some(out.stdout.masked + out.stderr.masked),
        ..Outcome::default()
    };
    (outcome, recording.flatten())
}

/// The status of a channel whose recording could not be written.
const RECORDING_FAILED: &str = "recording_failed";

/// Starts the recording of an exec or a shell, if the target records
/// (`Ok(None)` when it does not); `Err` when the file cannot be created.
fn start_recording(
    ctx: &Ctx<'_>,
    tx: &ClientTx,
    request: &Request,
    pty: Option<&PtyRequest>,
    title: &str,
) -> Result<Option<Recorder>, ()> {
    let Some(settings) = ctx.svc.recordings.as_ref() else {
        return Ok(None);
    };
    if matches!(request, Request::Subsystem(_)) {
        return Ok(None);
    }
    let header = Header {
        // A client without a terminal asks for a pty of 0x0.
        cols: pty.map(|p| p.cols).filter(|&c| c > 0).unwrap_or(80),
        rows: pty.map(|p| p.rows).filter(|&r| r > 0).unwrap_or(24),
        term: pty.map(|p| p.term.as_str()),
        title,
    };
    let channel = u32::from(tx.id());
    match Recorder::create(
        &settings.audit_dir,
        ctx.session.id,
        channel,
        settings.max_bytes,
        &header,
    ) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            tracing::error!(session = %ctx.session.id, error = %e, "cannot start an SSH recording");
            Err(())
        }
    }
}

/// A relayed channel's output side: masking per stream, the recording of
/// what the client was sent (and, for a shell, the lines typed), the byte
/// counts.
struct Output {
    stdout: StreamMasker,
    stderr: StreamMasker,
    /// A shell's keystrokes, read back into lines (the server gets them as
    /// typed).
    typed: Option<TypedLines>,
    /// Lines read back, not yet recorded.
    lines: Vec<Line>,
    recorder: Option<Recorder>,
    counts: Counts,
}

impl Output {
    fn has_pending(&self, masking: bool) -> bool {
        let typed = self.typed.as_ref().is_some_and(TypedLines::has_pending);
        typed || masking && (self.stdout.has_pending() || self.stderr.has_pending())
    }

    fn typed_input(&mut self, data: &[u8]) {
        if let Some(t) = &mut self.typed {
            t.input(data);
        }
    }

    /// The server's output before masking: a typed line's echo is what was
    /// typed (kept in memory only; the line is recorded masked).
    fn typed_output(&mut self, data: &[u8]) {
        if let Some(t) = &mut self.typed {
            self.lines.extend(t.output(data));
        }
    }

    fn expire_lines(&mut self, all: bool) {
        if let Some(t) = &mut self.typed {
            self.lines.extend(t.expired(Instant::now(), all));
        }
    }

    async fn send(
        &mut self,
        session: &Session,
        tx: &ClientTx,
        ext: Option<u32>,
        bytes: Vec<u8>,
    ) -> Result<(), russh::Error> {
        if let Some(r) = &mut self.recorder {
            r.output(&bytes);
        }
        send(session, tx, ext, bytes, &mut self.counts).await
    }

    async fn flush(&mut self, session: &Session, tx: &ClientTx) {
        let stdout = self.stdout.flush();
        let stderr = self.stderr.flush();
        let _ = self.send(session, tx, None, stdout).await;
        let _ = self.send(session, tx, Some(1), stderr).await;
    }
}

/// Records the lines typed into a shell that were read back: a `command`
/// event each (kind `ssh_shell_line`, an audit aid under the shell's
/// decision, not decided itself) and the recording's input.
fn record_typed_lines(ctx: &Ctx<'_>, out: &mut Output) {
    for line in out.lines.drain(..) {
        let text = ctx.svc.masker.mask_free_text(&line.shown()).into_owned();
        if let Some(r) = &mut out.recorder {
            r.input(format!("{text}\r").as_bytes());
        }
        ctx.session
            .audit
            .submit(super::command::typed_line_event(ctx.session, text, line.approximate));
    }
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) to_client: u64,
    pub(super) to_server: u64,
}

async fn send(
    session: &Session,
    tx: &ClientTx,
    ext: Option<u32>,
    bytes: Vec<u8>,
    counts: &mut Counts,
) -> Result<(), russh::Error> {
    if bytes.is_empty() {
        return Ok(());
    }
    counts.to_client += bytes.len() as u64;
    session.add_to_client(bytes.len());
    match ext {
        None => tx.data_bytes(bytes).await,
        Some(ext) => tx.extended_data_bytes(ext, bytes).await,
    }
}

fn signal_text(signal: &Sig) -> String {
    match signal {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}
