//! One client channel, from open to close: a session channel's request
//! (exec, shell, subsystem) or a forward is decided at the enforcement
//! point, then relayed to an upstream channel of its own, or refused in
//! SSH's terms (a line on stderr and exit status 126; a forward's channel
//! is closed) while the connection stays usable for the next request.
use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig, server};

use super::{
    Service,
    command::{PtyRequest, Request, forward_info},
    output::StreamMasker,
    sftp::{self, Framer},
    upstream::Upstream,
};
use crate::{
    approval::Resolution,
    audit::{CommandInfo, Outcome},
    enforce::{self, Admitted, Caller, Command, Refusal, Verdict},
    policy::Action,
    session::Session,
};

/// The exit status of a command loopgate did not run (as a shell's
/// "found but not executable").
pub const REFUSED_STATUS: u32 = 126;
/// How long a partial output line waits for its end before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(25);
/// Data a client may send while its request waits for approval.
const MAX_EARLY_DATA: usize = 1 << 20;

type ClientTx = ChannelWriteHalf<server::Msg>;
type UpstreamTx = ChannelWriteHalf<russh::client::Msg>;

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
struct Early {
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    data: Vec<Bytes>,
    bytes: usize,
    eof: bool,
}

impl Early {
    fn data(&mut self, data: Bytes) {
        // Beyond the bound the client is sending a stream, not keystrokes;
        // what does not fit is dropped rather than held in memory.
        if self.bytes + data.len() <= MAX_EARLY_DATA {
            self.bytes += data.len();
            self.data.push(data);
        }
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
                if unrelayed(ctx, "agent", "", 0).await == ChannelEnd::AuditUnavailable {
                    return ChannelEnd::AuditUnavailable;
                }
                continue;
            }
            Some(ChannelMsg::RequestX11 { .. }) => {
                if unrelayed(ctx, "x11", "", 0).await == ChannelEnd::AuditUnavailable {
                    return ChannelEnd::AuditUnavailable;
                }
                continue;
            }
            Some(ChannelMsg::Data { data }) => {
                early.data(data);
                continue;
            }
            Some(ChannelMsg::Eof) => {
                early.eof = true;
                continue;
            }
            Some(ChannelMsg::Exec { command, .. }) => Request::Exec(String::from_utf8_lossy(&command).into_owned()),
            Some(ChannelMsg::RequestShell { .. }) => Request::Shell,
            Some(ChannelMsg::RequestSubsystem { name, .. }) => Request::Subsystem(name),
            Some(_) => continue,
        };
        return run(ctx, &mut rx, &tx, request, early).await;
    }
}

/// Decides `request` and runs it upstream, or refuses it.
async fn run(ctx: &Ctx<'_>, rx: &mut ChannelReadHalf, tx: &ClientTx, request: Request, mut early: Early) -> ChannelEnd {
    let Ctx { svc, session, .. } = ctx;
    let newline = if early.pty.is_some() { "\r\n" } else { "\n" };
    let info = request.info(&svc.masker, early.pty.as_ref());
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
            let (message, hint) = held.notice();
            let message = message.replace("this statement waits", "this command waits");
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
    let outcome = relay(ctx, rx, tx, &request, early).await;
    // An SFTP operation that could not be recorded ends the session.
    let end = match outcome.status.as_deref() {
        Some(AUDIT_UNAVAILABLE) => ChannelEnd::AuditUnavailable,
        _ => ChannelEnd::Done,
    };
    svc.enforcer.finish(session, &admitted, outcome).await;
    end
}

/// The rule id of a refused unknown subsystem.
pub const UNKNOWN_SUBSYSTEM_RULE: &str = "loopgate.ssh_unknown_subsystem";
/// The rule id of a forward loopgate does not relay (agent, X11, `-R`).
pub const UNRELAYED_RULE: &str = "loopgate.ssh_forward_not_relayed";

