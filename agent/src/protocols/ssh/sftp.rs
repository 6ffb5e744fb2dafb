//! SFTP as OpenSSH speaks it (version 3, draft-ietf-secsh-filexfer-02):
//! framing of the packet stream in both directions, the requests loopgate
//! decides one by one (opens, removals, renames, directories, attribute
//! changes), the server's replies that end them, and the STATUS packet
//! loopgate answers a refused request with. Checked decoding: a packet
//! that does not parse is a protocol error, never a panic.
use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// The largest packet accepted (OpenSSH's sftp-server allows 256 KiB).
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_OPENDIR: u8 = 11;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_REALPATH: u8 = 16;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
const FXP_EXTENDED: u8 = 200;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_NAME: u8 = 104;

const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;

/// `SSH_FX_FAILURE`.
pub const FX_FAILURE: u32 = 4;
/// `SSH_FX_PERMISSION_DENIED`.
pub const FX_PERMISSION_DENIED: u32 = 3;
/// `SSH_FX_OP_UNSUPPORTED`.
pub const FX_OP_UNSUPPORTED: u32 = 8;

/// Extensions that change files, by name, as the operation they are.
const CHANGING_EXTENSIONS: &[(&str, &str)] = &[
    ("posix-rename@openssh.com", "rename"),
    ("hardlink@openssh.com", "link"),
    ("lsetstat@openssh.com", "setstat"),
];

/// Extensions that read metadata or act on handles whose open was decided
/// (`copy-data` writes only into a handle opened for writing).
const PASSING_EXTENSIONS: &[&str] = &[
    "statvfs@openssh.com",
    "fstatvfs@openssh.com",
    "fsync@openssh.com",
    "limits@openssh.com",
    "expand-path@openssh.com",
    "home-directory",
    "users-groups-by-id@openssh.com",
    "copy-data",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SftpError {
    #[error("SFTP packet of {0} bytes is larger than loopgate accepts")]
    TooLarge(usize),
    #[error("malformed SFTP packet")]
    Malformed,
    #[error("an SFTP path that is not UTF-8")]
    NotUtf8,
}

/// Splits a byte stream into SFTP packets (length prefix included); a
/// packet is handed out without copying it again.
#[derive(Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The bytes buffered that are no complete packet yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next complete packet, if one is buffered.
    pub fn next_packet(&mut self) -> Result<Option<Bytes>, SftpError> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = packet_len(len)?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(4 + len).freeze()))
    }
}

/// The length a packet's prefix gives, checked.
fn packet_len(prefix: &[u8]) -> Result<usize, SftpError> {
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    match len {
        0 => Err(SftpError::Malformed),
        len if len > MAX_PACKET => Err(SftpError::TooLarge(len)),
        len => Ok(len),
    }
}

/// Reads the server's packet stream for what loopgate records — each
/// reply's id, a STATUS code, a HANDLE, a NAME — while the stream itself
/// is relayed as it came: the body of a DATA or ATTRS reply (a download's
/// bulk) is skipped as it passes, never copied.
#[derive(Default)]
pub struct ReplyScanner {
    /// The current packet as far as it is kept: all of a reply loopgate
    /// reads, the first 9 bytes (length, type, id) of another.
    head: Vec<u8>,
    /// Bytes of the current packet still to pass unread.
    skip: usize,
}

