//! `tcp`: bytes pass through unchanged in both directions, counted as they
//! flow. The session is recorded; its content is not inspected.
use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::session::{EndStatus, Session, SessionEnd};

pub async fn serve(session: &Session, client: TcpStream, connect_timeout: Duration) -> SessionEnd {
    let upstream = match crate::session::connect_upstream(session, connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            return SessionEnd::failed(EndStatus::Unreachable, format!("connect to {}: {e}", session.original));
        }
    };
    let _ = client.set_nodelay(true);
    let mut client = Counted::new(client, &session.traffic.to_server);
    let mut upstream = Counted::new(upstream, &session.traffic.to_client);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok(_) => SessionEnd::ok(),
        Err(e) if is_disconnect(&e) => SessionEnd::ok(),
        Err(e) => SessionEnd::failed(EndStatus::Error, format!("relay: {e}")),
    }
}

/// A peer resetting or vanishing is how many TCP sessions end.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
    )
}

/// A stream that adds every byte read from it to a counter.
struct Counted<'a, S> {
    inner: S,
    read: &'a AtomicU64,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: S, read: &'a AtomicU64) -> Self {
        Counted { inner, read }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.read.fetch_add((buf.filled().len() - before) as u64, Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn counts_what_it_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        let counter = AtomicU64::new(0);
        let mut counted = Counted::new(b, &counter);
        a.write_all(b"hello world").await.unwrap();
        drop(a);
        let mut out = Vec::new();
        counted.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(counter.load(Relaxed), 11);
    }
}
