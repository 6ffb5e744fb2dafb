//! Where the server will really act on an SFTP path: loopgate's own SFTP
//! channel on the upstream connection asks the server to `REALPATH` each
//! path before the request is decided, so a symbolic link that already
//! exists (`/home/app/data -> /srv/phi`) is seen through, and `..` after
//! a link means what the server makes of it, not what the spelling says.
//!
//! A channel of its own, not the client's: its replies never mix with
//! the client's stream, and nothing of it reaches the client.
//!
//! What is left: the path can change between this answer and the
//! request (another channel swapping a directory for a link). The
//! server's own permissions are the backstop for that race.
use std::time::Duration;

use russh::{ChannelMsg, ChannelReadHalf};

use super::{
    channel::UpstreamTx,
    sftp::{self, Framer, Reply},
    upstream::Upstream,
};

/// How long the server has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server's view of a path could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("the server refused loopgate's SFTP channel: {0}")]
    Refused(String),
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the server's SFTP channel ended")]
    Gone,
    #[error("the server's SFTP stream is malformed: {0}")]
    Protocol(sftp::SftpError),
}

/// loopgate's SFTP session beside the client's, for questions only.
pub struct Resolver {
    rx: ChannelReadHalf,
    tx: UpstreamTx,
    replies: Framer,
    next_id: u32,
}

impl Resolver {
    /// Opens the channel and starts SFTP on it.
    pub async fn open(upstream: &Upstream) -> Result<Resolver, ResolveError> {
        let channel = upstream
            .channel_open_session()
            .await
            .map_err(|e| ResolveError::Refused(e.to_string()))?;
        let (rx, tx) = channel.split();
        let mut resolver = Resolver {
            rx,
            tx,
            replies: Framer::default(),
            next_id: 1,
        };
        tokio::time::timeout(TIMEOUT, resolver.start())
            .await
            .map_err(|_| ResolveError::Timeout(TIMEOUT))??;
        Ok(resolver)
    }

    async fn start(&mut self) -> Result<(), ResolveError> {
        self.tx
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| ResolveError::Refused(e.to_string()))?;
        loop {
            match self.rx.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => return Err(ResolveError::Refused("no sftp subsystem".into())),
                None | Some(ChannelMsg::Close | ChannelMsg::Eof) => return Err(ResolveError::Gone),
                Some(_) => {}
            }
        }
        self.tx.data_bytes(sftp::init()).await.map_err(|_| ResolveError::Gone)?;
        loop {
            if let Some(Reply::Version) = self.next_reply().await?.as_ref().and_then(|p| sftp::reply(p)) {
                return Ok(());
            }
        }
    }

    /// The server's absolute, link-free name for `path` (its last
    /// component need not exist). `None` when the server cannot resolve
    /// it (a directory on the way is missing or unreadable): the request
    /// would fail there too.
    pub async fn realpath(&mut self, path: &str) -> Result<Option<String>, ResolveError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.tx
            .data_bytes(sftp::realpath(id, path))
            .await
            .map_err(|_| ResolveError::Gone)?;
        let answer = async {
            loop {
                let Some(packet) = self.next_reply().await? else {
                    continue;
                };
                match sftp::reply(&packet) {
                    Some(Reply::Name { id: got, first }) if got == id => {
                        return Ok(first.filter(|p| p.starts_with('/')));
                    }
                    Some(Reply::Status { id: got, .. }) if got == id => return Ok(None),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(TIMEOUT, answer)
            .await
            .map_err(|_| ResolveError::Timeout(TIMEOUT))?
    }

    /// The next whole packet from the server, if one is complete after
    /// reading what arrived.
    async fn next_reply(&mut self) -> Result<Option<bytes::Bytes>, ResolveError> {
        if let Some(packet) = self.replies.next_packet().map_err(ResolveError::Protocol)? {
            return Ok(Some(packet));
        }
        match self.rx.wait().await {
            Some(ChannelMsg::Data { data }) => {
                self.replies.push(&data);
                Ok(None)
            }
            None | Some(ChannelMsg::Close | ChannelMsg::Eof) => Err(ResolveError::Gone),
            Some(_) => Ok(None),
        }
    }

    /// Ends the channel.
    pub async fn close(self) {
        let _ = self.tx.eof().await;
        let _ = self.tx.close().await;
    }
}
