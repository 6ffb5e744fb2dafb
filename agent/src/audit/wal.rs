//! Write-ahead log segments: `<dir>/wal/<first seq, 20 digits>.wal`.
//!
//! A segment is an 8-byte magic followed by records `[len u32 LE][crc32 u32
//! LE][payload]`; the payload is a row's canonical encoding. A crash can
//! leave a torn last record; [`read_segment`] stops at the first record that
//! does not check out and reports where the good prefix ends.
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LGWAL01\n";
const HEADER: usize = 8;
/// Larger records are treated as corruption, not allocated.
const MAX_RECORD: usize = 16 << 20;

pub fn wal_dir(dir: &Path) -> PathBuf {
    dir.join("wal")
}

pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    wal_dir(dir).join(format!("{first_seq:020}.wal"))
}

/// Segments in the store's WAL directory, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(wal_dir(dir)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Appends records to one segment file.
pub struct SegmentWriter {
    file: File,
    pub path: PathBuf,
    /// Bytes known to be fully written (header plus whole records).
    pub len: u64,
    pub created: std::time::Instant,
}

impl SegmentWriter {
    /// Creates a new segment and makes its directory entry durable.
    pub fn create(dir: &Path, first_seq: u64) -> io::Result<Self> {
        let path = segment_path(dir, first_seq);
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(&wal_dir(dir))?;
        Ok(SegmentWriter {
            file,
            path,
            len: HEADER as u64,
            created: std::time::Instant::now(),
        })
    }

    /// Writes framed records (see [`frame`]) in one call. On error the
    /// segment is cut back to its last whole record so a retry starts clean.
    pub fn write(&mut self, framed: &[u8]) -> io::Result<()> {
        match self.file.write_all(framed) {
            Ok(()) => {
                self.len += framed.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: if this fails too, recovery on the next
                // start cuts the torn record by its checksum.
                let _ = self.file.set_len(self.len);
                let _ = self.file.seek(SeekFrom::Start(self.len));
                Err(e)
            }
        }
    }

    /// A second handle, for fsync on another thread.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Appends one framed record for `payload` to `out`.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A segment's whole records, and where the good prefix ends.
pub struct SegmentContents {
    /// Slices of one buffer holding the segment.
    pub payloads: Vec<Bytes>,
    pub good_len: u64,
    pub file_len: u64,
}

/// Reads every whole, checksummed record of a segment.
pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let bytes = Bytes::from(std::fs::read(path)?);
    let file_len = bytes.len() as u64;
    let mut payloads = Vec::new();
    if bytes.len() < HEADER || &bytes[..HEADER] != MAGIC {
        // A segment torn before its header was durable holds nothing.
        return Ok(SegmentContents {
            payloads,
            good_len: 0,
            file_len,
        });
    }
    let mut at = HEADER;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        payloads.push(bytes.slice(at + 8..at + 8 + len));
        at += 8 + len;
    }
    Ok(SegmentContents {
        payloads,
        good_len: at as u64,
        file_len,
    })
}

/// Cuts a segment back to its good prefix and makes that durable.
pub fn truncate_segment(path: &Path, good_len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(good_len)?;
    file.sync_all()
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_records(dir: &Path, n: usize) -> PathBuf {
        std::fs::create_dir_all(wal_dir(dir)).expect("wal dir");
        let mut w = SegmentWriter::create(dir, 1).expect("create");
        let mut buf = Vec::new();
        for i in 0..n {
            frame(format!("record {i}").as_bytes(), &mut buf);
        }
        w.write(&buf).expect("write");
        w.sync().expect("sync");
        w.path
    }

    #[test]
    fn reads_back_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_records(dir.path(), 5);
        let c = read_segment(&path).expect("read");
        assert_eq!(c.payloads.len(), 5);
        assert_eq!(c.payloads[4], &b"record 4"[..]);
        assert_eq!(c.good_len, c.file_len);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_records(dir.path(), 5);
        let full = std::fs::metadata(&path).expect("stat").len();
        // Every cut inside the last record keeps exactly the first four.
        let last_len = 8 + "record 4".len() as u64;
        for cut in 1..last_len {
            let f = OpenOptions::new().write(true).open(&path).expect("open");
            f.set_len(full - cut).expect("cut");
            let c = read_segment(&path).expect("read");
            assert_eq!(c.payloads.len(), 4, "cut {cut}");
            assert_eq!(c.good_len, full - last_len);
        }
    }

    #[test]
    fn a_corrupted_record_ends_the_good_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_records(dir.path(), 3);
        let mut bytes = std::fs::read(&path).expect("read");
        let second_payload = HEADER + 8 + "record 0".len() + 8;
        bytes[second_payload] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let c = read_segment(&path).expect("read");
        assert_eq!(c.payloads, vec![Bytes::from_static(b"record 0")]);
        truncate_segment(&path, c.good_len).expect("truncate");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), c.good_len);
    }
}
