//! A session recording (an SSH channel, a Kubernetes exec): asciicast v2 (a JSON header line, then one
//! `[seconds, code, data]` line per event: "o" output, "i" input, "r"
//! resize, "m" a marker), of the stream as the client saw it after
//! masking, never the raw one. It is hashed as it is written; it stops at
//! its size bound with a marker saying so. It is written under a hidden
//! name and renamed into its day partition when finished.
use std::{
    fs,
    io::{self, BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::{self, recording::RecordingRef};

/// Where a target's recordings go and how large they may grow.
pub struct Recordings {
    pub audit_dir: PathBuf,
    pub max_bytes: u64,
}

/// A recording being written.
pub struct Recorder {
    file: BufWriter<fs::File>,
    /// The hidden name it is written under, and its final one.
    writing: PathBuf,
    sealed: PathBuf,
    hasher: Sha256,
    path: String,
    started: Instant,
    written: u64,
    max_bytes: u64,
    cut: bool,
    failed: bool,
    /// `finish` ran: the file is no longer this recorder's to remove.
    finished: bool,
    /// The tail of a UTF-8 sequence split across chunks, per code.
    carry: [Vec<u8>; 2],
}

/// A recording dropped before `finish` (its command never ran: the server
/// refused the channel or the request) leaves no file behind.
impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.writing);
        }
    }
}

/// What the header says.
pub struct Header<'a> {
    pub cols: u32,
    pub rows: u32,
    pub term: Option<&'a str>,
    pub title: &'a str,
}

