//! Reading backend messages off the wire: one complete frame (type byte, i32
//! length, body) at a time, bounded, then decoded with pgwire.
//!
//! pgwire's decoders assume well-formed input (some read past a short body
//! and panic), so a frame is cut out on its own first, the message types
//! whose decoders do unchecked reads are checked structurally before
//! decoding, and a decoder that does not consume exactly the frame is an
//! error. Malformed input is always an error, never a panic.
use std::io;

use bytes::{Buf, BytesMut};
use pgwire::messages::{DecodeContext, PgWireBackendMessage};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest message accepted while the connection starts up. Real startup
/// messages are tiny (libpq allows 30000 bytes); anything bigger is hostile.
pub const STARTUP_MAX_LEN: usize = 30_000;
/// Largest message accepted afterwards (PostgreSQL's own limit for a field).
pub const MAX_LEN: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the upstream server closed the connection")]
    Closed,
    #[error("reading from the upstream server: {0}")]
    Io(#[from] io::Error),
    #[error("upstream message '{}' declares length {len}, more than the {max} bytes allowed here", printable(*.ty))]
    TooLong { ty: u8, len: usize, max: usize },
    #[error("malformed upstream message '{}': {reason}", printable(*.ty))]
    Malformed { ty: u8, reason: String },
}

fn printable(ty: u8) -> char {
    if ty.is_ascii_graphic() {
        ty as char
    } else {
        '?'
    }
}

/// Reads one whole backend message into its own buffer. `buf` holds bytes
/// already read past earlier frames and keeps whatever follows this one.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<BytesMut, FrameError> {
    fill(reader, buf, 5).await?;
    let ty = buf[0];
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    // The length counts itself (4 bytes) but not the type byte.
    let len = usize::try_from(declared)
        .ok()
        .filter(|l| *l >= 4)
        .ok_or_else(|| FrameError::Malformed {
            ty,
            reason: format!("length {declared}"),
        })?;
    if len > max_len {
        return Err(FrameError::TooLong {
            ty,
            len,
            max: max_len,
        });
    }
    fill(reader, buf, 1 + len).await?;
    Ok(buf.split_to(1 + len))
}

async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    want: usize,
) -> Result<(), FrameError> {
    while buf.len() < want {
        buf.reserve((want - buf.len()).min(64 * 1024));
        if reader.read_buf(buf).await? == 0 {
            return Err(FrameError::Closed);
        }
    }
    Ok(())
}

/// Decodes one frame from [`read_frame`].
pub fn decode(frame: BytesMut, ctx: &DecodeContext) -> Result<PgWireBackendMessage, FrameError> {
    let ty = frame.first().copied().unwrap_or(0);
    let malformed = |reason: String| FrameError::Malformed { ty, reason };
    if frame.len() < 5 {
        return Err(malformed("short frame".into()));
    }
    check_structure(ty, &frame[5..]).map_err(|r| malformed(r.into()))?;
    let mut frame = frame;
    let msg = PgWireBackendMessage::decode(&mut frame, ctx)
        .map_err(|e| malformed(e.to_string()))?
        .ok_or_else(|| malformed("incomplete".into()))?;
    if frame.has_remaining() {
        return Err(malformed(format!(
            "{} bytes after the message",
            frame.remaining()
        )));
    }
    Ok(msg)
}

