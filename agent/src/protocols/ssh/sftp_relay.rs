//! An SFTP channel operation by operation: client packets are framed
//! (`sftp.rs`), each file operation goes to the enforcement point before
//! it reaches the server, and the server's reply records its result.
use std::collections::HashMap;

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf};

use super::{
    channel::{ClientTx, Counts, Ctx, Early, UpstreamTx, wait_for_approval, withdrawn},
    sftp::{self, Framer},
};
use crate::{
    audit::{CommandInfo, Outcome},
    enforce::{Admitted, Command, Refusal, Verdict},
    policy::Action,
};

/// The status of a relay that stopped because a record could not be written.
pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";

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
pub async fn relay(
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
                    let (message, hint) = held.notice_for("operation");
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
