//! The converter thread: closed WAL segments become Parquet files, oldest
//! first, and day partitions past retention are deleted.
use super::chain::CellRef;
use super::config::AuditConfig;
use super::parquet::ChainMeta;
use super::row::{HOST, PREV_HASH, SEQ, TIME};
use super::ship::{self, ShipJob};
use super::store::{Request, Shared};
use super::{AuditError, chain, layout, parquet, retention, wal};
use bytes::Bytes;
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
    Retention(i64, oneshot::Sender<Result<Option<retention::Report>, String>>),
}

pub(crate) struct Converter {
    config: AuditConfig,
    shared: Arc<Shared>,
    jobs: Receiver<Job>,
    /// To append the retention event through the writer, like any event.
    /// Weak, so dropping the store still ends the writer.
    appender: mpsc::WeakSender<Request>,
    /// New files go to the shipper, when there is a remote store.
    ship: Option<mpsc::UnboundedSender<ShipJob>>,
    queue: VecDeque<PathBuf>,
}

impl Converter {
    pub(crate) fn new(
        config: AuditConfig,
        shared: Arc<Shared>,
        jobs: Receiver<Job>,
        appender: mpsc::WeakSender<Request>,
        ship: Option<mpsc::UnboundedSender<ShipJob>>,
    ) -> Self {
        Converter {
            config,
            shared,
            jobs,
            appender,
            ship,
            queue: VecDeque::new(),
        }
    }

    pub(crate) fn run(mut self) {
        lower_priority();
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
                if let Err(e) = self.retention(layout::now_us()) {
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
        let cpu = thread_cpu_us();
        match convert_segment(&self.config, &path) {
            Ok((files, events)) => {
                let spent = thread_cpu_us().saturating_sub(cpu);
                self.shared.converted_events.fetch_add(events, Ordering::Relaxed);
                self.shared.conversion_cpu_us.fetch_add(spent, Ordering::Relaxed);
                tracing::debug!(events, cpu_us = spent, files = files.len(), "converted a WAL segment");
                if let Some(ship) = &self.ship {
                    for file in files {
                        // A closed channel: the shipper's rescan finds it.
                        let _ = ship.send(ShipJob::Sealed(file));
                    }
                }
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
        // With a remote store a file goes only once it is shipped.
        let remote = self.config.remote.is_some();
        let may_delete = |f: &layout::DataFile| !remote || ship::is_shipped(&f.path);
        let days = self.config.local_retention_days();
        let Some(plan) = retention::plan(&self.config.dir, days, now_us, may_delete)? else {
            return Ok(None);
        };
        let event = retention::event(&plan, days);
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

/// Conversion is batch work: run it at nice 10 so the writer thread, whose
/// latency callers wait on, wins the CPU when both want it.
fn lower_priority() {
    // SAFETY: plain syscalls on this thread's own id.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the converter's priority");
    }
}

/// This thread's CPU time so far, microseconds (0 if the clock fails).
fn thread_cpu_us() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0;
    }
    (t.tv_sec as u64) * 1_000_000 + (t.tv_nsec as u64) / 1_000
}

/// Writes one day's run of a segment's records, unless an interrupted
/// earlier conversion already did; the file's path.
fn write_run(config: &AuditConfig, segment: &Path, payloads: &[Bytes]) -> Result<Option<PathBuf>, String> {
    let (Some(first), Some(last)) = (payloads.first(), payloads.last()) else {
        return Ok(None);
    };
    let bad = |what: &str| format!("{}: {what}", segment.display());
    let mut cells = Vec::new();
    chain::decode_ref(last, &mut cells).map_err(|e| bad(&e.to_string()))?;
    let CellRef::Int(Some(last_seq)) = cells[SEQ] else {
        return Err(bad("record without seq"));
    };
    chain::decode_ref(first, &mut cells).map_err(|e| bad(&e.to_string()))?;
    let (CellRef::Int(Some(first_seq)), CellRef::Time(time), CellRef::Str(Some(host))) =
        (cells[SEQ], cells[TIME], cells[HOST])
    else {
        return Err(bad("record without seq, time or host"));
    };
    let CellRef::Str(Some(prev_hash)) = cells[PREV_HASH] else {
        return Err(bad("record without prev_hash"));
    };
    let meta = ChainMeta {
        first_seq: u64::try_from(first_seq).map_err(|_| bad("negative seq"))?,
        last_seq: u64::try_from(last_seq).map_err(|_| bad("negative seq"))?,
        first_hash: chain::hash_hex(first),
        last_hash: chain::hash_hex(last),
        prev_file_last_hash: prev_hash.to_owned(),
        rows: payloads.len() as u64,
    };
    let target = layout::file_path(&config.dir, host, time, meta.first_seq);
    let done = target.exists()
        && parquet::read_meta(&target).is_ok_and(|m| m.last_seq == meta.last_seq && m.last_hash == meta.last_hash);
    if !done {
        parquet::write_encoded_file(&target, payloads, &meta, config.row_group_rows).map_err(|e| e.to_string())?;
    }
    Ok(Some(target))
}

/// Writes one segment's records as Parquet (one file per UTC day, so
/// retention deletes whole days), then removes the segment. Idempotent: a
/// file already written by an interrupted earlier run is recognised by its
/// chain metadata. Returns the files and the number of events.
pub(crate) fn convert_segment(config: &AuditConfig, path: &Path) -> Result<(Vec<PathBuf>, u64), String> {
    let contents = match wal::read_segment(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let payloads = contents.payloads;
    let mut runs = Vec::new();
    let mut current: Option<(usize, i64)> = None;
    for (i, payload) in payloads.iter().enumerate() {
        // Only the time here: the whole record is decoded (and checked)
        // once, when it is written.
        let time = chain::time_of(payload).map_err(|e| format!("{}: {e}", path.display()))?;
        let day = time.div_euclid(86_400_000_000);
        match current {
            Some((_, d)) if d == day => {}
            Some((start, _)) => {
                runs.push(start..i);
                current = Some((i, day));
            }
            None => current = Some((i, day)),
        }
    }
    if let Some((start, _)) = current {
        runs.push(start..payloads.len());
    }
    let mut files = Vec::with_capacity(runs.len());
    for run in runs {
        files.extend(write_run(config, path, &payloads[run])?);
    }
    std::fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    let wal_dir = wal::wal_dir(&config.dir);
    wal::sync_dir(&wal_dir).map_err(|e| format!("syncing {}: {e}", wal_dir.display()))?;
    Ok((files, payloads.len() as u64))
}
