//! Reads the store in chain order: Parquet files, then the WAL segments not
//! yet converted, so `tail` and `replay` see every acknowledged event.
//! Safe against a running agent: a segment converted mid-read shows up as a
//! gap, and the read resumes from the files.
use super::row::{Row, SEQ, int_at};
use super::{layout, parquet, wal};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] parquet::FileError),
    #[error("{path}: {problem}")]
    Record { path: std::path::PathBuf, problem: String },
    #[error("no event follows seq {after}: a file or WAL segment is missing (run `loopgate audit verify`)")]
    Gap { after: u64 },
}

/// Calls `emit` for every event with seq > `after`, in seq order, and
/// returns the last seq emitted (or `after`).
pub fn read_after(dir: &Path, after: u64, mut emit: impl FnMut(&Row)) -> Result<u64, ReadError> {
    let mut last = after;
    let mut stuck = 0;
    loop {
        let before = last;
        last = read_files(dir, last, &mut emit)?;
        match read_wal(dir, last, &mut emit)? {
            WalRead::Done(seq) => return Ok(seq),
            // A segment became a file between our two listings: read on
            // from the files. Only a gap that stays is an error.
            WalRead::Gap(seq) => {
                stuck = if seq > before { 0 } else { stuck + 1 };
                if stuck >= 10 {
                    return Err(ReadError::Gap { after: seq });
                }
                if stuck > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                last = seq;
            }
        }
    }
}

/// Seq of the newest event, from the newest WAL record or file footer;
/// cheap, so `tail -n` reads only the end of the store.
pub fn head_seq(dir: &Path) -> Result<u64, ReadError> {
    let segments = wal::list_segments(dir).map_err(|source| ReadError::Io {
        path: wal::wal_dir(dir),
        source,
    })?;
    for (_, path) in segments.iter().rev() {
        let Ok(contents) = wal::read_segment(path) else {
            continue;
        };
        if let Some(last) = contents.payloads.last()
            && let Ok(row) = super::chain::decode(last)
            && let Some(seq) = int_at(&row, SEQ)
        {
            return Ok(seq);
        }
    }
    let files = layout::list_files(dir).map_err(|source| ReadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    match files.last() {
        Some(f) => Ok(parquet::read_meta(&f.path)?.last_seq),
        None => Ok(0),
    }
}

fn read_files(dir: &Path, after: u64, emit: &mut impl FnMut(&Row)) -> Result<u64, ReadError> {
    let files = layout::list_files(dir).map_err(|source| ReadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut last = after;
    for (i, f) in files.iter().enumerate() {
        // A file ends before the next one starts: skip what was read.
        if files.get(i + 1).is_some_and(|next| next.first_seq <= last + 1) {
            continue;
        }
        let (_, rows) = match parquet::read_file(&f.path) {
            Ok(r) => r,
            // Retention may delete old files under us.
            Err(parquet::FileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for row in &rows {
            let seq = int_at(row, SEQ).unwrap_or(0);
            if seq > last {
                emit(row);
                last = seq;
            }
        }
    }
    Ok(last)
}

enum WalRead {
    Done(u64),
    Gap(u64),
}

fn read_wal(dir: &Path, after: u64, emit: &mut impl FnMut(&Row)) -> Result<WalRead, ReadError> {
    let segments = wal::list_segments(dir).map_err(|source| ReadError::Io {
        path: wal::wal_dir(dir),
        source,
    })?;
    let mut last = after;
    for (_, path) in segments {
        let contents = match wal::read_segment(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(WalRead::Gap(last)),
            Err(source) => return Err(ReadError::Io { path, source }),
        };
        for payload in &contents.payloads {
            let row = super::chain::decode(payload).map_err(|e| ReadError::Record {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            let seq = int_at(&row, SEQ).unwrap_or(0);
            if seq <= last {
                continue;
            }
            if last > 0 && seq != last + 1 {
                return Ok(WalRead::Gap(last));
            }
            emit(&row);
            last = seq;
        }
    }
    Ok(WalRead::Done(last))
}

/// Every event in chain order (files, then the WAL); for tools and tests.
pub fn events(dir: &Path) -> Result<Vec<super::Event>, ReadError> {
    let mut out = Vec::new();
    let mut bad = None;
    read_after(dir, 0, |row| match super::row::row_to_event(row) {
        Ok(e) => out.push(e),
        Err(e) => bad = Some(e.to_string()),
    })?;
    match bad {
        Some(problem) => Err(ReadError::Record {
            path: dir.to_owned(),
            problem,
        }),
        None => Ok(out),
    }
}
