//! RFC 6455 framing of an upgraded connection: frames read from a bounded
//! buffer as bytes arrive, and written back. loopgate re-frames every
//! frame it passes on (lengths recomputed), so a frame it did not parse
//! never reaches the other side. Extensions are never negotiated (the
//! relay strips `Sec-WebSocket-Extensions`), so a reserved bit is an error.
use bytes::{Buf as _, BytesMut};

/// The largest frame payload accepted. Kubernetes writes stdout in frames
/// of a few KiB; a larger one is refused rather than buffered.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Control frames carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One frame, its payload unmasked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    /// The client's masking key (client → server frames carry one).
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a reserved bit is set (no extension was negotiated)")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("a control frame is fragmented or longer than 125 bytes")]
    Control,
    #[error("a frame of {0} bytes is over loopgate's bound")]
    TooLong(u64),
    #[error("a client frame is not masked")]
    Unmasked,
    #[error("a continuation frame outside a fragmented message")]
    Continuation,
    #[error("a new message began before the fragmented one ended")]
    Interleaved,
}

/// Frames of one direction, from the bytes read so far.
pub struct Decoder {
    buf: BytesMut,
    /// Client → server: frames must be masked.
    from_client: bool,
    /// Inside a fragmented message (its first frame had FIN clear).
    in_message: bool,
}

impl Decoder {
    pub fn new(from_client: bool) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            from_client,
            in_message: false,
        }
    }

    /// Adds bytes read. The buffer holds at most one frame in progress
    /// (bounded by [`MAX_PAYLOAD`]) plus one read.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, `None` until one is.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        let opcode = Opcode::from_bits(b[0] & 0x0F).ok_or(FrameError::Opcode(b[0] & 0x0F))?;
        let masked = b[1] & 0x80 != 0;
        if self.from_client && !masked {
            return Err(FrameError::Unmasked);
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() < 4 => return Ok(None),
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() < 10 => return Ok(None),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() && (!fin || len > MAX_CONTROL as u64) {
            return Err(FrameError::Control);
        }
        if len > MAX_PAYLOAD as u64 {
            return Err(FrameError::TooLong(len));
        }
        let len = len as usize;
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let key = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(key)
        } else {
            None
        };
        if b.len() < at + len {
            return Ok(None);
        }
        match opcode {
            Opcode::Continuation if !self.in_message => return Err(FrameError::Continuation),
            Opcode::Text | Opcode::Binary if self.in_message => return Err(FrameError::Interleaved),
            Opcode::Continuation | Opcode::Text | Opcode::Binary => self.in_message = !fin,
            _ => {}
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(key) = mask {
            apply_mask(&mut payload, key);
        }
        self.buf.advance(at + len);
        Ok(Some(Frame {
            fin,
            opcode,
            mask,
            payload,
        }))
    }
}

fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A frame's bytes on the wire: masked with `mask` when given (client →
/// server), else plain (server → client); the length is the payload's.
pub fn encode(fin: bool, opcode: Opcode, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    let body = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[body..], key);
    }
    out
}

/// A Close frame's payload: status `code` and a short reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    let room = MAX_CONTROL - 2;
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(from_client: bool, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut d = Decoder::new(from_client);
        let mut frames = Vec::new();
        // One byte at a time: every split point of the input.
        for b in bytes {
            d.push(&[*b]);
            while let Some(f) = d.next_frame()? {
                frames.push(f);
            }
        }
        Ok(frames)
    }

    #[test]
    fn frames_round_trip_at_every_length_form_masked_and_not() {
        for len in [0, 1, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some([1, 2, 3, 0xFF])] {
                let wire = encode(true, Opcode::Binary, mask, &payload);
                let frames = decode_all(mask.is_some(), &wire).unwrap();
                assert_eq!(frames.len(), 1);
                assert_eq!(frames[0].payload, payload, "{len}");
                assert_eq!((frames[0].mask, frames[0].opcode), (mask, Opcode::Binary));
            }
        }
    }

    #[test]
    fn a_fragmented_message_with_a_ping_inside_is_read_in_order() {
        let mut wire = encode(false, Opcode::Binary, None, b"\x01hel");
        wire.extend(encode(true, Opcode::Ping, None, b"p"));
        wire.extend(encode(true, Opcode::Continuation, None, b"lo"));
        let frames = decode_all(false, &wire).unwrap();
        let kinds: Vec<(bool, Opcode)> = frames.iter().map(|f| (f.fin, f.opcode)).collect();
        assert_eq!(
            kinds,
            [
                (false, Opcode::Binary),
                (true, Opcode::Ping),
                (true, Opcode::Continuation)
            ]
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: [(&[u8], bool, FrameError); 7] = [
            (&[0xC2, 0x00], false, FrameError::Reserved),
            (&[0x83, 0x00], false, FrameError::Opcode(3)),
            (&[0x09, 0x00], false, FrameError::Control),
            (&[0x89, 126, 0, 126], false, FrameError::Control),
            (
                &[0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0],
                false,
                FrameError::TooLong(1 << 32),
            ),
            (&[0x82, 0x00], true, FrameError::Unmasked),
            (&[0x80, 0x00], false, FrameError::Continuation),
        ];
        for (wire, from_client, expected) in cases {
            assert_eq!(decode_all(from_client, wire).unwrap_err(), expected, "{wire:?}");
        }
        let mut interleaved = encode(false, Opcode::Binary, None, b"\x01a");
        interleaved.extend(encode(true, Opcode::Binary, None, b"\x01b"));
        assert_eq!(decode_all(false, &interleaved).unwrap_err(), FrameError::Interleaved);
    }

    #[test]
    fn a_close_reason_is_cut_to_the_control_bound_on_a_char_boundary() {
        let p = close_payload(1002, &"é".repeat(100));
        assert!(p.len() <= MAX_CONTROL);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        assert_eq!(&p[..2], &1002u16.to_be_bytes());
    }
}
