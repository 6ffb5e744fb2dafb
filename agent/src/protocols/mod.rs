//! Protocol handlers. The proxy hands each accepted session to the handler
//! its target's protocol names; the handler serves it until either side
//! closes and says how it ended.
pub mod postgres;
pub mod tcp;

use std::{io, time::Duration};

use tokio::net::TcpStream;

use crate::{
    config::Protocol,
    proxy::{Session, SessionEnd},
};

/// Serves `client` for `session` with the target's protocol handler.
pub async fn serve(session: &Session, client: TcpStream, connect_timeout: Duration) -> SessionEnd {
    match session.target.protocol {
        Protocol::Tcp => tcp::serve(session, client, connect_timeout).await,
    }
}

/// Connects to the destination the client asked for. The agent runs outside
/// the intercepted cgroups, so this connect is never redirected.
pub async fn connect_upstream(session: &Session, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(session.original))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
