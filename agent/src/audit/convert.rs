//! The converter thread: closed WAL segments become Parquet files, oldest
//! first, and day partitions past retention are deleted.
use super::config::AuditConfig;
use super::row::{HASH, HOST, Row, SEQ, int_at, str_at, time_at};
use super::store::{Request, Shared};
use super::{AuditError, chain, layout, parquet, retention, wal};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub(crate) enum Job {
    /// A closed segment to turn into Parquet.
    Convert(PathBuf),
    /// Convert everything queued, answer, and stop (store shutdown).
    Flush(oneshot::Sender<Result<(), AuditError>>),
    /// Apply retention as of `now_us` and answer with what was deleted.
    Retention(
        i64,
        oneshot::Sender<Result<Option<retention::Report>, String>>,
    ),
}

pub(crate) struct Converter {
    config: AuditConfig,
    shared: Arc<Shared>,
    jobs: Receiver<Job>,
    /// To append the retention event through the writer, like any event.
    /// Weak, so dropping the store still ends the writer.
    appender: mpsc::WeakSender<Request>,
    queue: VecDeque<PathBuf>,
}

impl Converter {
    pub(crate) fn new(
        config: AuditConfig,
        shared: Arc<Shared>,
        jobs: Receiver<Job>,
        appender: mpsc::WeakSender<Request>,
    ) -> Self {
        Converter {
            config,
            shared,
            jobs,
            appender,
            queue: VecDeque::new(),
        }
    }

    pub(crate) fn run(mut self) {
        let retry = Duration::from_millis(self.config.retry_interval_ms);
        let every = Duration::from_secs(self.config.retention_check_secs.max(1));
        let mut next_retention = Instant::now() + every.min(Duration::from_secs(60));
        let mut backoff_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut wake = next_retention;
            if !self.queue.is_empty() {
                wake = wake.min(backoff_until.unwrap_or(now));
            }
            match self.jobs.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Job::Convert(path)) => {
                    self.queue.push_back(path);
                    continue;
                }
                Ok(Job::Flush(reply)) => {
                    let result = self.drain().map_err(AuditError::Unavailable);
                    let _ = reply.send(result);
                    return;
                }
                Ok(Job::Retention(now_us, reply)) => {
                    let _ = reply.send(self.retention(now_us));
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_retention {
                next_retention = Instant::now() + every;
                if let Err(e) = self.retention(now_us()) {
                    tracing::error!(error = %e, "audit retention failed; will retry");
                }
            }
            if backoff_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            backoff_until = None;
            if let Err(e) = self.convert_next() {
                tracing::error!(error = %e, "converting a WAL segment to Parquet failed; will retry");
                backoff_until = Some(Instant::now() + retry);
            }
        }
    }

    /// Converts every queued segment once; the first error stops it.
    fn drain(&mut self) -> Result<(), String> {
        while !self.queue.is_empty() {
            self.convert_next()?;
        }
        Ok(())
    }

    fn convert_next(&mut self) -> Result<(), String> {
        let Some(path) = self.queue.front().cloned() else {
            return Ok(());
        };
        match convert_segment(&self.config, &path) {
            Ok(()) => {
                self.queue.pop_front();
                self.shared.pending_segments.fetch_sub(1, Ordering::SeqCst);
                if let Ok(mut e) = self.shared.conversion_error.lock() {
                    *e = None;
                }
                Ok(())
            }
            Err(e) => {
                if let Ok(mut slot) = self.shared.conversion_error.lock() {
                    *slot = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    fn retention(&mut self, now_us: i64) -> Result<Option<retention::Report>, String> {
        // Convert first so the partitions on disk are complete.
        self.drain()?;
        let Some(plan) = retention::plan(&self.config.dir, self.config.retention_days, now_us)?
        else {
            return Ok(None);
        };
        let event = retention::event(&plan, self.config.retention_days);
        let (reply, ack) = oneshot::channel();
        self.appender
            .upgrade()
            .ok_or_else(|| "audit store closed".to_owned())?
            .blocking_send(Request::Append(Box::new(event), reply))
            .map_err(|_| "audit store closed".to_owned())?;
        let seq = ack
            .blocking_recv()
            .map_err(|_| "audit store closed".to_owned())?
            .map_err(|e| e.to_string())?;
        let report = retention::apply(&self.config.dir, &plan, seq)?;
        tracing::info!(
            partitions = report.partitions.len(),
            files = report.files,
            through_seq = report.cut_seq,
            "audit retention deleted expired partitions"
        );
        Ok(Some(report))
    }
}

fn day_of(row: &[super::row::Cell]) -> i64 {
    time_at(row).unwrap_or(0).div_euclid(86_400_000_000)
}

fn write_once(config: &AuditConfig, segment: &Path, rows: &[Row]) -> Result<(), String> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let (Some(seq), Some(time), Some(host)) =
        (int_at(first, SEQ), time_at(first), str_at(first, HOST))
    else {
        return Err(format!("{}: record lacks seq/time/host", segment.display()));
    };
    let target = layout::file_path(&config.dir, host, time, seq);
    let done = target.exists()
        && parquet::read_meta(&target).is_ok_and(|m| {
            Some(m.last_seq) == int_at(last, SEQ)
                && Some(m.last_hash.as_str()) == str_at(last, HASH)
        });
    if done {
        return Ok(());
    }
    parquet::write_file(&target, rows, config.row_group_rows).map_err(|e| e.to_string())
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Writes one segment's records as Parquet (one file per UTC day, so
/// retention deletes whole days), then removes the segment. Idempotent: a
/// file already written by an interrupted earlier run is recognised by its
/// chain metadata.
pub(crate) fn convert_segment(config: &AuditConfig, path: &Path) -> Result<(), String> {
    let contents = match wal::read_segment(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let mut rows: Vec<Row> = Vec::with_capacity(contents.payloads.len());
    for payload in contents.payloads {
        rows.push(chain::decode(&payload).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    for day in rows.chunk_by(|a, b| day_of(a) == day_of(b)) {
        write_once(config, path, day)?;
    }
    std::fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    let wal_dir = wal::wal_dir(&config.dir);
    wal::sync_dir(&wal_dir).map_err(|e| format!("syncing {}: {e}", wal_dir.display()))
}