impl ReplyScanner {
    /// Reads `data`, the next bytes of the stream; the replies it ends go
    /// to `replies`.
    pub fn push(&mut self, mut data: &[u8], replies: &mut Vec<Reply>) -> Result<(), SftpError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
            }
            let want = self.wanted()?;
            if self.head.len() < want {
                if data.is_empty() {
                    return Ok(());
                }
                let n = (want - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..n]);
                data = &data[n..];
                continue;
            }
            if let Some(reply) = reply(&self.head) {
                replies.push(reply);
            }
            self.skip = 4 + packet_len(&self.head)? - self.head.len();
            self.head.clear();
        }
    }

    /// How many bytes of the stream may pass before a packet boundary
    /// could be: 0 at one, else the rest of the current packet (or of its
    /// length field, while that is not whole). loopgate's own packets go
    /// to the client only at a boundary.
    pub fn to_boundary(&self) -> usize {
        if self.skip > 0 {
            return self.skip;
        }
        match self.head.get(..4).map(packet_len) {
            None => (4 - self.head.len()) % 4,
            Some(Ok(len)) => 4 + len - self.head.len(),
            // A length it cannot take: the stream is not read on.
            Some(Err(_)) => 0,
        }
    }

    /// How much of the current packet is kept.
    fn wanted(&self) -> Result<usize, SftpError> {
        let Some(prefix) = self.head.get(..4) else {
            return Ok(5);
        };
        let len = packet_len(prefix)?;
        let Some(&kind) = self.head.get(4) else {
            return Ok(5);
        };
        let whole = matches!(kind, FXP_VERSION | FXP_STATUS | FXP_HANDLE | FXP_NAME);
        Ok(if whole { 4 + len } else { (4 + len).min(9) })
    }
}

/// A request loopgate decides: its id, what it does and to which paths
/// (as the client wrote them; `sftp_path` resolves them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: u32,
    /// `read`, `write`, `list`, `remove`, `rename`, `link`, `mkdir`,
    /// `rmdir`, `setstat`, `symlink`.
    pub name: &'static str,
    pub path: String,
    /// The second path of a rename or hard link (the new name) or a
    /// symlink (the link).
    pub to: Option<String>,
}

/// What a client packet asks for, as loopgate treats it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The version negotiation that opens the session.
    Init,
    /// An operation decided on its paths.
    Path(Operation),
    /// An operation on an open handle decided on the path the handle was
    /// opened for (`fsetstat`).
    Handle {
        id: u32,
        name: &'static str,
        handle: Vec<u8>,
    },
    /// A handle closed: forwarded, and the handle forgotten.
    Close { id: u32, handle: Vec<u8> },
    /// Not decided one by one: reads and writes on open handles, stat,
    /// readdir, realpath, readlink and the metadata extensions.
    Pass { id: u32 },
    /// An extension loopgate does not know: refused, since what it does
    /// cannot be decided.
    Unknown { id: u32, extension: String },
    /// A path that is not UTF-8: refused, since the path loopgate would
    /// decide (and ask the server about) is not the one the server opens.
    NotUtf8 { id: u32 },
}

/// Reads a client packet.
pub fn request(packet: &[u8]) -> Result<Request, SftpError> {
    let mut r = Reader::new(packet.get(4..).ok_or(SftpError::Malformed)?);
    let kind = r.u8()?;
    if kind == FXP_INIT {
        return Ok(Request::Init);
    }
    let id = r.u32()?;
    match decided(kind, id, &mut r) {
        Err(SftpError::NotUtf8) => Ok(Request::NotUtf8 { id }),
        other => other,
    }
}

/// A client request after its type and id.
fn decided(kind: u8, id: u32, r: &mut Reader<'_>) -> Result<Request, SftpError> {
    let path_op = |name, r: &mut Reader<'_>, two: bool| -> Result<Request, SftpError> {
        let path = r.request_path()?;
        let to = if two { Some(r.request_path()?) } else { None };
        Ok(Request::Path(Operation { id, name, path, to }))
    };
    match kind {
        FXP_OPEN => {
            let path = r.request_path()?;
            let flags = r.u32()?;
            let writes = flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC) != 0;
            let name = if writes { "write" } else { "read" };
            Ok(Request::Path(Operation {
                id,
                name,
                path,
                to: None,
            }))
        }
        FXP_SETSTAT => path_op("setstat", r, false),
        FXP_OPENDIR => path_op("list", r, false),
        FXP_REMOVE => path_op("remove", r, false),
        FXP_MKDIR => path_op("mkdir", r, false),
        FXP_RMDIR => path_op("rmdir", r, false),
        FXP_RENAME => path_op("rename", r, true),
        // A symlink's two paths, as the client sent them.
        FXP_SYMLINK => path_op("symlink", r, true),
        FXP_FSETSTAT => Ok(Request::Handle {
            id,
            name: "setstat",
            handle: r.bytes()?.to_vec(),
        }),
        FXP_CLOSE => Ok(Request::Close {
            id,
            handle: r.bytes()?.to_vec(),
        }),
        FXP_EXTENDED => {
            let extension = r.string()?.into_owned();
            if let Some((_, name)) = CHANGING_EXTENSIONS.iter().find(|(e, _)| *e == extension) {
                return path_op(name, r, *name != "setstat");
            }
            if PASSING_EXTENSIONS.contains(&extension.as_str()) {
                return Ok(Request::Pass { id });
            }
            Ok(Request::Unknown { id, extension })
        }
        _ => Ok(Request::Pass { id }),
    }
}

