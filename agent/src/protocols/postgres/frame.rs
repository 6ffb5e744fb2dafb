//! Framing: one complete PostgreSQL message at a time, with size limits.
//!
//! Frames are kept as the exact bytes that arrived. Handlers decode them
//! (with pgwire) to inspect them, but forward the original bytes unless they
//! change the message: re-encoding would normalise text (pgwire decodes
//! strings lossily) and costs a copy on the hot path.
use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Largest message accepted after startup: PostgreSQL's own limit for a
/// DataRow or CopyData is 1 GiB.
pub const MAX_MESSAGE: usize = 1 << 30;
/// Largest startup-phase message (startup packet, password, SASL).
pub const MAX_STARTUP_MESSAGE: usize = 10_000;

/// One message: `bytes` holds the whole frame, header included.
#[derive(Debug)]
pub struct Frame {
    /// Message type byte; `None` for untyped startup-phase packets.
    pub tag: Option<u8>,
    pub bytes: BytesMut,
}

impl Frame {
    /// The message body, after the type byte and length.
    pub fn body(&self) -> &[u8] {
        let header = if self.tag.is_some() { 5 } else { 4 };
        &self.bytes[header..]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("message length {0} is invalid")]
    BadLength(i64),
    #[error("message of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads buffered input until `buf` holds one whole message, then splits it
/// off. `typed` is false for startup packets (no type byte). Returns
/// `Ok(None)` on a clean end of stream between messages.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    typed: bool,
    limit: usize,
) -> Result<Option<Frame>, FrameError> {
    let header = if typed { 5 } else { 4 };
    loop {
        if buf.len() >= header {
            let len_at = header - 4;
            let len = i32::from_be_bytes([buf[len_at], buf[len_at + 1], buf[len_at + 2], buf[len_at + 3]]);
            if len < 4 {
                return Err(FrameError::BadLength(len.into()));
            }
            let total = len as usize + len_at;
            if total > limit {
                return Err(FrameError::TooLarge { len: total, limit });
            }
            if buf.len() >= total {
                let bytes = buf.split_to(total);
                let tag = typed.then(|| bytes[0]);
                return Ok(Some(Frame { tag, bytes }));
            }
            buf.reserve(total - buf.len());
        } else {
            buf.reserve(8 * 1024);
        }
        if reader.read_buf(buf).await? == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(FrameError::Truncated) };
        }
    }
}

/// Whether `buf` already holds a whole typed message (so reading more can
/// wait while buffered output is flushed first, or not).
pub fn has_complete_frame(buf: &BytesMut) -> bool {
    if buf.len() < 5 {
        return false;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    len >= 4 && buf.len() > len as usize
}

/// Appends a typed message with `body` to `out`.
pub fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.reserve(5 + body.len());
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

/// The big-endian i16 at the start of `body`, without consuming it.
pub fn peek_i16(body: &[u8]) -> Option<i16> {
    Some(i16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

/// The NUL-terminated string at the start of `body`, and the rest.
pub fn cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = body.iter().position(|&b| b == 0)?;
    Some((&body[..end], &body[end + 1..]))
}

/// Reads a big-endian i16 from the front of `body`, advancing it.
pub fn take_i16(body: &mut &[u8]) -> Option<i16> {
    if body.len() < 2 {
        return None;
    }
    let v = (&body[..2]).get_i16();
    *body = &body[2..];
    Some(v)
}

/// Reads a big-endian i32 from the front of `body`, advancing it.
pub fn take_i32(body: &mut &[u8]) -> Option<i32> {
    if body.len() < 4 {
        return None;
    }
    let v = (&body[..4]).get_i32();
    *body = &body[4..];
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], typed: bool, limit: usize) -> Result<Vec<Frame>, FrameError> {
        let mut reader = input;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut reader, &mut buf, typed, limit).await? {
            out.push(f);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn splits_typed_messages() {
        let input = b"Q\0\0\0\x0dselect 1\0S\0\0\0\x04";
        let f = frames(input, true, MAX_MESSAGE).await.unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].tag, Some(b'Q'));
        assert_eq!(f[0].body(), b"select 1\0");
        assert_eq!(f[1].tag, Some(b'S'));
        assert!(f[1].body().is_empty());
    }

    #[tokio::test]
    async fn rejects_bad_and_oversized_lengths() {
        assert!(matches!(frames(b"Q\0\0\0\x02", true, MAX_MESSAGE).await, Err(FrameError::BadLength(2))));
        assert!(matches!(frames(b"Q\xff\xff\xff\xff", true, MAX_MESSAGE).await, Err(FrameError::BadLength(-1))));
        assert!(matches!(frames(b"Q\0\x10\0\0", true, 1000).await, Err(FrameError::TooLarge { .. })));
        assert!(matches!(frames(b"Q\0\0\0\x0dsel", true, MAX_MESSAGE).await, Err(FrameError::Truncated)));
    }

    #[tokio::test]
    async fn startup_packets_are_untyped() {
        let f = frames(b"\0\0\0\x08\x04\xd2\x16\x2f", false, MAX_STARTUP_MESSAGE).await.unwrap();
        assert_eq!(f[0].tag, None);
        assert_eq!(f[0].body(), [0x04, 0xd2, 0x16, 0x2f]);
    }

    #[test]
    fn cstr_and_integers() {
        assert_eq!(cstr(b"ab\0cd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(cstr(b"ab"), None);
        let mut body: &[u8] = &[0, 2, 0, 0, 0, 7, 1];
        assert_eq!(take_i16(&mut body), Some(2));
        assert_eq!(take_i32(&mut body), Some(7));
        assert_eq!(take_i32(&mut body), None);
    }
}
