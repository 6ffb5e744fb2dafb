//! An SFTP channel operation by operation: client packets are framed
//! (`sftp.rs`), each file operation's paths are resolved (`sftp_path.rs`,
//! then through the server's links by `sftp_resolver.rs`) and go to the
//! enforcement point before it reaches the server, and the server's reply
//! records its result.
use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf};

use super::{
    channel::{ClientTx, Counts, Ctx, Early, Released, UpstreamTx, released},
    sftp::{self, Framer, Operation, Reply, ReplyScanner, Request},
    sftp_path::{self, Paths},
    sftp_resolver::{ResolveError, Resolver},
};
use crate::{
    audit::{CommandInfo, Outcome},
    enforce::{Admitted, Command, Refusal, Verdict},
    policy::Action,
    session::Session,
};

/// The status of a relay that stopped because a record could not be written.
pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";

/// An extension loopgate cannot decide is refused by this rule.
pub const UNSUPPORTED_RULE: &str = "loopgate.sftp_unsupported";
/// A request whose path cannot be resolved (relative with no working
/// directory known, not UTF-8, a handle loopgate did not see opened) or
/// whose id is still in flight is refused by this rule.
pub const UNRESOLVED_RULE: &str = "loopgate.sftp_unresolved";

/// The id of loopgate's own `REALPATH "."`, sent before any request of
/// the client's is forwarded (so no reply can be confused with it).
const PROBE_ID: u32 = u32::MAX;
/// How long the server has to answer it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an SFTP relay stopped early.
enum SftpStop {
    /// The client broke the SFTP protocol.
    Protocol(sftp::SftpError),
    /// An operation's record could not be written.
    Audit,
    /// The client or the server went away.
    Gone,
    /// The server did not say what the working directory is.
    Unanswered,
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
        from_server: ReplyScanner::default(),
        server_framing: true,
        own: Vec::new(),
        pending: HashMap::new(),
        paths: Paths::default(),
        resolver: Err("the SFTP session has not started".into()),
        counts: Counts::default(),
        operations: 0,
    };
    for data in early.data {
        relay.counts.to_server += data.len() as u64;
        relay.from_client.push(&data);
    }
    let mut stop = relay.start(rx, tx, up_rx, up_tx).await.err();
    if stop.is_none()
        && let Err(e) = relay.client_packets(rx, tx, up_rx, up_tx).await
    {
        stop = Some(e);
    }
    if early.eof {
        let _ = up_tx.eof().await;
    }
    while stop.is_none() {
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    relay.counts.to_server += data.len() as u64;
                    relay.from_client.push(&data);
                    if let Err(e) = relay.client_packets(rx, tx, up_rx, up_tx).await {
                        stop = Some(e);
                    }
                }
                Some(ChannelMsg::Eof) => { let _ = up_tx.eof().await; }
                None | Some(ChannelMsg::Close) => stop = Some(SftpStop::Gone),
                Some(_) => {}
            },
            msg = up_rx.wait() => if let Err(e) = relay.on_server_message(msg, tx).await {
                stop = Some(e);
            },
        }
    }
    let _ = up_tx.close().await;
    if let Ok(resolver) = relay.resolver {
        resolver.close().await;
    }
    // Operations the server never answered: the session ended under them.
    for (_, (admitted, _)) in relay.pending.drain() {
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
        Some(SftpStop::Unanswered) => {
            tracing::warn!(session = %session.id, "the SFTP server did not say its working directory");
            "server_unanswered"
        }
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
    /// The server's replies, read as they are relayed.
    from_server: ReplyScanner,
    /// `false` once the server's stream could not be read as SFTP: it is
    /// relayed on, unread.
    server_framing: bool,
    /// loopgate's own answers to the client (refusals), waiting for the
    /// end of the server's packet being relayed: one written between two
    /// chunks of a reply would break the client's stream.
    own: Vec<Bytes>,
    /// Admitted operations by request id, until the server answers, with
    /// the path an open is for (its handle will name it).
    pending: HashMap<u32, (Admitted, Option<String>)>,
    paths: Paths,
    /// Asks the server where paths lead; why not, when it cannot (every
    /// path operation is then refused).
    resolver: Result<Resolver, String>,
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
        up_rx: &mut ChannelReadHalf,
        up_tx: &UpstreamTx,
    ) -> Result<(), SftpStop> {
        let Ctx { svc, session, .. } = self.ctx;
        while let Some(packet) = self.from_client.next_packet().map_err(SftpStop::Protocol)? {
            let op = match sftp::request(&packet).map_err(SftpStop::Protocol)? {
                // The session has begun: a second INIT is no request.
                Request::Init => return Err(SftpStop::Protocol(sftp::SftpError::Malformed)),
                Request::Pass { id } | Request::Close { id, .. } if self.pending.contains_key(&id) => {
                    self.refuse_unchecked(tx, id, UNRESOLVED_RULE, "a request with the id of one in flight")
                        .await?;
                    continue;
                }
                Request::Close { handle, .. } => {
                    self.paths.closed(&handle);
                    forward(session, up_tx, packet).await?;
                    continue;
                }
                Request::Pass { .. } => {
                    forward(session, up_tx, packet).await?;
                    continue;
                }
                Request::NotUtf8 { id } => {
                    let reason = "a path that is not UTF-8 (what would be decided is not the file opened)";
                    self.refuse_unchecked(tx, id, UNRESOLVED_RULE, reason).await?;
                    continue;
                }
                Request::Unknown { id, extension } => {
                    let extension = svc.masker.mask_free_text(&extension).into_owned();
                    let reason = format!("the SFTP extension {extension:?} is not one loopgate can decide");
                    self.refuse_unchecked(tx, id, UNSUPPORTED_RULE, &reason).await?;
                    continue;
                }
                Request::Handle { id, name, handle } => match self.paths.of_handle(&handle) {
                    Some(path) => Operation {
                        id,
                        name,
                        path: path.to_owned(),
                        to: None,
                    },
                    None => {
                        self.refuse_unchecked(tx, id, UNRESOLVED_RULE, "a handle loopgate did not see opened")
                            .await?;
                        continue;
                    }
                },
                Request::Path(op) => match self.resolved(op.clone()) {
                    Ok(lexical) => match self.through_links(op, lexical, up_rx, tx).await? {
                        Ok(op) => op,
                        Err((id, reason)) => {
                            self.refuse_unchecked(tx, id, UNRESOLVED_RULE, &reason).await?;
                            continue;
                        }
                    },
                    Err(id) => {
                        let reason = "a relative path, and the server did not say the working directory";
                        self.refuse_unchecked(tx, id, UNRESOLVED_RULE, reason).await?;
                        continue;
                    }
                },
            };
            if self.pending.contains_key(&op.id) {
                self.refuse_unchecked(tx, op.id, UNRESOLVED_RULE, "a request with the id of one in flight")
                    .await?;
                continue;
            }
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
                    self.answer(tx, refused(&refusal)).await?;
                    continue;
                }
                Ok(Verdict::Forward(admitted)) => admitted,
                Ok(Verdict::Held { admitted, held }) => {
                    let mut early = Early::default();
                    let ctx = self.ctx;
                    let waiting = released(ctx, rx, tx, admitted, held, "operation", "\n", &mut early);
                    let released = self.relaying(up_rx, tx, waiting).await?;
                    for data in early.data {
                        self.counts.to_server += data.len() as u64;
                        self.from_client.push(&data);
                    }
                    match released {
                        Released::Run(admitted) => admitted,
                        Released::Refused(refusal) => {
                            self.answer(tx, refused(&refusal)).await?;
                            continue;
                        }
                        Released::Gone => return Err(SftpStop::Gone),
                    }
                }
            };
            let opens = matches!(op.name, "read" | "write" | "list").then_some(op.path);
            self.pending.insert(op.id, (admitted, opens));
            forward(session, up_tx, packet).await?;
        }
        Ok(())
    }

    /// Forwards the client's INIT, then asks the server for the session's
    /// working directory (relative paths resolve against it) and relays
    /// everything but that answer; no request of the client's is
    /// forwarded before it.
    async fn start(
        &mut self,
        rx: &mut ChannelReadHalf,
        tx: &ClientTx,
        up_rx: &mut ChannelReadHalf,
        up_tx: &UpstreamTx,
    ) -> Result<(), SftpStop> {
        let session = self.ctx.session;
        let init = loop {
            if let Some(packet) = self.from_client.next_packet().map_err(SftpStop::Protocol)? {
                break packet;
            }
            match rx.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    self.counts.to_server += data.len() as u64;
                    self.from_client.push(&data);
                }
                None | Some(ChannelMsg::Eof | ChannelMsg::Close) => return Err(SftpStop::Gone),
                Some(_) => {}
            }
        };
        if sftp::request(&init).map_err(SftpStop::Protocol)? != Request::Init {
            return Err(SftpStop::Protocol(sftp::SftpError::Malformed));
        }
        session.add_to_server(init.len());
        up_tx.data_bytes(init).await.map_err(|_| SftpStop::Gone)?;
        up_tx
            .data_bytes(sftp::realpath(PROBE_ID, "."))
            .await
            .map_err(|_| SftpStop::Gone)?;
        let deadline = tokio::time::sleep(PROBE_TIMEOUT);
        tokio::pin!(deadline);
        // Until the answer, the server's packets are taken whole (one of
        // them is not relayed).
        let mut from_server = Framer::default();
        loop {
            tokio::select! {
                msg = up_rx.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        from_server.push(&data);
                        while let Some(packet) = from_server.next_packet().map_err(SftpStop::Protocol)? {
                            let answer = match sftp::reply(&packet) {
                                Some(Reply::Name { id: PROBE_ID, first }) => Some(first),
                                Some(Reply::Status { id: PROBE_ID, .. }) => Some(None),
                                _ => None,
                            };
                            let Some(cwd) = answer else {
                                self.relay_to_client(tx, packet).await?;
                                continue;
                            };
                            self.paths.cwd = cwd.filter(|d| d.starts_with('/'));
                            self.resolver = Resolver::open(&self.ctx.upstream).await.map_err(|e| {
                                tracing::warn!(session = %session.id, error = %e, "cannot resolve SFTP paths on the server");
                                format!("loopgate cannot ask the server where the path leads ({e})")
                            });
                            let rest = from_server.buffered().to_vec();
                            if !rest.is_empty() {
                                let _ = self.server_replies(&rest).await;
                                self.relay_to_client(tx, Bytes::from(rest)).await?;
                            }
                            return Ok(());
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, ext }) => { let _ = tx.extended_data_bytes(ext, data).await; }
                    None | Some(ChannelMsg::Eof | ChannelMsg::Close) => return Err(SftpStop::Gone),
                    Some(_) => {}
                },
                msg = rx.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        self.counts.to_server += data.len() as u64;
                        self.from_client.push(&data);
                    }
                    None | Some(ChannelMsg::Close) => return Err(SftpStop::Gone),
                    Some(_) => {}
                },
                _ = &mut deadline => return Err(SftpStop::Unanswered),
            }
        }
    }

    async fn relay_to_client(&mut self, tx: &ClientTx, data: Bytes) -> Result<(), SftpStop> {
        self.counts.to_client += data.len() as u64;
        self.ctx.session.add_to_client(data.len());
        tx.data_bytes(data).await.map_err(|_| SftpStop::Gone)
    }

    /// `op` with its paths resolved as the server will resolve them (a
    /// symlink's target against the link's directory, as OpenSSH sends
    /// the target first); the request id when a path does not resolve.
    fn resolved(&self, op: Operation) -> Result<Operation, u32> {
        let Operation { id, name, path, to } = op;
        let to = match to {
            Some(to) => Some(self.paths.resolve(&to).ok_or(id)?),
            None => None,
        };
        let path = match (name, &to) {
            ("symlink", Some(link)) if !path.starts_with('/') => {
                let dir = link.rsplit_once('/').map_or("/", |(dir, _)| dir);
                super::sftp_path::resolve(Some(if dir.is_empty() { "/" } else { dir }), &path)
            }
            _ => self.paths.resolve(&path),
        }
        .ok_or(id)?;
        Ok(Operation { id, name, path, to })
    }

    /// `raw` (as the client sent it) with its paths as the server will act
    /// on them: through every link where the operation follows links
    /// (opening, listing, attributes, a symlink's target), through the
    /// directories only where it acts on the name itself (remove, rename,
    /// link, mkdir, rmdir, the link a symlink creates). The server is
    /// asked about the path as sent, since `..` after a link leaves the
    /// link's target. A path it cannot resolve is taken as `lexical` has
    /// it: the request fails on the server as well.
    async fn through_links(
        &mut self,
        raw: Operation,
        lexical: Operation,
        up_rx: &mut ChannelReadHalf,
        tx: &ClientTx,
    ) -> Result<Result<Operation, (u32, String)>, SftpStop> {
        let id = raw.id;
        let mut resolver = match std::mem::replace(&mut self.resolver, Err(String::new())) {
            Ok(r) => r,
            Err(why) => {
                self.resolver = Err(why.clone());
                return Ok(Err((id, why)));
            }
        };
        // The server's replies to the client are relayed while it answers:
        // russh stops reading the whole connection when one channel's
        // buffer is full, and the answer comes on that connection.
        let cwd = self.paths.cwd.clone().unwrap_or_default();
        let asked = self.relaying(up_rx, tx, server_paths(&mut resolver, &cwd, &raw)).await;
        match asked? {
            Ok((path, to)) => {
                self.resolver = Ok(resolver);
                Ok(Ok(Operation {
                    path: path.unwrap_or(lexical.path),
                    to: to.map(|to| to.or(lexical.to).unwrap_or_default()),
                    ..raw
                }))
            }
            Err(e) => {
                // The channel is not trusted again: what follows is refused.
                let why = format!("loopgate cannot ask the server where the path leads ({e})");
                self.resolver = Err(why.clone());
                resolver.close().await;
                Ok(Err((id, why)))
            }
        }
    }

    /// Runs `work` while relaying what the server sends on the client's
    /// channel (and recording the results in it), so a long wait never
    /// fills that channel's buffer.
    async fn relaying<T>(
        &mut self,
        up_rx: &mut ChannelReadHalf,
        tx: &ClientTx,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, SftpStop> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return Ok(done),
                msg = up_rx.wait() => self.on_server_message(msg, tx).await?,
            }
        }
    }

    /// Server bytes read for the replies they end, then relayed.
    async fn relay_server_data(&mut self, tx: &ClientTx, data: Bytes) -> Result<(), SftpStop> {
        if self.server_framing {
            self.server_framing = self.server_replies(&data).await;
        }
        self.relay_to_client(tx, data).await
    }

    /// Answers the client with a packet of loopgate's: now at a boundary of
    /// the server's stream, else once the packet under way has passed.
    async fn answer(&mut self, tx: &ClientTx, packet: Vec<u8>) -> Result<(), SftpStop> {
        self.own.push(Bytes::from(packet));
        if self.from_server.to_boundary() == 0 || !self.server_framing {
            self.flush_own(tx).await?;
        }
        Ok(())
    }

    async fn flush_own(&mut self, tx: &ClientTx) -> Result<(), SftpStop> {
        for packet in std::mem::take(&mut self.own) {
            self.relay_to_client(tx, packet).await?;
        }
        Ok(())
    }

    /// One message of the server's on the client's channel: replies read
    /// for the results they carry and relayed.
    async fn on_server_message(&mut self, msg: Option<ChannelMsg>, tx: &ClientTx) -> Result<(), SftpStop> {
        match msg {
            Some(ChannelMsg::Data { mut data }) => {
                // Up to the end of the packet under way, then loopgate's
                // own answers, then the rest.
                while !self.own.is_empty() && self.server_framing {
                    let n = self.from_server.to_boundary();
                    if n == 0 {
                        self.flush_own(tx).await?;
                    } else if n < data.len() {
                        let head = data.split_to(n);
                        self.relay_server_data(tx, head).await?;
                    } else {
                        break;
                    }
                }
                self.relay_server_data(tx, data).await?;
                if self.from_server.to_boundary() == 0 || !self.server_framing {
                    self.flush_own(tx).await?;
                }
            }
            Some(ChannelMsg::ExtendedData { data, ext }) => {
                let _ = tx.extended_data_bytes(ext, data).await;
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                let _ = tx.exit_status(exit_status).await;
            }
            Some(ChannelMsg::Eof) => {
                let _ = tx.eof().await;
            }
            None | Some(ChannelMsg::Close) => return Err(SftpStop::Gone),
            Some(_) => {}
        }
        Ok(())
    }

    /// Records and answers a request loopgate refuses itself, before any
    /// policy: it cannot be decided as it stands.
    async fn refuse_unchecked(&mut self, tx: &ClientTx, id: u32, rule: &str, reason: &str) -> Result<(), SftpStop> {
        let Ctx { svc, session, .. } = self.ctx;
        let info = CommandInfo {
            text: Some(format!("sftp request {id}")),
            kind: Some("ssh_sftp".to_owned()),
            ..CommandInfo::default()
        };
        match svc.enforcer.refuse(session, info, rule, reason).await {
            Ok(refusal) => {
                let code = if rule == UNSUPPORTED_RULE {
                    sftp::FX_OP_UNSUPPORTED
                } else {
                    sftp::FX_FAILURE
                };
                let answer = sftp::status(id, code, &refusal.message("operation"));
                self.answer(tx, answer).await
            }
            Err(e) => {
                tracing::error!(session = %session.id, error = %e, "cannot record a refused SFTP operation");
                Err(SftpStop::Audit)
            }
        }
    }

    /// Records the results of admitted operations the server answered in
    /// `data`. `false` once the server's stream cannot be read as SFTP (it
    /// is relayed on, unread).
    async fn server_replies(&mut self, data: &[u8]) -> bool {
        let Ctx { svc, session, .. } = self.ctx;
        let mut replies = Vec::new();
        let read = self.from_server.push(data, &mut replies);
        for reply in replies {
            let (id, code) = match reply {
                Reply::Status { id, code } => (id, code),
                Reply::Handle { id, handle } => {
                    if let Some((_, Some(path))) = self.pending.get(&id) {
                        self.paths.opened(handle, path.clone());
                    }
                    (id, 0)
                }
                Reply::Name { id, .. } | Reply::Other { id } => (id, 0),
                Reply::Version => continue,
            };
            let Some((admitted, _)) = self.pending.remove(&id) else {
                continue;
            };
            let outcome = Outcome {
                status: Some(if code == 0 { "ok" } else { "error" }.into()),
                error_code: (code != 0).then(|| format!("sftp:{code}")),
                ..Outcome::default()
            };
            svc.enforcer.finish(session, &admitted, outcome).await;
        }
        if let Err(e) = read {
            tracing::warn!(session = %session.id, error = %e, "cannot frame the server's SFTP replies");
            return false;
        }
        true
    }
}

