//! Retention: deletes day partitions older than the configured age, with
//! the session recordings in them.
//!
//! Deleting the oldest files removes the start of the chain, so the store
//! first appends a `retention` event naming the cut (seq and hash of the
//! last deleted event), then writes that cut to `retention-anchor.json`.
//! `verify` starts the chain from the anchor and checks that a retention
//! event in the chain vouches for it.
use super::event::{CommandInfo, Decision, Event, EventKind, Verdict};
use super::layout::{self, DataFile};
use super::{parquet, wal};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const ANCHOR_FILE: &str = "retention-anchor.json";

/// Where the retained chain starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Seq and hash of the last deleted event: the first kept event links to it.
    pub cut_seq: u64,
    pub cut_hash: String,
    /// Seq of the retention event that recorded the deletion.
    pub event_seq: u64,
    pub partitions: Vec<String>,
}

pub struct Plan {
    files: Vec<DataFile>,
    /// Recordings in the partitions the files leave.
    recordings: Vec<std::path::PathBuf>,
    partitions: Vec<String>,
    cut_seq: u64,
    cut_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub partitions: Vec<String>,
    pub files: usize,
    pub recordings: usize,
    pub cut_seq: u64,
    pub cut_hash: String,
    pub event_seq: u64,
}

/// The oldest run of files whose day partition is past retention, if any;
/// the run stops at the first file `may_delete` refuses (not yet shipped).
pub fn plan(
    dir: &Path,
    retention_days: u32,
    now_us: i64,
    may_delete: impl Fn(&DataFile) -> bool,
) -> Result<Option<Plan>, String> {
    let cutoff = layout::date_of(now_us - i64::from(retention_days) * 86_400_000_000);
    let files = layout::list_files(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    let expired: Vec<DataFile> = files
        .into_iter()
        .take_while(|f| f.date < cutoff && may_delete(f))
        .collect();
    let Some(last) = expired.last() else {
        return Ok(None);
    };
    // Recordings of the expired partitions go with them (once shipped, as
    // the files): a partition whose files all go keeps none.
    let mut recordings = Vec::new();
    // Directories that keep a file are not left: their recordings stay.
    let all = layout::list_files(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    let mut seen: Vec<&Path> = all[expired.len()..].iter().filter_map(|f| f.path.parent()).collect();
    for f in &expired {
        let Some(dir) = f.path.parent().filter(|d| !seen.contains(d)) else {
            continue;
        };
        seen.push(dir);
        for path in layout::recordings_in(dir) {
            let file = DataFile {
                path,
                first_seq: 0,
                date: f.date.clone(),
            };
            if may_delete(&file) {
                recordings.push(file.path);
            }
        }
    }
    let meta = parquet::read_meta(&last.path).map_err(|e| e.to_string())?;
    let mut partitions: Vec<String> = expired.iter().map(|f| f.date.clone()).collect();
    partitions.dedup();
    Ok(Some(Plan {
        files: expired,
        recordings,
        partitions,
        cut_seq: meta.last_seq,
        cut_hash: meta.last_hash,
    }))
}

/// Text of the retention event that vouches for `hash` as a cut.
pub fn vouches_for(command_text: &str, seq: u64, hash: &str) -> bool {
    command_text.contains(&format!("through seq={seq} hash={hash}"))
}

/// The event recording the deletion `plan` is about to make.
pub fn event(plan: &Plan, retention_days: u32) -> Event {
    let mut e = Event::new(EventKind::Retention);
    let dates: Vec<String> = plan.partitions.iter().map(|d| format!("date={d}")).collect();
    e.command = Some(CommandInfo {
        text: Some(format!(
            "delete {} ({} files, {} recordings) through seq={} hash={}",
            dates.join(","),
            plan.files.len(),
            plan.recordings.len(),
            plan.cut_seq,
            plan.cut_hash
        )),
        kind: Some("retention".into()),
        ..CommandInfo::default()
    });
    e.decision = Some(
        Decision::new(Verdict::Allow)
            .rule("audit.retention_days")
            .reason(format!("older than {retention_days} days")),
    );
    e
}

/// Writes the anchor, then deletes the planned files and empty partitions.
pub fn apply(dir: &Path, plan: &Plan, event_seq: u64) -> Result<Report, String> {
    let anchor = Anchor {
        cut_seq: plan.cut_seq,
        cut_hash: plan.cut_hash.clone(),
        event_seq,
        partitions: plan.partitions.clone(),
    };
    write_anchor(dir, &anchor).map_err(|e| format!("writing the retention anchor: {e}"))?;
    for path in &plan.recordings {
        std::fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        let _ = std::fs::remove_file(super::ship::marker(path));
    }
    for f in &plan.files {
        std::fs::remove_file(&f.path).map_err(|e| format!("removing {}: {e}", f.path.display()))?;
        let _ = std::fs::remove_file(super::ship::marker(&f.path));
        // Partition directories go when they are empty; errors only mean
        // something else still lives there.
        if let Some(host_dir) = f.path.parent() {
            let _ = std::fs::remove_dir(host_dir);
            if let Some(date_dir) = host_dir.parent() {
                let _ = std::fs::remove_dir(date_dir);
            }
        }
    }
    wal::sync_dir(dir).map_err(|e| format!("syncing {}: {e}", dir.display()))?;
    Ok(Report {
        partitions: plan.partitions.clone(),
        files: plan.files.len(),
        recordings: plan.recordings.len(),
        cut_seq: plan.cut_seq,
        cut_hash: plan.cut_hash.clone(),
        event_seq,
    })
}

fn write_anchor(dir: &Path, anchor: &Anchor) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(anchor).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{ANCHOR_FILE}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(ANCHOR_FILE))?;
    wal::sync_dir(dir)
}

pub fn read_anchor(dir: &Path) -> Result<Option<Anchor>, String> {
    let path = dir.join(ANCHOR_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
