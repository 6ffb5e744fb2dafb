//! SFTP as OpenSSH speaks it (version 3, draft-ietf-secsh-filexfer-02):
//! framing of the packet stream in both directions, the requests loopgate
//! decides one by one (opens, removals, renames, directories, attribute
//! changes), the server's replies that end them, and the STATUS packet
//! loopgate answers a refused request with. Checked decoding: a packet
//! that does not parse is a protocol error, never a panic.
use std::borrow::Cow;

/// The largest packet accepted (OpenSSH's sftp-server allows 256 KiB).
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

const FXP_OPEN: u8 = 3;
const FXP_SETSTAT: u8 = 9;
const FXP_OPENDIR: u8 = 11;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;

const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;

/// `SSH_FX_PERMISSION_DENIED`.
pub const FX_PERMISSION_DENIED: u32 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SftpError {
    #[error("SFTP packet of {0} bytes is larger than loopgate accepts")]
    TooLarge(usize),
    #[error("malformed SFTP packet")]
    Malformed,
}

/// Splits a byte stream into SFTP packets (length prefix included).
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete packet, if one is buffered.
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, SftpError> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_PACKET {
            return Err(SftpError::TooLarge(len));
        }
        if len == 0 {
            return Err(SftpError::Malformed);
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let rest = self.buf.split_off(4 + len);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}

/// A request loopgate decides: its id, what it does and to which paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: u32,
    /// `read`, `write`, `list`, `remove`, `rename`, `mkdir`, `rmdir`,
    /// `setstat`, `symlink`.
    pub name: &'static str,
    pub path: String,
    /// The second path of a rename (the new name) or a symlink (the link).
    pub to: Option<String>,
}

/// The operation a client packet asks for, or `None` for the requests
/// that are not decided one by one (reads and writes on open handles,
/// stat, readdir, close, realpath, init).
pub fn operation(packet: &[u8]) -> Result<Option<Operation>, SftpError> {
    let mut r = Reader::new(packet.get(4..).ok_or(SftpError::Malformed)?);
    let kind = r.u8()?;
    let decided = [
        FXP_OPEN,
        FXP_SETSTAT,
        FXP_OPENDIR,
        FXP_REMOVE,
        FXP_MKDIR,
        FXP_RMDIR,
        FXP_RENAME,
        FXP_SYMLINK,
    ];
    if !decided.contains(&kind) {
        return Ok(None);
    }
    let id = r.u32()?;
    let path = r.string()?.into_owned();
    let (name, to) = match kind {
        FXP_OPEN => {
            let flags = r.u32()?;
            let writes = flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC) != 0;
            (if writes { "write" } else { "read" }, None)
        }
        FXP_SETSTAT => ("setstat", None),
        FXP_OPENDIR => ("list", None),
        FXP_REMOVE => ("remove", None),
        FXP_MKDIR => ("mkdir", None),
        FXP_RMDIR => ("rmdir", None),
        FXP_RENAME => ("rename", Some(r.string()?.into_owned())),
        // A symlink's two paths, as the client sent them.
        _ => ("symlink", Some(r.string()?.into_owned())),
    };
    Ok(Some(Operation { id, name, path, to }))
}

/// How the server answered request `id`: `Some(code)` for a STATUS, `Some(0)`
/// for a HANDLE; `None` when the packet is no such reply.
pub fn reply(packet: &[u8]) -> Option<(u32, u32)> {
    let mut r = Reader::new(packet.get(4..)?);
    let kind = r.u8().ok()?;
    let id = r.u32().ok()?;
    match kind {
        FXP_STATUS => Some((id, r.u32().ok()?)),
        FXP_HANDLE => Some((id, 0)),
        _ => None,
    }
}

/// A STATUS packet answering request `id` with `code` and `message`.
pub fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut body = vec![FXP_STATUS];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&code.to_be_bytes());
    for s in [message, "en"] {
        body.extend_from_slice(&(s.len() as u32).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut packet = (body.len() as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Reader { rest }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SftpError> {
        if self.rest.len() < n {
            return Err(SftpError::Malformed);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SftpError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SftpError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<Cow<'a, str>, SftpError> {
        let len = self.u32()? as usize;
        Ok(String::from_utf8_lossy(self.take(len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn packets_split_across_chunks_are_framed() {
        let open = packet(
            FXP_OPEN,
            7,
            &[&string("/srv/phi/a"), &0x1au32.to_be_bytes(), &0u32.to_be_bytes()],
        );
        let remove = packet(FXP_REMOVE, 8, &[&string("/tmp/x")]);
        let stream: Vec<u8> = open.iter().chain(&remove).copied().collect();
        let mut framer = Framer::default();
        let mut got = Vec::new();
        for chunk in stream.chunks(5) {
            framer.push(chunk);
            while let Some(p) = framer.next_packet().unwrap() {
                got.push(operation(&p).unwrap().unwrap());
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].id, got[0].name, got[0].path.as_str()),
            (7, "write", "/srv/phi/a")
        );
        assert_eq!((got[1].name, got[1].path.as_str()), ("remove", "/tmp/x"));
        let rename = packet(FXP_RENAME, 9, &[&string("/a"), &string("/srv/phi/b")]);
        let op = operation(&rename).unwrap().unwrap();
        assert_eq!(op.to.as_deref(), Some("/srv/phi/b"));
        let read = packet(FXP_OPEN, 10, &[&string("/a"), &1u32.to_be_bytes(), &0u32.to_be_bytes()]);
        assert_eq!(operation(&read).unwrap().unwrap().name, "read");
        // Reads and writes on handles are not decided one by one.
        assert_eq!(operation(&packet(5, 11, &[&string("h")])).unwrap(), None);
    }

    #[test]
    fn bad_packets_are_errors_and_replies_are_read() {
        let mut framer = Framer::default();
        framer.push(&u32::MAX.to_be_bytes());
        assert!(matches!(framer.next_packet(), Err(SftpError::TooLarge(_))));
        let truncated = packet(FXP_REMOVE, 1, &[&100u32.to_be_bytes(), b"short"]);
        assert_eq!(operation(&truncated), Err(SftpError::Malformed));
        assert_eq!(operation(&[0, 0, 0, 0]), Err(SftpError::Malformed));
        let refused = status(42, FX_PERMISSION_DENIED, "loopgate: no");
        assert_eq!(reply(&refused), Some((42, FX_PERMISSION_DENIED)));
        assert_eq!(reply(&packet(FXP_HANDLE, 5, &[&string("h")])), Some((5, 0)));
        let mut framer = Framer::default();
        framer.push(&refused);
        assert_eq!(framer.next_packet().unwrap(), Some(refused));
    }
}