/// Waits for the approval while watching the client; `None` when it left.
async fn wait_for_approval(
    rx: &mut ChannelReadHalf,
    held: &mut enforce::Held,
    early: &mut Early,
) -> Option<Resolution> {
    loop {
        tokio::select! {
            resolution = held.wait() => return Some(resolution),
            msg = rx.wait() => match msg {
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
fn withdrawn(session: &Session, admitted: &Admitted) {
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

/// Agent and X11 forwarding and `ssh -R` are recorded and decided, but
/// never relayed: even an allowed one is refused, saying so.
pub async fn unrelayed(ctx: &Ctx<'_>, channel: &str, host: &str, port: u16) -> ChannelEnd {
    let Ctx { svc, session, .. } = ctx;
    let info = forward_info(&svc.masker, channel, host, port);
    let action = Action::SshForward { channel, host, port };
    let verdict = svc.enforcer.begin(session, &ctx.caller, Command { action, info }).await;
    let refusal = Refusal {
        cause: enforce::Cause::Policy,
        rule_id: Some(UNRELAYED_RULE.to_owned()),
        reason: format!("{channel} forwarding is not relayed by loopgate"),
    };
    match verdict {
        Err(e) => {
            tracing::error!(session = %session.id, error = %e, "cannot record a refused SSH forward");
            return ChannelEnd::AuditUnavailable;
        }
        Ok(Verdict::Refused(_)) => {}
        Ok(Verdict::Forward(admitted)) => svc.enforcer.unrun(session, &admitted, &refusal),
        Ok(Verdict::Held { admitted, held }) => {
            drop(held);
            svc.enforcer.unrun(session, &admitted, &refusal);
        }
    }
    ChannelEnd::Done
}

/// A forward the client asked for.
pub struct Forward<'a> {
    /// `direct-tcpip` or `direct-streamlocal`.
    pub kind: &'a str,
    /// Host (or socket path) and port as the target sees them.
    pub host: &'a str,
    pub port: u16,
    pub originator: (&'a str, u32),
}

/// A forward channel (`direct-tcpip`, `direct-streamlocal`): decided, then
/// opened upstream and accepted, relayed byte for byte; or refused (the
/// client's "open failed: administratively prohibited").
pub async fn forward_channel(
    ctx: &Ctx<'_>,
    channel: russh::Channel<server::Msg>,
    reply: server::ChannelOpenHandle,
    forward: Forward<'_>,
) -> ChannelEnd {
    let Ctx { svc, session, .. } = ctx;
    let Forward {
        kind,
        host,
        port,
        originator,
    } = forward;
    let info = forward_info(&svc.masker, kind, host, port);
    let action = Action::SshForward {
        channel: kind,
        host,
        port,
    };
    let prohibited = russh::ChannelOpenFailure::AdministrativelyProhibited;
    let admitted = match svc.enforcer.begin(session, &ctx.caller, Command { action, info }).await {
        Err(e) => {
            tracing::error!(session = %session.id, error = %e, "cannot record a refused SSH forward");
            reply.reject(prohibited).await;
            return ChannelEnd::AuditUnavailable;
        }
        Ok(Verdict::Refused(_)) => {
            reply.reject(prohibited).await;
            return ChannelEnd::Done;
        }
        Ok(Verdict::Forward(admitted)) => admitted,
        Ok(Verdict::Held { admitted, mut held }) => {
            // No channel to tell the client on: the open waits.
            let resolution = held.wait().await;
            if let Err(refusal) = held.release(resolution) {
                svc.enforcer.unrun(session, &admitted, &refusal);
                reply.reject(prohibited).await;
                return ChannelEnd::Done;
            }
            admitted
        }
    };
    let opened = if kind == "direct-streamlocal" {
        ctx.upstream.channel_open_direct_streamlocal(host).await
    } else {
        ctx.upstream
            .channel_open_direct_tcpip(host, u32::from(port), originator.0, originator.1)
            .await
    };
    let outcome = match opened {
        Ok(up) => {
            reply.accept().await;
            let (mut rx, tx) = channel.split();
            let (mut up_rx, up_tx) = up.split();
            let outcome = pipe(session, &mut rx, &tx, &mut up_rx, &up_tx).await;
            let _ = tx.close().await;
            outcome
        }
        Err(e) => {
            tracing::info!(session = %session.id, error = %e, "the server refused a forward");
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            Outcome {
                status: Some("error".into()),
                error_code: Some("open_failed".into()),
                ..Outcome::default()
            }
        }
    };
    svc.enforcer.finish(session, &admitted, outcome).await;
    ChannelEnd::Done
}

/// Bytes both ways, unchanged, until either side closes.
async fn pipe(
    session: &Session,
    rx: &mut ChannelReadHalf,
    tx: &ClientTx,
    up_rx: &mut ChannelReadHalf,
    up_tx: &UpstreamTx,
) -> Outcome {
    let (mut to_server, mut to_client) = (0u64, 0u64);
    loop {
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    to_server += data.len() as u64;
                    session.add_to_server(data.len());
                    if up_tx.data_bytes(data).await.is_err() { break; }
                }
                Some(ChannelMsg::Eof) => { let _ = up_tx.eof().await; }
                None | Some(ChannelMsg::Close) => { let _ = up_tx.close().await; break; }
                Some(_) => {}
            },
            msg = up_rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    to_client += data.len() as u64;
                    session.add_to_client(data.len());
                    if tx.data_bytes(data).await.is_err() { break; }
                }
                Some(ChannelMsg::Eof) => { let _ = tx.eof().await; }
                None | Some(ChannelMsg::Close) => break,
                Some(_) => {}
            },
        }
    }
    Outcome {
        status: Some("ok".into()),
        bytes_to_client: Some(to_client),
        bytes_to_server: Some(to_server),
        ..Outcome::default()
    }
}