/// Rejects bodies that would make pgwire's decoders read past the end.
fn check_structure(ty: u8, body: &[u8]) -> Result<(), &'static str> {
    match ty {
        // Authentication: i32 code, then per-code data.
        b'R' => {
            let code = body.get(..4).ok_or("missing authentication code")?;
            if i32::from_be_bytes([code[0], code[1], code[2], code[3]]) == 5 && body.len() != 8 {
                return Err("MD5 salt must be 4 bytes");
            }
            Ok(())
        }
        // BackendKeyData: pid + a key of 4..=256 bytes.
        b'K' if body.len() < 8 => Err("too short"),
        b'Z' if body.len() != 1 => Err("ReadyForQuery must have 1 byte"),
        // Error/Notice: (code byte, C string)* then a terminating zero.
        b'E' | b'N' => {
            let mut rest = body;
            loop {
                match rest.split_first() {
                    None => return Err("missing terminator"),
                    Some((0, [])) => return Ok(()),
                    Some((0, _)) => return Err("data after terminator"),
                    Some((_, tail)) => {
                        let nul = tail
                            .iter()
                            .position(|b| *b == 0)
                            .ok_or("unterminated field")?;
                        rest = &tail[nul + 1..];
                    }
                }
            }
        }
        // NotificationResponse: pid then two C strings.
        b'A' if body.len() < 6 => Err("too short"),
        // DataRow: i16 count, then per column i32 length (-1 = NULL) + bytes.
        b'D' => {
            let mut rest = body;
            let count = take(&mut rest, 2)?;
            let count = i16::from_be_bytes([count[0], count[1]]);
            for _ in 0..count.max(0) {
                let l = take(&mut rest, 4)?;
                let l = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
                if l > 0 {
                    take(&mut rest, l as usize)?;
                }
            }
            Ok(())
        }
        // ParameterDescription: u16 count, then an i32 type oid each.
        b't' => {
            let mut rest = body;
            let count = take(&mut rest, 2)?;
            take(
                &mut rest,
                4 * usize::from(u16::from_be_bytes([count[0], count[1]])),
            )?;
            Ok(())
        }
        // RowDescription: i16 count, then per field a C string and 18 bytes.
        b'T' => {
            let mut rest = body;
            let count = take(&mut rest, 2)?;
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count < 0 {
                return Err("negative field count");
            }
            for _ in 0..count {
                let nul = rest
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or("unterminated name")?;
                take(&mut rest, nul + 1 + 18)?;
            }
            Ok(())
        }
        // Bodies read with fixed-size getters.
        b'G' | b'H' | b'W' if body.len() < 3 => Err("too short"),
        b'v' if body.len() < 8 => Err("too short"),
        _ => Ok(()),
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    if rest.len() < n {
        return Err("truncated");
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::messages::{
        ProtocolVersion,
        response::{ReadyForQuery, TransactionStatus},
        startup::{Authentication, ParameterStatus},
    };

    fn ctx() -> DecodeContext {
        DecodeContext::new(ProtocolVersion::PROTOCOL3_0)
    }

    fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn reads_frames_across_chunks_and_keeps_the_rest() {
        let mut wire = frame(b'S', b"a\0b\0");
        wire.extend(frame(b'Z', b"I"));
        wire.extend(b"extra");
        let (mut client, mut server) = tokio::io::duplex(3);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            server.write_all(&wire).await.unwrap();
        });
        let mut buf = BytesMut::new();
        let f = read_frame(&mut client, &mut buf, STARTUP_MAX_LEN)
            .await
            .unwrap();
        match decode(f, &ctx()).unwrap() {
            PgWireBackendMessage::ParameterStatus(p) => {
                assert_eq!(p, ParameterStatus::new("a".into(), "b".into()))
            }
            other => panic!("{other:?}"),
        }
        let f = read_frame(&mut client, &mut buf, STARTUP_MAX_LEN)
            .await
            .unwrap();
        assert!(matches!(
            decode(f, &ctx()).unwrap(),
            PgWireBackendMessage::ReadyForQuery(r) if r == ReadyForQuery::new(TransactionStatus::Idle)
        ));
        while buf.len() < 5 {
            client.read_buf(&mut buf).await.unwrap();
        }
        assert_eq!(&buf[..], b"extra");
    }

    #[tokio::test]
    async fn bounds_and_eof() {
        let mut buf = BytesMut::new();
        let long = frame(b'D', &[0u8; 100]);
        let err = read_frame(&mut &long[..], &mut buf, 50).await.unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLong {
                    len: 104,
                    max: 50,
                    ..
                }
            ),
            "{err}"
        );

        let mut buf = BytesMut::new();
        let bad_len = [b'Z', 0, 0, 0, 3];
        assert!(matches!(
            read_frame(&mut &bad_len[..], &mut buf, 50).await,
            Err(FrameError::Malformed { .. })
        ));
        let mut buf = BytesMut::new();
        let neg = [b'Z', 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &neg[..], &mut buf, 50).await.is_err());

        let mut buf = BytesMut::new();
        let cut = &frame(b'S', b"abc\0def\0")[..7];
        assert!(matches!(
            read_frame(&mut &cut[..], &mut buf, 50).await,
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn decodes_authentication_requests() {
        let f = BytesMut::from(&frame(b'R', &[0, 0, 0, 5, 1, 2, 3, 4])[..]);
        assert_eq!(
            match decode(f, &ctx()).unwrap() {
                PgWireBackendMessage::Authentication(a) => a,
                other => panic!("{other:?}"),
            },
            Authentication::MD5Password(vec![1, 2, 3, 4])
        );
    }

    /// Every short or truncated body of every message type is an error or a
    /// message, never a panic, and nothing after a frame is swallowed.
    #[test]
    fn malformed_bodies_never_panic() {
        let mut bodies: Vec<Vec<u8>> = vec![vec![]];
        for len in 1..12 {
            bodies.push(vec![0; len]);
            bodies.push(vec![0xff; len]);
            bodies.push(
                (0..len as u8)
                    .map(|i| i.wrapping_mul(37).wrapping_add(1))
                    .collect(),
            );
        }
        bodies.push(vec![0, 0, 0, 5, 1]);
        bodies.push(vec![0, 0, 0, 11]);
        bodies.push(vec![0, 0, 0, 12]);
        bodies.push(vec![0, 0, 0, 10, b'x']);
        bodies.push(b"Sabc\0".to_vec());
        bodies.push(b"Sabc".to_vec());
        bodies.push(vec![0, 2, 0, 0, 0, 1, b'x']);
        bodies.push(vec![0, 1, 0x7f, 0xff, 0xff, 0xff]);
        bodies.push(vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        for ty in 0u8..=255 {
            for body in &bodies {
                let f = BytesMut::from(&frame(ty, body)[..]);
                let r = std::panic::catch_unwind(|| {
                    let _ = decode(f, &ctx());
                });
                assert!(r.is_ok(), "type {ty} body {body:?} panicked");
            }
        }
    }
}
