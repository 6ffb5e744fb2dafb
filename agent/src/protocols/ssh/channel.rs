//! One session channel, from open to close: its request (exec, shell,
//! subsystem) is decided at the enforcement point, then relayed to an
//! upstream channel of its own, or refused in SSH's terms (a line on
//! stderr and exit status 126) while the connection stays usable for the
//! next request. Forwards are in `forward.rs`, SFTP in `sftp_relay.rs`.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig, server};

use super::{
    Service,
    command::{PtyRequest, Request},
    upstream::Upstream,
};
use crate::{
    approval::Resolution,
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
                early.env.push((variable_name, variable_value));
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
        Ok(Verdict::Held { admitted, mut held }) => {
            let (message, hint) = held.notice_for("command");
            let notice = format!("{message}{newline}{hint}{newline}");
            if tx.extended_data_bytes(1, Bytes::from(notice)).await.is_err() {
                return ChannelEnd::Done;
            }
            tracing::info!(session = %session.id, approval = held.id(), "SSH request held for approval");
            let resolution = wait_for_approval(rx, &mut held, &mut early).await;
            let Some(resolution) = resolution else {
                // The client left: dropping the hold withdraws the request.
                drop(held);
                withdrawn(session, &admitted);
                return ChannelEnd::Done;
            };
            if let Err(refusal) = held.release(resolution) {
                svc.enforcer.unrun(session, &admitted, &refusal);
                refuse_on_channel(tx, &format!("{}{newline}", refusal.message("command"))).await;
                return ChannelEnd::Done;
            }
            admitted
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

/// The rule id of a refused unknown subsystem.
pub const UNKNOWN_SUBSYSTEM_RULE: &str = "loopgate.ssh_unknown_subsystem";

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
    let masking = svc.mask_output && request.output_is_text();
    let mut out = Output {
        stdout: StreamMasker::new(svc.masker.clone()),
        stderr: StreamMasker::new(svc.masker.clone()),
        input: StreamMasker::new(svc.masker.clone()),
        recorder: if masking {
            start_recording(ctx, tx, request, early.pty.as_ref(), title)
        } else {
            None
        },
        record_input: matches!(request, Request::Shell),
        counts: Counts::default(),
    };
    for data in early.data {
        session.add_to_server(data.len());
        out.record_input(&data);
        let _ = up_tx.data_bytes(data).await;
    }
    if early.eof {
        let _ = up_tx.eof().await;
    }

    let mut exit: Option<String> = None;
    let mut status = "closed";
    let client_id = tx.id();
    loop {
        let pending = out.has_pending(masking);
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    out.counts.to_server += data.len() as u64;
                    session.add_to_server(data.len());
                    out.record_input(&data);
                    if up_tx.data_bytes(data).await.is_err() { break; }
                }
                Some(ChannelMsg::Eof) => { let _ = up_tx.eof().await; }
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                    if let Some(r) = &mut out.recorder { r.resize(col_width, row_height); }
                    let _ = up_tx.window_change(col_width, row_height, pix_width, pix_height).await;
                }
                Some(ChannelMsg::Signal { signal }) => { let _ = up_tx.signal(signal).await; }
                None | Some(ChannelMsg::Close) => {
                    let _ = up_tx.close().await;
                    break;
                }
                Some(_) => {}
            },
            msg = up_rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
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
                }
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag }) => {
                    out.flush(session, tx).await;
                    status = "failed";
                    exit = Some(format!("signal:{}", signal_text(&signal_name)));
                    let _ = ctx.client.exit_signal_request(client_id, signal_name, core_dumped, error_message, lang_tag).await;
                }
                Some(ChannelMsg::Eof) => {
                    out.flush(session, tx).await;
                    let _ = tx.eof().await;
                }
                None | Some(ChannelMsg::Close) => {
                    out.flush(session, tx).await;
                    if exit.is_none() { status = "closed"; }
                    break;
                }
                Some(_) => {}
            },
            _ = tokio::time::sleep(FLUSH_AFTER), if pending => {
                out.flush(session, tx).await;
            }
        }
    }
    let _ = tx.close().await;
    let outcome = Outcome {
        status: Some(status.to_owned()),
        bytes_to_client: Some(out.counts.to_client),
        bytes_to_server: Some(out.counts.to_server),
        error_code: exit,
        masked_count: masking.then_some(out.stdout.masked + out.stderr.masked),
        ..Outcome::default()
    };
    out.flush_input();
    (outcome, out.recorder.and_then(Recorder::finish))
}

/// Starts the recording of an exec or a shell, if the target records; a
/// recording that cannot be created is logged and the channel goes on
/// (the audit still has the request and its result).
fn start_recording(
    ctx: &Ctx<'_>,
    tx: &ClientTx,
    request: &Request,
    pty: Option<&PtyRequest>,
    title: &str,
) -> Option<Recorder> {
    let settings = ctx.svc.recordings.as_ref()?;
    if matches!(request, Request::Subsystem(_)) {
        return None;
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
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(session = %ctx.session.id, error = %e, "cannot start an SSH recording");
            None
        }
    }
}

/// A relayed channel's output side: masking per stream, the recording of
/// what the client was sent (and, for a shell, typed), the byte counts.
struct Output {
    stdout: StreamMasker,
    stderr: StreamMasker,
    /// Input, masked for the recording only (the server gets it as typed).
    input: StreamMasker,
    recorder: Option<Recorder>,
    record_input: bool,
    counts: Counts,
}

impl Output {
    fn has_pending(&self, masking: bool) -> bool {
        masking && (self.stdout.has_pending() || self.stderr.has_pending() || self.input.has_pending())
    }

    fn record_input(&mut self, data: &[u8]) {
        if let Some(r) = self.recorder.as_mut().filter(|_| self.record_input) {
            r.input(&self.input.push(data));
        }
    }

    fn flush_input(&mut self) {
        if let Some(r) = self.recorder.as_mut().filter(|_| self.record_input) {
            r.input(&self.input.flush());
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
        self.flush_input();
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