/// The server's names for `raw`'s path and second path (`None` where it
/// cannot resolve one): through every link where the request follows
/// links, through the directories where it acts on the name. Relative
/// paths are made absolute against `cwd` (they resolved lexically, so
/// there is one).
async fn server_paths(
    resolver: &mut Resolver,
    cwd: &str,
    raw: &Operation,
) -> Result<(Option<String>, Option<Option<String>>), ResolveError> {
    let absolute = |p: &str| {
        if p.starts_with('/') {
            p.to_owned()
        } else {
            format!("{cwd}/{p}")
        }
    };
    let to = match &raw.to {
        Some(to) => Some(named(resolver, &absolute(to)).await?),
        None => None,
    };
    let path = match (raw.name, &to) {
        // A symlink's target is read from the link's directory.
        ("symlink", Some(link)) if !raw.path.starts_with('/') => {
            let link = link
                .clone()
                .unwrap_or_else(|| absolute(raw.to.as_deref().unwrap_or_default()));
            let dir = link.rsplit_once('/').map_or("", |(dir, _)| dir);
            resolver.realpath(&format!("{dir}/{}", raw.path)).await?
        }
        ("read" | "write" | "list" | "setstat" | "symlink", _) => resolver.realpath(&absolute(&raw.path)).await?,
        _ => named(resolver, &absolute(&raw.path)).await?,
    };
    Ok((path, to))
}

/// The server's name for absolute `path` with its directory resolved
/// and its last component kept (not followed); `None` when the server
/// cannot resolve the directory.
async fn named(resolver: &mut Resolver, path: &str) -> Result<Option<String>, ResolveError> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = if dir.is_empty() { "/" } else { dir };
    Ok(resolver
        .realpath(dir)
        .await?
        .and_then(|real| sftp_path::resolve(None, &format!("{real}/{name}"))))
}

async fn forward(session: &Session, up_tx: &UpstreamTx, packet: Bytes) -> Result<(), SftpStop> {
    session.add_to_server(packet.len());
    up_tx.data_bytes(packet).await.map_err(|_| SftpStop::Gone)
}