impl Recorder {
    /// Starts `date=D/host=H/recording-SESSION-CHANNEL.cast` under
    /// `audit_dir` (mode 0600) and writes its header.
    pub fn create(
        audit_dir: &Path,
        session: Uuid,
        channel: u32,
        max_bytes: u64,
        header: &Header<'_>,
    ) -> io::Result<Recorder> {
        let now = audit::now_us();
        let path = audit::recording::relative_path(now, session, channel);
        let sealed = audit_dir.join(&path);
        if let Some(parent) = sealed.parent() {
            fs::create_dir_all(parent)?;
        }
        let writing = audit::recording::unsealed(&sealed);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&writing)?;
        let mut r = Recorder {
            file: BufWriter::with_capacity(64 * 1024, file),
            writing,
            sealed,
            hasher: Sha256::new(),
            path,
            started: Instant::now(),
            written: 0,
            max_bytes,
            cut: false,
            failed: false,
            finished: false,
            carry: [Vec::new(), Vec::new()],
        };
        let mut head = serde_json::json!({
            "version": 2,
            "width": header.cols.max(1),
            "height": header.rows.max(1),
            "timestamp": now / 1_000_000,
            "title": header.title,
        });
        if let Some(term) = header.term {
            head["env"] = serde_json::json!({ "TERM": term });
        }
        r.line(head.to_string().as_bytes());
        Ok(r)
    }

    /// Output the client was sent (already masked).
    pub fn output(&mut self, bytes: &[u8]) {
        self.text_event(0, "o", bytes);
    }

    /// Input the client sent (already masked).
    pub fn input(&mut self, bytes: &[u8]) {
        self.text_event(1, "i", bytes);
    }

    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.event("r", &format!("{cols}x{rows}"));
    }

    /// From now on every write goes to `/dev/full` and fails at once, as
    /// on a full disk (tests of what a relay does then).
    #[cfg(test)]
    pub(crate) fn fail_writes(&mut self) {
        let full = fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
        self.file = BufWriter::with_capacity(1, full);
    }

    /// Whether a write failed: the relay stops there (no unrecorded output
    /// goes on).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Ends the file; what the audit event names, or `None` when it could
    /// not be written (the error is logged and the result says so).
    pub fn finish(mut self) -> Option<RecordingRef> {
        self.finished = true;
        for code in 0..2 {
            let rest = std::mem::take(&mut self.carry[code]);
            if !rest.is_empty() {
                let name = if code == 0 { "o" } else { "i" };
                self.event(name, &String::from_utf8_lossy(&rest));
            }
        }
        let done = self.file.flush().and_then(|()| self.file.get_ref().sync_data());
        if let Err(e) = done.and_then(|()| fs::rename(&self.writing, &self.sealed)) {
            tracing::error!(recording = %self.path, error = %e, "cannot write a session recording");
            self.failed = true;
        }
        (!self.failed).then(|| RecordingRef {
            path: std::mem::take(&mut self.path),
            sha256: audit::recording::hex(&std::mem::take(&mut self.hasher).finalize()),
            cut_at: self.cut.then_some(self.max_bytes),
        })
    }

    fn text_event(&mut self, code: usize, name: &str, bytes: &[u8]) {
        if bytes.is_empty() || self.cut || self.failed {
            return;
        }
        let mut data = std::mem::take(&mut self.carry[code]);
        data.extend_from_slice(bytes);
        // Keep back an incomplete UTF-8 sequence at the end for the next chunk.
        let keep = match std::str::from_utf8(&data) {
            Err(e) if e.error_len().is_none() => data.len() - e.valid_up_to(),
            _ => 0,
        };
        self.carry[code] = data.split_off(data.len() - keep);
        if !data.is_empty() {
            self.event(name, &String::from_utf8_lossy(&data));
        }
    }

    fn event(&mut self, name: &str, data: &str) {
        if self.cut || self.failed {
            return;
        }
        let t = self.started.elapsed().as_secs_f64();
        let line = serde_json::json!([(t * 1e6).round() / 1e6, name, data]).to_string();
        if self.written + line.len() as u64 + 1 > self.max_bytes {
            self.cut = true;
            let marker = format!("loopgate: recording cut at its bound of {} bytes", self.max_bytes);
            let line = serde_json::json!([(t * 1e6).round() / 1e6, "m", marker]).to_string();
            self.line(line.as_bytes());
            return;
        }
        self.line(line.as_bytes());
    }

    fn line(&mut self, bytes: &[u8]) {
        let written = self.file.write_all(bytes).and_then(|()| self.file.write_all(b"\n"));
        if let Err(e) = written {
            tracing::error!(recording = %self.path, error = %e, "cannot write a session recording");
            self.failed = true;
            return;
        }
        self.hasher.update(bytes);
        self.hasher.update(b"\n");
        self.written += bytes.len() as u64 + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header<'static> {
        Header {
            cols: 80,
            rows: 24,
            term: Some("xterm"),
            title: "shell",
        }
    }

    #[test]
    fn events_are_asciicast_lines_and_the_hash_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::create(dir.path(), Uuid::nil(), 0, 1 << 20, &header()).unwrap();
        r.output("caf\u{e9}".as_bytes().split_at(4).0);
        r.output(&[0xa9, b'\n']);
        r.input(b"ls\r");
        r.resize(100, 40);
        let done = r.finish().unwrap();
        assert_eq!(done.cut_at, None);
        assert_eq!(done.check(dir.path()), Ok(()));
        let text = fs::read_to_string(done.file(dir.path()).unwrap()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[0]["env"]["TERM"], "xterm");
        let events: Vec<(&str, &str)> = lines[1..]
            .iter()
            .map(|e| (e[1].as_str().unwrap(), e[2].as_str().unwrap()))
            .collect();
        assert_eq!(
            events,
            [("o", "caf"), ("o", "\u{e9}\n"), ("i", "ls\r"), ("r", "100x40")]
        );
    }

    #[test]
    fn a_recording_stops_at_its_bound_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::create(dir.path(), Uuid::nil(), 1, 300, &header()).unwrap();
        for _ in 0..100 {
            r.output(b"0123456789012345678901234567890123456789\n");
        }
        let done = r.finish().unwrap();
        assert_eq!(done.cut_at, Some(300));
        assert_eq!(done.check(dir.path()), Ok(()));
        let text = fs::read_to_string(done.file(dir.path()).unwrap()).unwrap();
        assert!(text.len() < 300 + 100, "{}", text.len());
        assert!(
            text.lines()
                .last()
                .unwrap()
                .contains("recording cut at its bound of 300 bytes")
        );
    }

    #[test]
    fn a_recording_that_cannot_be_kept_is_no_recording() {
        let dir = tempfile::tempdir().unwrap();
        // The audit directory is a file: no partition can be made.
        let file = dir.path().join("audit");
        fs::write(&file, "").unwrap();
        assert!(Recorder::create(&file, Uuid::nil(), 1, 1 << 20, &header()).is_err());
        // The partition goes away while the channel runs: nothing sealed.
        let audit = dir.path().join("store");
        let mut r = Recorder::create(&audit, Uuid::nil(), 2, 1 << 20, &header()).unwrap();
        fs::remove_dir_all(&audit).unwrap();
        r.output(b"ward rounds\n");
        assert!(r.finish().is_none());
    }

    #[test]
    fn a_recording_dropped_unfinished_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::create(dir.path(), Uuid::nil(), 3, 1 << 20, &header()).unwrap();
        let writing = r.writing.clone();
        assert!(writing.exists());
        drop(r);
        assert!(!writing.exists());
    }
}