/// A server packet, as far as loopgate reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Version,
    /// A STATUS: the request's result code (0 is success).
    Status {
        id: u32,
        code: u32,
    },
    /// A HANDLE: the open succeeded.
    Handle {
        id: u32,
        handle: Vec<u8>,
    },
    /// A NAME: the first name (a realpath's answer).
    Name {
        id: u32,
        first: Option<String>,
    },
    /// Data or attributes.
    Other {
        id: u32,
    },
}

/// Reads a server packet; `None` when it is too short to be one.
pub fn reply(packet: &[u8]) -> Option<Reply> {
    let mut r = Reader::new(packet.get(4..)?);
    let kind = r.u8().ok()?;
    if kind == FXP_VERSION {
        return Some(Reply::Version);
    }
    let id = r.u32().ok()?;
    Some(match kind {
        FXP_STATUS => Reply::Status {
            id,
            code: r.u32().ok()?,
        },
        FXP_HANDLE => Reply::Handle {
            id,
            handle: r.bytes().ok()?.to_vec(),
        },
        FXP_NAME => {
            let count = r.u32().ok()?;
            let first = (count > 0).then(|| r.path().ok()).flatten();
            Reply::Name { id, first }
        }
        _ => Reply::Other { id },
    })
}

/// The INIT that opens a session, version 3 (OpenSSH's).
pub fn init() -> Vec<u8> {
    let mut body = vec![FXP_INIT];
    body.extend_from_slice(&3u32.to_be_bytes());
    packet(body)
}

/// A REALPATH request for `path`.
pub fn realpath(id: u32, path: &str) -> Vec<u8> {
    let mut body = vec![FXP_REALPATH];
    body.extend_from_slice(&id.to_be_bytes());
    put_string(&mut body, path);
    packet(body)
}

/// A STATUS packet answering request `id` with `code` and `message`.
pub fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut body = vec![FXP_STATUS];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&code.to_be_bytes());
    put_string(&mut body, message);
    put_string(&mut body, "en");
    packet(body)
}

fn put_string(body: &mut Vec<u8>, s: &str) {
    body.extend_from_slice(&(s.len() as u32).to_be_bytes());
    body.extend_from_slice(s.as_bytes());
}

