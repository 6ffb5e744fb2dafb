//! The session's own connection to the server the client asked for.
use std::{io, time::Duration};

use tokio::net::TcpStream;

use super::Session;

/// Connects to the destination the client asked for. The agent runs outside
/// the intercepted cgroups, so this connect is never redirected.
pub async fn connect_upstream(session: &Session, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(session.original))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
