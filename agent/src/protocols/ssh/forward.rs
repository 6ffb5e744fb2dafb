//! Forwards: `direct-tcpip` and `direct-streamlocal` channels decided
//! before their open is answered and then relayed byte for byte; agent and
//! X11 forwarding and `ssh -R`, which are decided and recorded but never
//! relayed.
use russh::{ChannelMsg, ChannelReadHalf, server};

use super::{
    channel::{ChannelEnd, ClientTx, Ctx, UpstreamTx},
    command::forward_info,
};
use crate::{
    audit::Outcome,
    enforce::{self, Command, Refusal, Verdict},
    policy::Action,
    session::Session,
};

/// The rule id of a forward loopgate does not relay (agent, X11, `-R`).
pub const UNRELAYED_RULE: &str = "loopgate.ssh_forward_not_relayed";

/// Agent and X11 forwarding and `ssh -R` are recorded and decided, but
/// never relayed: the client's request fails even when the policy allows
/// it, and the result is recorded as not run.
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