fn packet(body: Vec<u8>) -> Vec<u8> {
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

    fn bytes(&mut self) -> Result<&'a [u8], SftpError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<Cow<'a, str>, SftpError> {
        Ok(String::from_utf8_lossy(self.bytes()?))
    }

    /// A path: a NUL in it is malformed (the server's C strings would end
    /// there, so the path decided would not be the path opened). Bytes
    /// that are no UTF-8 become U+FFFD, which keeps every `/` and `.`
    /// where it was (a server's answer: a PHI prefix stays a PHI prefix).
    fn path(&mut self) -> Result<String, SftpError> {
        let raw = self.bytes()?;
        if raw.contains(&0) {
            return Err(SftpError::Malformed);
        }
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    /// A client's path: as [`path`](Self::path), but bytes that are no
    /// UTF-8 are [`SftpError::NotUtf8`]. The path is sent to the server as
    /// a question (`REALPATH`), and a replaced byte would ask about
    /// another file than the one the request opens.
    fn request_path(&mut self) -> Result<String, SftpError> {
        let raw = self.bytes()?;
        if raw.contains(&0) {
            return Err(SftpError::Malformed);
        }
        String::from_utf8(raw.to_vec()).map_err(|_| SftpError::NotUtf8)
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

    fn op(packet: &[u8]) -> Operation {
        match request(packet).unwrap() {
            Request::Path(op) => op,
            other => panic!("not decided on a path: {other:?}"),
        }
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
                got.push(op(&p));
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].id, got[0].name, got[0].path.as_str()),
            (7, "write", "/srv/phi/a")
        );
        assert_eq!((got[1].name, got[1].path.as_str()), ("remove", "/tmp/x"));
        assert!(framer.buffered().is_empty());
        let rename = packet(FXP_RENAME, 9, &[&string("/a"), &string("/srv/phi/b")]);
        assert_eq!(op(&rename).to.as_deref(), Some("/srv/phi/b"));
        let read = packet(FXP_OPEN, 10, &[&string("/a"), &1u32.to_be_bytes(), &0u32.to_be_bytes()]);
        assert_eq!(op(&read).name, "read");
        // Reads and writes on handles are not decided one by one.
        assert_eq!(
            request(&packet(5, 11, &[&string("h")])).unwrap(),
            Request::Pass { id: 11 }
        );
    }

    #[test]
    fn extensions_that_change_files_are_decided_and_unknown_ones_refused() {
        let ext = |name: &str, fields: &[&[u8]]| {
            let mut all = vec![string(name)];
            all.extend(fields.iter().map(|f| f.to_vec()));
            let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
            packet(FXP_EXTENDED, 3, &refs)
        };
        let rename = op(&ext(
            "posix-rename@openssh.com",
            &[&string("/a"), &string("/srv/phi/b")],
        ));
        assert_eq!((rename.name, rename.to.as_deref()), ("rename", Some("/srv/phi/b")));
        let link = op(&ext(
            "hardlink@openssh.com",
            &[&string("/srv/phi/a"), &string("/tmp/a")],
        ));
        assert_eq!((link.name, link.path.as_str()), ("link", "/srv/phi/a"));
        let lset = op(&ext(
            "lsetstat@openssh.com",
            &[&string("/srv/phi"), &0u32.to_be_bytes()],
        ));
        assert_eq!((lset.name, lset.to), ("setstat", None));
        assert_eq!(
            request(&ext("statvfs@openssh.com", &[&string("/")])).unwrap(),
            Request::Pass { id: 3 }
        );
        assert_eq!(
            request(&ext("rm-rf@example.com", &[])).unwrap(),
            Request::Unknown {
                id: 3,
                extension: "rm-rf@example.com".into()
            }
        );
        let fsetstat = packet(FXP_FSETSTAT, 4, &[&string("h1"), &0u32.to_be_bytes()]);
        assert_eq!(
            request(&fsetstat).unwrap(),
            Request::Handle {
                id: 4,
                name: "setstat",
                handle: b"h1".to_vec()
            }
        );
        let close = packet(FXP_CLOSE, 5, &[&string("h1")]);
        assert_eq!(
            request(&close).unwrap(),
            Request::Close {
                id: 5,
                handle: b"h1".to_vec()
            }
        );
    }

    #[test]
    fn a_request_path_that_is_not_utf8_is_refused_by_id() {
        let mut raw = b"/home/app/".to_vec();
        raw.push(0xff);
        raw.extend_from_slice(b"/x");
        let mut name = (raw.len() as u32).to_be_bytes().to_vec();
        name.extend_from_slice(&raw);
        let open = packet(FXP_OPEN, 5, &[&name, &FXF_WRITE.to_be_bytes(), &0u32.to_be_bytes()]);
        assert_eq!(request(&open), Ok(Request::NotUtf8 { id: 5 }));
        let rename = packet(FXP_RENAME, 6, &[&string("/tmp/a"), &name]);
        assert_eq!(request(&rename), Ok(Request::NotUtf8 { id: 6 }));
    }

    #[test]
    fn a_nul_in_a_path_is_malformed() {
        let remove = packet(FXP_REMOVE, 1, &[&string("/srv/phi\0/../../tmp/x")]);
        assert_eq!(request(&remove), Err(SftpError::Malformed));
    }

    #[test]
    fn bad_packets_are_errors_and_replies_are_read() {
        let mut framer = Framer::default();
        framer.push(&u32::MAX.to_be_bytes());
        assert!(matches!(framer.next_packet(), Err(SftpError::TooLarge(_))));
        let truncated = packet(FXP_REMOVE, 1, &[&100u32.to_be_bytes(), b"short"]);
        assert_eq!(request(&truncated), Err(SftpError::Malformed));
        assert_eq!(request(&[0, 0, 0, 0]), Err(SftpError::Malformed));
        let refused = status(42, FX_PERMISSION_DENIED, "loopgate: no");
        assert_eq!(
            reply(&refused),
            Some(Reply::Status {
                id: 42,
                code: FX_PERMISSION_DENIED
            })
        );
        assert_eq!(
            reply(&packet(FXP_HANDLE, 5, &[&string("h")])),
            Some(Reply::Handle {
                id: 5,
                handle: b"h".to_vec()
            })
        );
        let name = packet(FXP_NAME, 6, &[&1u32.to_be_bytes(), &string("/home/u"), &string("l")]);
        assert_eq!(
            reply(&name),
            Some(Reply::Name {
                id: 6,
                first: Some("/home/u".into())
            })
        );
        let mut framer = Framer::default();
        framer.push(&refused);
        assert_eq!(framer.next_packet().unwrap().as_deref(), Some(&refused[..]));
    }

    #[test]
    fn server_replies_are_read_and_data_skipped_at_any_cut() {
        let data = packet(103, 7, &[&string(&"x".repeat(100_000))]);
        let handle = packet(FXP_HANDLE, 8, &[&string("h1")]);
        let status = status(9, FX_PERMISSION_DENIED, "no");
        let (d, h) = (data.len(), data.len() + handle.len());
        let stream: Vec<u8> = [data, handle, status].concat();
        for cut in [1, 3, 9, 4096, stream.len()] {
            let mut scanner = ReplyScanner::default();
            let mut replies = Vec::new();
            for chunk in stream.chunks(cut) {
                scanner.push(chunk, &mut replies).unwrap();
            }
            assert_eq!(
                replies,
                [
                    Reply::Other { id: 7 },
                    Reply::Handle {
                        id: 8,
                        handle: b"h1".to_vec()
                    },
                    Reply::Status {
                        id: 9,
                        code: FX_PERMISSION_DENIED
                    },
                ],
                "cut {cut}"
            );
            assert!(scanner.head.capacity() < 1024, "a data body was kept");
        }
        // Fed in steps of what `to_boundary` allows, it stops exactly at
        // each packet's end (where loopgate may put a packet of its own).
        for cut in [1, 3, 9, 4096, stream.len()] {
            let mut scanner = ReplyScanner::default();
            let (mut at, mut boundaries) = (0, Vec::new());
            while at < stream.len() {
                // At a boundary, the next length field first.
                let n = match scanner.to_boundary() {
                    0 => cut.min(4),
                    n => n.min(cut),
                }
                .min(stream.len() - at);
                scanner.push(&stream[at..at + n], &mut Vec::new()).unwrap();
                at += n;
                if scanner.to_boundary() == 0 {
                    boundaries.push(at);
                }
            }
            assert!(
                boundaries.contains(&d) && boundaries.contains(&h),
                "cut {cut}: {boundaries:?}"
            );
            assert_eq!(boundaries.last(), Some(&stream.len()));
            assert!(
                boundaries.iter().all(|b| [d, h, stream.len()].contains(b)),
                "cut {cut}: {boundaries:?}"
            );
        }
        let mut scanner = ReplyScanner::default();
        assert!(matches!(
            scanner.push(&u32::MAX.to_be_bytes(), &mut Vec::new()),
            Err(SftpError::TooLarge(_))
        ));
    }

    #[test]
    fn a_long_stream_is_framed_without_keeping_what_was_read() {
        let remove = packet(FXP_REMOVE, 8, &[&string("/tmp/x")]);
        let mut framer = Framer::default();
        for _ in 0..100_000 {
            framer.push(&remove);
            assert!(framer.next_packet().unwrap().is_some());
        }
        assert!(framer.buf.is_empty());
    }
}