/// Opens the upstream channel for an admitted request, replays what the
/// client set up (pty, environment, early input) and relays both ways,
/// masking text output; the outcome carries the exit status.
async fn relay(ctx: &Ctx<'_>, rx: &mut ChannelReadHalf, tx: &ClientTx, request: &Request, early: Early) -> Outcome {
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
            return failed("open_failed");
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
        Request::Exec(command) => up_tx.exec(true, command.as_bytes()).await,
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
        return failed("request_failed");
    }
    if matches!(request, Request::Subsystem(name) if name == "sftp") {
        let outcome = sftp_relay(ctx, rx, tx, &mut up_rx, &up_tx, early).await;
        let _ = tx.close().await;
        return outcome;
    }
    for data in early.data {
        session.add_to_server(data.len());
        let _ = up_tx.data_bytes(data).await;
    }
    if early.eof {
        let _ = up_tx.eof().await;
    }

    let masking = svc.mask_output && request.output_is_text();
    let mut stdout = StreamMasker::new(svc.masker.clone());
    let mut stderr = StreamMasker::new(svc.masker.clone());
    let mut counts = Counts::default();
    let mut exit: Option<String> = None;
    let mut status = "closed";
    let client_id = tx.id();
    loop {
        let pending = masking && (stdout.has_pending() || stderr.has_pending());
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    counts.to_server += data.len() as u64;
                    session.add_to_server(data.len());
                    if up_tx.data_bytes(data).await.is_err() { break; }
                }
                Some(ChannelMsg::Eof) => { let _ = up_tx.eof().await; }
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
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
                    let out = if masking { stdout.push(&data) } else { data.to_vec() };
                    if send(session, tx, None, out, &mut counts).await.is_err() { break; }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    let out = if masking && ext == 1 { stderr.push(&data) } else { data.to_vec() };
                    if send(session, tx, Some(ext), out, &mut counts).await.is_err() { break; }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    flush(session, tx, &mut stdout, &mut stderr, &mut counts).await;
                    status = if exit_status == 0 { "ok" } else { "failed" };
                    exit = Some(format!("exit:{exit_status}"));
                    let _ = tx.exit_status(exit_status).await;
                }
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag }) => {
                    flush(session, tx, &mut stdout, &mut stderr, &mut counts).await;
                    status = "failed";
                    exit = Some(format!("signal:{}", signal_text(&signal_name)));
                    let _ = ctx.client.exit_signal_request(client_id, signal_name, core_dumped, error_message, lang_tag).await;
                }
                Some(ChannelMsg::Eof) => {
                    flush(session, tx, &mut stdout, &mut stderr, &mut counts).await;
                    let _ = tx.eof().await;
                }
                None | Some(ChannelMsg::Close) => {
                    flush(session, tx, &mut stdout, &mut stderr, &mut counts).await;
                    if exit.is_none() { status = "closed"; }
                    break;
                }
                Some(_) => {}
            },
            _ = tokio::time::sleep(FLUSH_AFTER), if pending => {
                flush(session, tx, &mut stdout, &mut stderr, &mut counts).await;
            }
        }
    }
    let _ = tx.close().await;
    Outcome {
        status: Some(status.to_owned()),
        bytes_to_client: Some(counts.to_client),
        bytes_to_server: Some(counts.to_server),
        error_code: exit,
        masked_count: masking.then_some(stdout.masked + stderr.masked),
        ..Outcome::default()
    }
}

