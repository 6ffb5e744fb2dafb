//! `loopgate audit verify`: walks the chain through every Parquet file and
//! the WAL and reports the first place where it does not hold.
use super::chain::{self, GENESIS_HASH};
use super::parquet::{self, ChainMeta};
use super::retention::{self, Anchor};
use super::row::{COMMAND_TEXT, EVENT_ID, HASH, HOST, KIND, PREV_HASH, Row, SEQ, int_at, str_at, time_at};
use super::{layout, wal};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// A chain that holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub files: usize,
    pub segments: usize,
    pub events: u64,
    /// Seq and hash of the newest event (0 and the genesis hash if empty).
    pub last_seq: u64,
    pub last_hash: String,
    /// The chain starts at a retention anchor rather than at genesis.
    pub anchored_at: Option<u64>,
}

/// Where and why the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub file: PathBuf,
    /// Row (Parquet) or record (WAL) index within `file`, from 0.
    pub row: Option<usize>,
    pub event_id: Option<String>,
    pub problem: String,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(row) = self.row {
            write!(f, ", row {row}")?;
        }
        if let Some(id) = &self.event_id {
            write!(f, ", event {id}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// The walk's state: what the next event must link to.
#[derive(Clone)]
pub(crate) struct Walk {
    anchor: Option<Anchor>,
    next: Option<(u64, String)>,
    events: u64,
    anchored_at: Option<u64>,
    vouched: bool,
    /// Seqs whose hashes a caller wants (checkpoints), and what was found.
    watch: std::collections::BTreeMap<u64, Option<String>>,
}

impl Walk {
    pub(crate) fn new(anchor: Option<Anchor>) -> Self {
        Walk {
            anchor,
            next: None,
            events: 0,
            anchored_at: None,
            vouched: false,
            watch: Default::default(),
        }
    }

    /// Remembers the hash of the event at `seq` when the walk passes it.
    pub(crate) fn watch(&mut self, seq: u64) {
        self.watch.insert(seq, None);
    }

    /// The hash of the event at a watched `seq`, if the walk got there.
    pub(crate) fn watched(&self, seq: u64) -> Option<&str> {
        self.watch.get(&seq).and_then(|h| h.as_deref())
    }

    /// Seq and hash of the last event walked (0 and genesis before any).
    pub(crate) fn head(&self) -> (u64, String) {
        match &self.next {
            Some((s, h)) => (s - 1, h.clone()),
            None => (0, GENESIS_HASH.to_owned()),
        }
    }

    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    fn check(&mut self, row: &Row, file: &Path, index: usize) -> Result<(), Broken> {
        let broken = |problem: String| Broken {
            file: file.to_owned(),
            row: Some(index),
            event_id: str_at(row, EVENT_ID).map(str::to_owned),
            problem,
        };
        let stored = str_at(row, HASH).unwrap_or_default();
        let hash = chain::row_hash(row);
        if stored != hash {
            return Err(broken(
                "hash does not match the row's contents (the row was changed)".into(),
            ));
        }
        let seq = int_at(row, SEQ).unwrap_or(0);
        let prev = str_at(row, PREV_HASH).unwrap_or_default();
        match &self.next {
            None => {
                let from_anchor = self
                    .anchor
                    .as_ref()
                    .is_some_and(|a| a.cut_seq + 1 == seq && a.cut_hash == prev);
                if from_anchor {
                    self.anchored_at = Some(seq);
                } else if seq != 1 || prev != GENESIS_HASH {
                    return Err(broken(format!(
                        "the chain starts at seq {seq}, not at seq 1 or a retention anchor \
                         (earlier events or files were removed)"
                    )));
                }
            }
            Some((next_seq, next_prev)) => {
                if seq != *next_seq {
                    return Err(broken(format!(
                        "seq {seq} where {next_seq} was expected \
                         (events are missing, duplicated or reordered)"
                    )));
                }
                if prev != next_prev {
                    return Err(broken(
                        "prev_hash does not match the previous event's hash \
                         (an event before it was changed or removed)"
                            .into(),
                    ));
                }
            }
        }
        if let Some(a) = &self.anchor
            && self.anchored_at.is_some()
            && str_at(row, KIND) == Some("retention")
            && str_at(row, COMMAND_TEXT).is_some_and(|t| retention::vouches_for(t, a.cut_seq, &a.cut_hash))
        {
            self.vouched = true;
        }
        if let Some(slot) = self.watch.get_mut(&seq) {
            *slot = Some(hash.clone());
        }
        self.next = Some((seq + 1, hash));
        self.events += 1;
        Ok(())
    }

    fn last_seq(&self) -> u64 {
        self.next.as_ref().map(|(s, _)| s - 1).unwrap_or(0)
    }
}

/// Verifies the store at `dir`. `Err(Ok(broken))` is a broken chain;
/// `Err(Err(msg))` means the store could not be read at all.
///
/// Safe on a running agent: when the WAL does not continue where the files
/// end because segments were converted meanwhile, the new files are
/// checked and the WAL is read again.
pub fn verify(dir: &Path) -> Result<Verified, Result<Broken, String>> {
    if !dir.is_dir() {
        return Err(Err(format!("{} is not a directory", dir.display())));
    }
    let anchor = retention::read_anchor(dir).map_err(Err)?;
    let mut walk = Walk::new(anchor);
    let mut checked: HashSet<PathBuf> = HashSet::new();
    let mut stale_passes = 0;
    let segments = loop {
        let files = layout::list_files(dir).map_err(|e| Err(format!("{}: {e}", dir.display())))?;
        let mut new_files = false;
        for f in &files {
            if checked.insert(f.path.clone()) {
                new_files = true;
                check_file(&mut walk, dir, &f.path).map_err(Ok)?;
            }
        }
        // WAL progress is kept only if the whole WAL checks out.
        let files_end = walk.clone();
        match check_wal(&mut walk, dir) {
            Ok(segments) => break segments,
            Err(e) => {
                stale_passes = if new_files { 0 } else { stale_passes + 1 };
                let changed = layout::list_files(dir).is_ok_and(|now| now.iter().any(|f| !checked.contains(&f.path)));
                if !changed && stale_passes >= 2 {
                    return Err(e);
                }
                walk = files_end;
            }
        }
    };
    walk.check_anchor_vouched(&dir.join(retention::ANCHOR_FILE))
        .map_err(Ok)?;
    let (last_seq, last_hash) = walk.head();
    Ok(Verified {
        files: checked.len(),
        segments,
        events: walk.events,
        last_seq,
        last_hash,
        anchored_at: walk.anchored_at,
    })
}

/// Continues the walk through the WAL; the number of segments read.
fn check_wal(walk: &mut Walk, dir: &Path) -> Result<usize, Result<Broken, String>> {
    let segments = wal::list_segments(dir).map_err(|e| Err(format!("{}: {e}", dir.display())))?;
    for (_, path) in &segments {
        let contents = wal::read_segment(path).map_err(|e| Err(format!("{}: {e}", path.display())))?;
        for (i, payload) in contents.payloads.iter().enumerate() {
            let row = chain::decode(payload).map_err(|e| {
                Ok(Broken {
                    file: path.clone(),
                    row: Some(i),
                    event_id: None,
                    problem: format!("undecodable record: {e}"),
                })
            })?;
            // A segment converted just before a crash is still on disk
            // until the next start; its events are already in a file.
            if int_at(&row, SEQ).is_some_and(|s| s <= walk.last_seq()) && walk.next.is_some() {
                continue;
            }
            walk.check(&row, path, i).map_err(Ok)?;
        }
    }
    Ok(segments.len())
}

fn check_file(walk: &mut Walk, dir: &Path, path: &Path) -> Result<(), Broken> {
    let (meta, rows) = parquet::read_file(path).map_err(|e| Broken {
        file: path.to_owned(),
        row: None,
        event_id: None,
        problem: format!("unreadable: {e}"),
    })?;
    let relative = path.strip_prefix(dir).ok().and_then(Path::to_str).unwrap_or_default();
    walk.check_file(path, relative, &meta, &rows)
}

impl Walk {
    /// Continues the walk through one chain file: `relative` is its path
    /// under the store's root (`date=…/host=…/name`), `shown` what errors
    /// call it.
    pub(crate) fn check_file(
        &mut self,
        shown: &Path,
        relative: &str,
        meta: &ChainMeta,
        rows: &[Row],
    ) -> Result<(), Broken> {
        let broken = |row: Option<usize>, event_id: Option<String>, problem: String| Broken {
            file: shown.to_owned(),
            row,
            event_id,
            problem,
        };
        let Some(first) = rows.first() else {
            return Err(broken(None, None, "file has no rows".into()));
        };
        let first_id = str_at(first, EVENT_ID).map(str::to_owned);
        // Files are ordered by the seq in their names; a name that does not
        // match the contents means files were renamed, swapped or planted.
        let expected = match (str_at(first, HOST), time_at(first), int_at(first, SEQ)) {
            (Some(host), Some(time), Some(seq)) => Some(layout::relative_path(host, time, seq)),
            _ => None,
        };
        if expected.as_deref() != Some(relative) {
            return Err(broken(
                Some(0),
                first_id,
                format!(
                    "file name does not match its first event (expected {}): \
                     the file was renamed, moved or swapped",
                    expected.unwrap_or_else(|| "?".into())
                ),
            ));
        }
        if self.next.is_some()
            && meta.prev_file_last_hash != self.next.as_ref().map(|n| n.1.clone()).unwrap_or_default()
        {
            return Err(broken(
                Some(0),
                first_id,
                "metadata prev_file_last_hash does not match the previous file's last hash \
                 (a file before it is missing, swapped or truncated)"
                    .into(),
            ));
        }
        for (i, row) in rows.iter().enumerate() {
            self.check(row, shown, i)?;
        }
        if ChainMeta::of(rows).as_ref() != Some(meta) {
            let last = rows.len() - 1;
            return Err(broken(
                Some(last),
                str_at(&rows[last], EVENT_ID).map(str::to_owned),
                "metadata (first/last hash, seq, rows) does not match the rows \
                 (rows were removed or added at the file's end)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A chain that started at a retention anchor must contain the
    /// retention event that vouches for it.
    pub(crate) fn check_anchor_vouched(&self, anchor_file: &Path) -> Result<(), Broken> {
        if let (Some(a), Some(_)) = (&self.anchor, self.anchored_at)
            && !self.vouched
        {
            return Err(Broken {
                file: anchor_file.to_owned(),
                row: None,
                event_id: None,
                problem: format!("no retention event in the chain records the cut at seq {}", a.cut_seq),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::row::{COMMAND_TEXT, Cell, event_to_row, tests::full_event};
    use crate::audit::{AuditConfig, AuditStore, layout::DataFile};

    /// A store of 1200 events in several files, closed.
    async fn store_with_files() -> (tempfile::TempDir, Vec<DataFile>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = AuditStore::open(AuditConfig {
            dir: dir.path().to_owned(),
            segment_max_bytes: 128 << 10,
            retention_check_secs: 1_000_000,
            ..AuditConfig::default()
        })
        .expect("open");
        for _ in 0..1200 {
            let mut e = full_event();
            e.event_id = uuid::Uuid::now_v7();
            store.append_seq(e).await.expect("append");
        }
        store.shutdown().await.expect("shutdown");
        let files = layout::list_files(dir.path()).expect("list");
        assert!(files.len() >= 4, "{} files", files.len());
        verify(dir.path()).expect("intact store verifies");
        (dir, files)
    }

    fn broken(dir: &Path) -> Broken {
        match verify(dir) {
            Err(Ok(b)) => b,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    fn id(rows: &[Row], i: usize) -> Option<String> {
        str_at(&rows[i], EVENT_ID).map(str::to_owned)
    }

    #[tokio::test]
    async fn a_changed_value_is_found_at_its_row() {
        let (dir, files) = store_with_files().await;
        let path = &files[1].path;
        let (_, mut rows) = parquet::read_file(path).expect("read");
        rows[5][COMMAND_TEXT] = Cell::Str(Some("SELECT 1".into()));
        parquet::write_file(path, &rows, 1000).expect("rewrite");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row, &b.event_id), (path, Some(5), &id(&rows, 5)));
        assert!(b.problem.contains("hash does not match"), "{b}");
    }

    #[tokio::test]
    async fn a_deleted_row_is_found_where_it_was() {
        let (dir, files) = store_with_files().await;
        let path = &files[1].path;
        let (_, mut rows) = parquet::read_file(path).expect("read");
        rows.remove(5);
        parquet::write_file(path, &rows, 1000).expect("rewrite");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row, &b.event_id), (path, Some(5), &id(&rows, 5)));
        assert!(b.problem.contains("expected"), "{b}");
    }

    #[tokio::test]
    async fn a_deleted_or_truncated_file_breaks_the_next_file() {
        let (dir, files) = store_with_files().await;
        std::fs::remove_file(&files[1].path).expect("rm");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row), (&files[2].path, Some(0)));
        assert!(b.problem.contains("previous file"), "{b}");

        let (dir, files) = store_with_files().await;
        let (_, mut rows) = parquet::read_file(&files[1].path).expect("read");
        rows.truncate(rows.len() - 2);
        parquet::write_file(&files[1].path, &rows, 1000).expect("rewrite");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row), (&files[2].path, Some(0)));
    }

    #[tokio::test]
    async fn the_first_file_cannot_go_missing() {
        let (dir, files) = store_with_files().await;
        std::fs::remove_file(&files[0].path).expect("rm");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row), (&files[1].path, Some(0)));
        assert!(b.problem.contains("retention anchor"), "{b}");
    }

    #[tokio::test]
    async fn swapped_files_are_found() {
        let (dir, files) = store_with_files().await;
        let (a, b_path) = (&files[1].path, &files[2].path);
        let tmp = dir.path().join("swap");
        std::fs::rename(a, &tmp).expect("mv");
        std::fs::rename(b_path, a).expect("mv");
        std::fs::rename(&tmp, b_path).expect("mv");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row), (a, Some(0)));
        assert!(b.problem.contains("file name does not match"), "{b}");
    }

    #[tokio::test]
    async fn forged_files_are_found() {
        // A replayed copy of an old file, planted after the newest one.
        let (dir, files) = store_with_files().await;
        let last = files.last().expect("files");
        let meta = parquet::read_meta(&last.path).expect("meta");
        let planted = layout::file_path(
            dir.path(),
            crate::audit::host_name(),
            crate::audit::Event::new(crate::audit::EventKind::Command).time_us,
            meta.last_seq + 1,
        );
        std::fs::copy(&files[0].path, &planted).expect("plant");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row), (&planted, Some(0)));

        // Fabricated events continuing the chain, without the right hashes.
        std::fs::remove_file(&planted).expect("rm");
        let mut prev = meta.last_hash.clone();
        let rows: Vec<Row> = (0..3u64)
            .map(|i| {
                let mut e = full_event();
                e.seq = meta.last_seq + 1 + i;
                e.prev_hash = prev.clone();
                e.hash = chain::hex(&[i as u8; 32]);
                prev = e.hash.clone();
                event_to_row(&e)
            })
            .collect();
        let forged = layout::file_path(
            dir.path(),
            crate::audit::host_name(),
            time_at(&rows[0]).expect("time"),
            meta.last_seq + 1,
        );
        parquet::write_file(&forged, &rows, 1000).expect("forge");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row, &b.event_id), (&forged, Some(0), &id(&rows, 0)));
        assert!(b.problem.contains("hash does not match"), "{b}");
    }

    #[tokio::test]
    async fn a_tampered_wal_record_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = AuditStore::open(AuditConfig {
            dir: dir.path().to_owned(),
            retention_check_secs: 1_000_000,
            ..AuditConfig::default()
        })
        .expect("open");
        for _ in 0..3 {
            store.append_seq(full_event()).await.expect("append");
        }
        drop(store);
        let (_, seg) = wal::list_segments(dir.path()).expect("ls").remove(0);
        let mut contents = wal::read_segment(&seg).expect("read");
        let mut row = chain::decode(&contents.payloads[1]).expect("decode");
        row[COMMAND_TEXT] = Cell::Str(Some("nothing to see".into()));
        // Re-frame with a valid checksum: only the chain can tell.
        let mut buf = b"LGWAL01\n".to_vec();
        let mut forged = Vec::new();
        chain::encode(&row, &mut forged);
        contents.payloads[1] = forged.into();
        for p in &contents.payloads {
            wal::frame(p, &mut buf);
        }
        std::fs::write(&seg, &buf).expect("write");
        let b = broken(dir.path());
        assert_eq!((&b.file, b.row), (&seg, Some(2)));
        assert!(b.problem.contains("prev_hash"), "{b}");
    }
}
