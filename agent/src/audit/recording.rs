//! Session recordings (asciicast v2 files) kept in the trail's day
//! partitions (`date=D/host=H/recording-SESSION-CHANNEL.cast`, sealed by a
//! rename when finished, so the shipper uploads them with the Parquet
//! files), and how an event refers to one: the `command_result` of a
//! recorded channel lists `recording=PATH` (relative to the audit directory) and
//! `recording_sha256=HEX` in its `command_parameters`, so the hash chain
//! covers the recording's content; `recording_cut=BYTES` says it was cut
//! at its size bound. `audit verify` recomputes every referenced hash.
use std::{
    fs,
    io::{self, Read as _},
    path::{Component, Path, PathBuf},
};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::row::{COMMAND_PARAMETERS, EVENT_ID, list_at, str_at};

const PATH_KEY: &str = "recording=";
const SHA_KEY: &str = "recording_sha256=";
const CUT_KEY: &str = "recording_cut=";

/// A finished recording as an event names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingRef {
    /// Relative to the audit directory, `date=D/host=H/recording-SESSION-CHANNEL.cast`.
    pub path: String,
    pub sha256: String,
    /// The size bound it was cut at, if it was.
    pub cut_at: Option<u64>,
}

impl RecordingRef {
    /// The entries of `command_parameters` that carry it.
    pub fn to_parameters(&self) -> Vec<String> {
        let mut p = vec![format!("{PATH_KEY}{}", self.path), format!("{SHA_KEY}{}", self.sha256)];
        if let Some(bytes) = self.cut_at {
            p.push(format!("{CUT_KEY}{bytes}"));
        }
        p
    }

    /// The recording named by an event's parameters, if any.
    pub fn from_parameters(parameters: &[String]) -> Option<Self> {
        let find = |key: &str| parameters.iter().find_map(|p| p.strip_prefix(key));
        Some(RecordingRef {
            path: find(PATH_KEY)?.to_owned(),
            sha256: find(SHA_KEY)?.to_owned(),
            cut_at: find(CUT_KEY).and_then(|v| v.parse().ok()),
        })
    }

    /// Its file under `audit_dir`; `None` for a path that leaves it.
    pub fn file(&self, audit_dir: &Path) -> Option<PathBuf> {
        let rel = Path::new(&self.path);
        let inside = rel.components().all(|c| matches!(c, Component::Normal(_)));
        inside.then(|| audit_dir.join(rel))
    }

    /// Checks the file against the recorded hash.
    pub fn check(&self, audit_dir: &Path) -> Result<(), String> {
        let file = self
            .file(audit_dir)
            .ok_or_else(|| format!("recording path {:?} leaves the audit directory", self.path))?;
        match sha256_file(&file) {
            Ok(hash) if hash == self.sha256 => Ok(()),
            Ok(hash) => Err(format!(
                "recording {} was rewritten: sha256 {hash}, recorded {}",
                self.path, self.sha256
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!("recording {} is missing", self.path)),
            Err(e) => Err(format!("recording {}: {e}", self.path)),
        }
    }
}

/// Every recording the trail refers to, checked against its hash.
pub struct Checked {
    /// Recordings checked.
    pub recordings: usize,
    /// Recordings of partitions retention deleted (not checked, not
    /// problems).
    pub expired: usize,
    /// One line per rewritten, missing or unreadable recording.
    pub problems: Vec<String>,
}

/// Reads the trail under `audit_dir` and checks each recording it names.
pub fn check_all(audit_dir: &Path) -> Result<Checked, super::reader::ReadError> {
    let mut refs = Vec::new();
    super::reader::read_after(audit_dir, 0, |row| {
        if let Some(r) = RecordingRef::from_parameters(list_at(row, COMMAND_PARAMETERS)) {
            refs.push((str_at(row, EVENT_ID).unwrap_or("?").to_owned(), r));
        }
    })?;
    // Partitions retention deleted: their recordings are gone by design.
    let deleted: Vec<String> = super::retention::read_anchor(audit_dir)
        .ok()
        .flatten()
        .map(|a| a.partitions)
        .unwrap_or_default();
    let mut expired = 0;
    let mut problems = Vec::new();
    for (event, r) in &refs {
        let Err(e) = r.check(audit_dir) else { continue };
        let date = r.path.strip_prefix("date=").and_then(|p| p.split('/').next());
        if date.is_some_and(|d| deleted.iter().any(|x| x == d)) && !r.file(audit_dir).is_some_and(|f| f.exists()) {
            expired += 1;
            continue;
        }
        problems.push(format!("event {event}: {e}"));
    }
    Ok(Checked {
        recordings: refs.len() - expired,
        expired,
        problems,
    })
}

/// The relative path of a new recording of `channel` in `session`,
/// started at `time_us`.
pub fn relative_path(time_us: i64, session: Uuid, channel: u32) -> String {
    let partition = super::layout::relative_path(super::host_name(), time_us, 0);
    let dir = partition.rsplit_once('/').map_or("", |(dir, _)| dir);
    format!("{dir}/recording-{session}-{channel}.cast")
}

/// Where a recording is written until it is finished (not sealed: the
/// shipper skips names starting with `.`).
pub fn unsealed(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.tmp"))
}

/// Lower-case hex of a digest, as the chain writes hashes.
pub fn hex(bytes: &[u8]) -> String {
    super::chain::hex(bytes)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_and_is_checked_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = relative_path(1_796_281_777_000_000, Uuid::nil(), 3);
        assert!(path.starts_with("date=2026-12-03/host="), "{path}");
        assert!(path.ends_with(&format!("/recording-{}-3.cast", Uuid::nil())), "{path}");
        let file = dir.path().join(&path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, b"{\"version\": 2}\n").unwrap();
        let r = RecordingRef {
            path,
            sha256: sha256_file(&file).unwrap(),
            cut_at: Some(10),
        };
        let mut params = vec!["other".to_owned()];
        params.extend(r.to_parameters());
        assert_eq!(RecordingRef::from_parameters(&params), Some(r.clone()));
        assert_eq!(RecordingRef::from_parameters(&["other".to_owned()]), None);
        assert_eq!(r.check(dir.path()), Ok(()));
        fs::write(&file, b"{\"version\": 2}\n[0.1, \"o\", \"x\"]\n").unwrap();
        assert!(r.check(dir.path()).unwrap_err().contains("was rewritten"));
        fs::remove_file(&file).unwrap();
        assert!(r.check(dir.path()).unwrap_err().contains("is missing"));
        let outside = RecordingRef {
            path: "../etc/passwd".into(),
            ..r
        };
        assert!(outside.check(dir.path()).unwrap_err().contains("leaves"));
    }
}