#[derive(Default)]
struct Counts {
    to_client: u64,
    to_server: u64,
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

async fn flush(
    session: &Session,
    tx: &ClientTx,
    stdout: &mut StreamMasker,
    stderr: &mut StreamMasker,
    counts: &mut Counts,
) {
    let _ = send(session, tx, None, stdout.flush(), counts).await;
    let _ = send(session, tx, Some(1), stderr.flush(), counts).await;
}

fn signal_text(signal: &Sig) -> String {
    match signal {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// The status of a relay that stopped because a record could not be written.
const AUDIT_UNAVAILABLE: &str = "audit_unavailable";

/// Why an SFTP relay stopped early.
enum SftpStop {
    /// The client broke the SFTP protocol.
    Protocol(sftp::SftpError),
    /// An operation's record could not be written.
    Audit,
    /// The client or the server went away.
    Gone,
}

/// The SFTP requests of one channel: each operation loopgate decides
/// (opens, removals, renames, directories, attributes) goes to the
/// enforcement point and, once admitted, waits for the server's reply to
/// record its result; a refused one is answered with a STATUS
/// "permission denied" and never reaches the server.
async fn sftp_relay(
    ctx: &Ctx<'_>,
    rx: &mut ChannelReadHalf,
    tx: &ClientTx,
    up_rx: &mut ChannelReadHalf,
    up_tx: &UpstreamTx,
    early: Early,
) -> Outcome {
    let Ctx { svc, session, .. } = ctx;
    let mut relay = SftpRelay {
        ctx,
        from_client: Framer::default(),
        from_server: Framer::default(),
        pending: HashMap::new(),
        counts: Counts::default(),
        operations: 0,
    };
    let mut stop = None;
    for data in early.data {
        relay.counts.to_server += data.len() as u64;
        relay.from_client.push(&data);
    }
    if let Err(e) = relay.client_packets(rx, tx, up_tx).await {
        stop = Some(e);
    }
    if early.eof {
        let _ = up_tx.eof().await;
    }
    let mut server_framing = true;
    while stop.is_none() {
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    relay.counts.to_server += data.len() as u64;
                    relay.from_client.push(&data);
                    if let Err(e) = relay.client_packets(rx, tx, up_tx).await {
                        stop = Some(e);
                    }
                }
                Some(ChannelMsg::Eof) => { let _ = up_tx.eof().await; }
                None | Some(ChannelMsg::Close) => stop = Some(SftpStop::Gone),
                Some(_) => {}
            },
            msg = up_rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if server_framing {
                        relay.from_server.push(&data);
                        server_framing = relay.server_replies().await;
                    }
                    relay.counts.to_client += data.len() as u64;
                    session.add_to_client(data.len());
                    if tx.data_bytes(data).await.is_err() { stop = Some(SftpStop::Gone); }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => { let _ = tx.extended_data_bytes(ext, data).await; }
                Some(ChannelMsg::ExitStatus { exit_status }) => { let _ = tx.exit_status(exit_status).await; }
                Some(ChannelMsg::Eof) => { let _ = tx.eof().await; }
                None | Some(ChannelMsg::Close) => stop = Some(SftpStop::Gone),
                Some(_) => {}
            },
        }
    }
    let _ = up_tx.close().await;
    // Operations the server never answered: the session ended under them.
    for (_, admitted) in relay.pending.drain() {
        let outcome = Outcome {
            status: Some("closed".into()),
            ..Outcome::default()
        };
        svc.enforcer.finish(session, &admitted, outcome).await;
    }
    let status = match stop {
        Some(SftpStop::Protocol(e)) => {
            tracing::warn!(session = %session.id, error = %e, "closing an SFTP channel on a protocol error");
            "protocol_error"
        }
        Some(SftpStop::Audit) => AUDIT_UNAVAILABLE,
        _ => "ok",
    };
    Outcome {
        status: Some(status.into()),
        rows: Some(relay.operations),
        bytes_to_client: Some(relay.counts.to_client),
        bytes_to_server: Some(relay.counts.to_server),
        ..Outcome::default()
    }
}

struct SftpRelay<'c, 's> {
    ctx: &'c Ctx<'s>,
    from_client: Framer,
    from_server: Framer,
    /// Admitted operations by request id, until the server answers.
    pending: HashMap<u32, Admitted>,
    counts: Counts,
    /// Operations decided.
    operations: u64,
}

impl SftpRelay<'_, '_> {
    /// Decides and forwards every complete client packet.
    async fn client_packets(
        &mut self,
        rx: &mut ChannelReadHalf,
        tx: &ClientTx,
        up_tx: &UpstreamTx,
    ) -> Result<(), SftpStop> {
        let Ctx { svc, session, .. } = self.ctx;
        while let Some(packet) = self.from_client.next_packet().map_err(SftpStop::Protocol)? {
            let Some(op) = sftp::operation(&packet).map_err(SftpStop::Protocol)? else {
                session.add_to_server(packet.len());
                up_tx.data_bytes(packet).await.map_err(|_| SftpStop::Gone)?;
                continue;
            };
            self.operations += 1;
            let shown = match &op.to {
                Some(to) => format!("sftp {} {} {to}", op.name, op.path),
                None => format!("sftp {} {}", op.name, op.path),
            };
            let info = CommandInfo {
                text: Some(svc.masker.mask_free_text(&shown).into_owned()),
                kind: Some("ssh_sftp".to_owned()),
                ..CommandInfo::default()
            };
            let action = Action::SshSftp {
                operation: op.name,
                path: &op.path,
                to: op.to.as_deref(),
            };
            let refused =
                |refusal: &Refusal| sftp::status(op.id, sftp::FX_PERMISSION_DENIED, &refusal.message("operation"));
            let admitted = match svc
                .enforcer
                .begin(session, &self.ctx.caller, Command { action, info })
                .await
            {
                Err(e) => {
                    tracing::error!(session = %session.id, error = %e, "cannot record a refused SFTP operation");
                    return Err(SftpStop::Audit);
                }
                Ok(Verdict::Refused(refusal)) => {
                    tx.data_bytes(refused(&refusal)).await.map_err(|_| SftpStop::Gone)?;
                    continue;
                }
                Ok(Verdict::Forward(admitted)) => admitted,
                Ok(Verdict::Held { admitted, mut held }) => {
                    let (message, hint) = held.notice();
                    let message = message.replace("this statement waits", "this operation waits");
                    let _ = tx
                        .extended_data_bytes(1, Bytes::from(format!("{message}\n{hint}\n")))
                        .await;
                    let mut early = Early::default();
                    let resolution = wait_for_approval(rx, &mut held, &mut early).await;
                    for data in early.data {
                        self.counts.to_server += data.len() as u64;
                        self.from_client.push(&data);
                    }
                    let Some(resolution) = resolution else {
                        drop(held);
                        withdrawn(session, &admitted);
                        return Err(SftpStop::Gone);
                    };
                    if let Err(refusal) = held.release(resolution) {
                        svc.enforcer.unrun(session, &admitted, &refusal);
                        tx.data_bytes(refused(&refusal)).await.map_err(|_| SftpStop::Gone)?;
                        continue;
                    }
                    admitted
                }
            };
            self.pending.insert(op.id, admitted);
            session.add_to_server(packet.len());
            up_tx.data_bytes(packet).await.map_err(|_| SftpStop::Gone)?;
        }
        Ok(())
    }

    /// Records the results of admitted operations the server answered.
    /// `false` once the server's stream cannot be framed (it is relayed
    /// on, unread).
    async fn server_replies(&mut self) -> bool {
        let Ctx { svc, session, .. } = self.ctx;
        loop {
            let packet = match self.from_server.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => return true,
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "cannot frame the server's SFTP replies");
                    return false;
                }
            };
            let Some((id, code)) = sftp::reply(&packet) else {
                continue;
            };
            let Some(admitted) = self.pending.remove(&id) else {
                continue;
            };
            let outcome = Outcome {
                status: Some(if code == 0 { "ok" } else { "error" }.into()),
                error_code: (code != 0).then(|| format!("sftp:{code}")),
                ..Outcome::default()
            };
            svc.enforcer.finish(session, &admitted, outcome).await;
        }
    }
}
