//! The audit store: a WAL writer that chains events into the current
//! segment, an fsync thread, and a converter thread that turns closed
//! segments into Parquet.
//!
//! With `fsync = "interval"` an append chains and writes its record itself,
//! under the writer's lock (one buffered `write(2)`, no hand-off: on a small
//! machine each wake-up of another task or thread costs more than the write).
//! The writer loop (a task on the agent's runtime, else a thread) keeps the
//! timers: group fsync, segment age, disk retry, and the requests that come
//! by channel (`fsync = "always"`, retention, close). Conversion and fsync
//! are blocking work and have their own threads.
use super::chain::{self, GENESIS_HASH};
use super::config::{AuditConfig, FsyncMode};
use super::convert::{Converter, Job};
use super::row::{HASH, SEQ, int_at, str_at};
use super::ship::{RemoteHealth, RemoteState, ShipJob, Shipper};
use super::wal::{self, SegmentWriter};
use super::{AppendFuture, AuditError, AuditSink, Event, layout, parquet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] parquet::FileError),
    #[error("WAL segment {path}: {source}")]
    Decode {
        path: std::path::PathBuf,
        source: chain::DecodeError,
    },
    #[error("starting the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error("{0}")]
    Remote(String),
}

/// State both threads and every appender see.
#[derive(Default)]
pub(crate) struct Shared {
    failing: AtomicBool,
    closed: AtomicBool,
    last_error: Mutex<Option<String>>,
    pub(crate) pending_segments: AtomicUsize,
    pub(crate) conversion_error: Mutex<Option<String>>,
    /// Events written to Parquet, and the converter thread's CPU time for
    /// them: its cost per event, which the data path's cores pay.
    pub(crate) converted_events: AtomicU64,
    pub(crate) conversion_cpu_us: AtomicU64,
    last_seq: AtomicU64,
    /// Shipping to `[audit.remote]`, when configured.
    remote: Option<Arc<RemoteState>>,
}

impl Shared {
    fn set_failing(&self, error: String) {
        tracing::error!(error = %error, "audit store cannot write; refusing new events");
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
        self.failing.store(true, Ordering::SeqCst);
    }

    fn unavailable(&self) -> AuditError {
        let reason = self
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "write failed".into());
        AuditError::Unavailable(reason)
    }
}

/// What an operator (or `loopgate status`) sees of the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// False while writes fail; appends are refused meanwhile.
    pub writable: bool,
    pub last_error: Option<String>,
    /// Closed WAL segments not yet in Parquet.
    pub pending_segments: usize,
    /// The last Parquet conversion error, cleared by the next success.
    pub conversion_error: Option<String>,
    /// Seq of the newest event in the chain.
    pub last_seq: u64,
    /// Events converted to Parquet since the store opened.
    #[serde(default)]
    pub converted_events: u64,
    /// CPU time the converter spent on them, microseconds.
    #[serde(default)]
    pub conversion_cpu_us: u64,
    /// Shipping to the remote store, when there is one.
    #[serde(default)]
    pub remote: Option<RemoteHealth>,
}

pub(crate) enum Request {
    Append(Box<Event>, oneshot::Sender<Result<u64, AuditError>>),
    /// Wakes the loop to look at its timers: an inline append left records
    /// unwritten or unsynced, or an fsync finished.
    Tick,
    Close(oneshot::Sender<Result<(), AuditError>>),
}

/// The WAL + Parquet audit store. Implements [`AuditSink`].
pub struct AuditStore {
    tx: mpsc::Sender<Request>,
    /// Shared with the writer loop; appenders write through it directly
    /// (see [`AuditStore::append_inline`]).
    writer: Arc<Mutex<Writer>>,
    /// Appends are written by the caller (interval fsync); with `always`
    /// they go to the loop, which groups them under one fsync.
    inline: bool,
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
    /// To the shipper (`[audit.remote]`): the last round at shutdown.
    ship: Mutex<Option<tokio::sync::mpsc::UnboundedSender<ShipJob>>>,
    shutdown_upload: Duration,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The shipper may be in a request when the store is dropped: it is
    /// told to stop, not waited for.
    shipper: Mutex<Option<JoinHandle<()>>>,
}

/// Where the chain ends: the next event links to this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl ChainHead {
    pub fn genesis() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl AuditStore {
    /// Opens the store at `config.dir`: recovers leftover WAL segments
    /// (cutting torn tails), finds the chain head and starts the threads.
    pub fn open(config: AuditConfig) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        let wal_dir = wal::wal_dir(&dir);
        std::fs::create_dir_all(&wal_dir).map_err(|source| StoreError::Io {
            what: "creating",
            path: wal_dir.clone(),
            source,
        })?;
        let (segments, wal_head) = recover_segments(&dir)?;
        let temps = layout::remove_temp_files(&dir).map_err(|source| StoreError::Io {
            what: "cleaning temp files in",
            path: dir.clone(),
            source,
        })?;
        if temps > 0 {
            tracing::warn!(
                files = temps,
                "removed half-written Parquet files from an interrupted conversion"
            );
        }
        let unfinished = layout::seal_unfinished_recordings(&dir).map_err(|source| StoreError::Io {
            what: "sealing unfinished recordings in",
            path: dir.clone(),
            source,
        })?;
        if unfinished > 0 {
            tracing::warn!(
                recordings = unfinished,
                "sealed session recordings an interrupted agent left unfinished (recording-*.unfinished.cast)"
            );
        }
        let head = match wal_head {
            Some(h) => h,
            None => parquet_head(&dir)?,
        };
        tracing::info!(
            dir = %dir.display(),
            segments = segments.len(),
            last_seq = head.seq,
            "audit store opened"
        );
        let shipper = match &config.remote {
            Some(_) => Some(Shipper::open(&config).map_err(StoreError::Remote)?),
            None => None,
        };
        let shared = Arc::new(Shared {
            remote: shipper.as_ref().map(|(_, state, _)| state.clone()),
            ..Shared::default()
        });
        shared.last_seq.store(head.seq, Ordering::SeqCst);
        shared.pending_segments.store(segments.len(), Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
        for path in segments {
            // The receiver is alive: it is moved into the thread below.
            let _ = jobs_tx.send(Job::Convert(path));
        }
        let ship_tx = shipper.as_ref().map(|(_, _, tx)| tx.clone());
        let converter = Converter::new(config.clone(), shared.clone(), jobs_rx, tx.downgrade(), ship_tx.clone());
        let converter = std::thread::Builder::new()
            .name("audit-convert".into())
            .spawn(move || converter.run())
            .map_err(|e| StoreError::Thread("converter", e))?;
        let store_jobs = jobs_tx.clone();
        let shutdown_upload = Duration::from_secs(config.remote.as_ref().map_or(0, |r| r.shutdown_upload_secs));
        let shipper_thread = match shipper {
            Some((shipper, _, _)) => Some(shipper.spawn().map_err(|e| StoreError::Thread("shipper", e))?),
            None => None,
        };
        let (syncer, syncer_thread) = SyncerHandle::spawn(tx.downgrade())?;
        let inline = config.fsync == FsyncMode::Interval;
        let writer = Arc::new(Mutex::new(Writer {
            config,
            syncer,
            shared: shared.clone(),
            jobs: jobs_tx,
            head,
            segment: None,
            segment_records: 0,
            unsynced: false,
            last_sync: Instant::now(),
            next_retry: Instant::now(),
            scratch: Vec::with_capacity(1024),
            framed: Vec::with_capacity(64 << 10),
            unwritten: 0,
            unwritten_from: ChainHead::genesis(),
        }));
        // On the agent's multi-thread runtime the writer loop is a task (a
        // request wakes it on the same worker, no OS context switch);
        // elsewhere (tests, tools) it has its own thread.
        let mut threads = vec![converter, syncer_thread];
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                rt.spawn(run_task(writer.clone(), rx));
            }
            _ => {
                let writer = writer.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name("audit-wal".into())
                        .spawn(move || run_thread(writer, rx))
                        .map_err(|e| StoreError::Thread("writer", e))?,
                )
            }
        }
        Ok(AuditStore {
            tx,
            writer,
            inline,
            jobs: Mutex::new(store_jobs),
            ship: Mutex::new(ship_tx),
            shutdown_upload,
            shared,
            threads: Mutex::new(threads),
            shipper: Mutex::new(shipper_thread),
        })
    }

    /// Appends `event` and returns the seq it got in the chain.
    pub async fn append_seq(&self, event: Event) -> Result<u64, AuditError> {
        self.accepting()?;
        if self.inline {
            return self.append_inline(event);
        }
        let (reply, ack) = oneshot::channel();
        self.tx
            .send(Request::Append(Box::new(event), reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        ack.await.map_err(|_| AuditError::Closed)?
    }

    /// Whether appends are taken now: not after close, and not while the
    /// disk refuses writes (fail fast instead of queueing).
    fn accepting(&self) -> Result<(), AuditError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(AuditError::Closed);
        }
        if self.shared.failing.load(Ordering::SeqCst) {
            return Err(self.shared.unavailable());
        }
        if let Some(why) = self.shared.remote.as_ref().and_then(|r| r.refusing()) {
            return Err(AuditError::Unavailable(why));
        }
        Ok(())
    }

    /// Chains and writes `event` on the caller's thread. On return the
    /// record is in the WAL file (`write(2)` done) and the chain order is
    /// the WAL order, both because the lock covers chaining and writing.
    /// The lock is held for one buffered write; appenders on other workers
    /// wait that long, which is cheaper than a wake-up of the writer.
    fn append_inline(&self, event: Event) -> Result<u64, AuditError> {
        self.inline(event, Writer::append_one)
    }

    /// Chains `event` on the caller's thread without writing it: the next
    /// append writes it along with its own record (one `write(2)` for both),
    /// or the writer loop does by the fsync interval, or close does. For
    /// records nobody waits on (a command's result).
    fn defer_inline(&self, event: Event) -> Result<(), AuditError> {
        self.inline(event, Writer::defer_one)
    }

    /// Runs `op` on `event` under the writer's lock, then
    /// starts the group fsync if due and wakes the loop if its timer may
    /// not cover what is now unwritten or unsynced.
    fn inline<T>(&self, event: Event, op: fn(&mut Writer, &Event) -> Result<T, AuditError>) -> Result<T, AuditError> {
        let mut writer = self.writer.lock().map_err(|_| self.shared.unavailable())?;
        // Close is handled under this lock: nothing is chained after it.
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(AuditError::Closed);
        }
        let was_dirty = writer.dirty();
        let result = op(&mut writer, &event);
        writer.sync_if_due();
        let nudge = !was_dirty && writer.dirty();
        drop(writer);
        if nudge {
            // The loop may sleep past the fsync interval; a full queue means
            // it is awake anyway.
            let _ = self.tx.try_send(Request::Tick);
        }
        result
    }

    /// Syncs the WAL, converts every segment to Parquet and stops the
    /// threads. Segments that cannot be converted stay for the next start.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Request::Close(reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        let result = done.await.map_err(|_| AuditError::Closed)?;
        // Every segment is a file now: one last upload round.
        let ship = self.ship.lock().ok().and_then(|mut s| s.take());
        if let Some(ship) = ship {
            let (reply, shipped) = oneshot::channel();
            if ship.send(ShipJob::Flush(self.shutdown_upload, reply)).is_ok() {
                let _ = tokio::time::timeout(self.shutdown_upload + Duration::from_secs(5), shipped).await;
            }
        }
        let mut threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        threads.extend(self.shipper.lock().ok().and_then(|mut s| s.take()));
        // The threads have finished their work; joining only reaps them.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        result
    }

    /// Deletes day partitions older than the retention period as of
    /// `now_us` (the converter also does this hourly). The deletion is
    /// recorded as a `retention` event and leaves an anchor for `verify`.
    pub async fn apply_retention(&self, now_us: i64) -> Result<Option<super::RetentionReport>, AuditError> {
        let (reply, done) = oneshot::channel();
        self.jobs
            .lock()
            .map_err(|_| AuditError::Closed)?
            .send(Job::Retention(now_us, reply))
            .map_err(|_| AuditError::Closed)?;
        done.await
            .map_err(|_| AuditError::Closed)?
            .map_err(AuditError::Unavailable)
    }

    pub fn health(&self) -> Health {
        let s = &self.shared;
        Health {
            writable: !s.failing.load(Ordering::SeqCst),
            last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
            pending_segments: s.pending_segments.load(Ordering::SeqCst),
            conversion_error: s.conversion_error.lock().ok().and_then(|e| e.clone()),
            last_seq: s.last_seq.load(Ordering::SeqCst),
            converted_events: s.converted_events.load(Ordering::Relaxed),
            conversion_cpu_us: s.conversion_cpu_us.load(Ordering::Relaxed),
            remote: s.remote.as_ref().map(|r| r.health()),
        }
    }
}

impl AuditSink for AuditStore {
    fn append(&self, event: Event) -> AppendFuture<'_> {
        Box::pin(async move { self.append_seq(event).await.map(|_| ()) })
    }

    fn try_submit(&self, event: Box<Event>) -> Result<Result<(), AuditError>, Box<Event>> {
        if !self.inline {
            return Err(event);
        }
        Ok(self.accepting().and_then(|()| self.defer_inline(*event)))
    }

    fn close(&self) -> AppendFuture<'_> {
        Box::pin(self.shutdown())
    }

    fn health(&self) -> Option<Health> {
        Some(AuditStore::health(self))
    }
}

impl Drop for AuditStore {
    /// Without `shutdown`: stops the threads after what they are doing
    /// (the WAL is synced; unconverted segments are recovered on the next
    /// open), so a new store on the same directory never races this one.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let (closed_tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed_tx));
        if let Ok(mut jobs) = self.jobs.lock() {
            drop(std::mem::replace(&mut *jobs, std::sync::mpsc::channel().0));
        }
        // The shipper ends once the converter's sender is gone too.
        if let Ok(mut ship) = self.ship.lock() {
            ship.take();
        }
        // The loop may be gone already (its runtime shut down) and cannot
        // be relied on to let the threads end.
        let mut writer = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        writer.sync();
        writer.disconnect();
        drop(writer);
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Cuts torn tails, drops empty segments, and returns the segments to
/// convert plus the chain head found in the newest of them.
fn recover_segments(dir: &std::path::Path) -> Result<(Vec<std::path::PathBuf>, Option<ChainHead>), StoreError> {
    let io = |what, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { what, path, source }
    };
    let mut keep = Vec::new();
    let mut head = None;
    let wal_dir = wal::wal_dir(dir);
    for (_, path) in wal::list_segments(dir).map_err(io("listing", &wal_dir))? {
        let contents = wal::read_segment(&path).map_err(io("reading", &path))?;
        if contents.payloads.is_empty() {
            std::fs::remove_file(&path).map_err(io("removing", &path))?;
            continue;
        }
        if contents.good_len < contents.file_len {
            tracing::warn!(
                segment = %path.display(),
                cut_bytes = contents.file_len - contents.good_len,
                "cutting a torn WAL tail"
            );
            wal::truncate_segment(&path, contents.good_len).map_err(io("truncating", &path))?;
        }
        if let Some(last) = contents.payloads.last() {
            let row = chain::decode(last).map_err(|source| StoreError::Decode {
                path: path.clone(),
                source,
            })?;
            if let (Some(seq), Some(hash)) = (int_at(&row, SEQ), str_at(&row, HASH)) {
                head = Some(ChainHead {
                    seq,
                    hash: hash.to_owned(),
                });
            }
        }
        keep.push(path);
    }
    wal::sync_dir(&wal_dir).map_err(io("syncing", &wal_dir))?;
    Ok((keep, head))
}

/// The chain head recorded in the newest Parquet file, or genesis.
pub(crate) fn parquet_head(dir: &std::path::Path) -> Result<ChainHead, StoreError> {
    let files = layout::list_files(dir).map_err(|source| StoreError::Io {
        what: "listing",
        path: dir.to_owned(),
        source,
    })?;
    match files.last() {
        Some(f) => {
            let meta = parquet::read_meta(&f.path)?;
            Ok(ChainHead {
                seq: meta.last_seq,
                hash: meta.last_hash,
            })
        }
        None => Ok(ChainHead::genesis()),
    }
}

/// Most requests taken from the queue into one WAL write.
const MAX_BATCH: usize = 4096;

/// Deferred records are written at once past this many bytes.
const MAX_DEFERRED_BYTES: usize = 64 << 10;

/// The writer's side of the syncer thread (interval mode's group fsync).
struct SyncerHandle {
    files: std::sync::mpsc::Sender<std::fs::File>,
    busy: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
}

impl SyncerHandle {
    /// `loop_tx` wakes the writer loop after each fsync: records that came
    /// meanwhile wait for the next one, and the loop sleeps until then
    /// instead of polling `busy`.
    fn spawn(loop_tx: mpsc::WeakSender<Request>) -> Result<(Self, JoinHandle<()>), StoreError> {
        let (files, rx) = std::sync::mpsc::channel::<std::fs::File>();
        let busy = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let (b, e) = (busy.clone(), error.clone());
        let thread = std::thread::Builder::new()
            .name("audit-fsync".into())
            .spawn(move || {
                for file in rx {
                    if let Err(err) = file.sync_data()
                        && let Ok(mut slot) = e.lock()
                    {
                        *slot = Some(format!("fsync of the WAL: {err}"));
                    }
                    b.store(false, Ordering::SeqCst);
                    if let Some(tx) = loop_tx.upgrade() {
                        // A full queue means the loop is awake anyway.
                        let _ = tx.try_send(Request::Tick);
                    }
                }
            })
            .map_err(|e| StoreError::Thread("fsync", e))?;
        Ok((SyncerHandle { files, busy, error }, thread))
    }
}

struct Writer {
    config: AuditConfig,
    syncer: SyncerHandle,
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::Sender<Job>,
    head: ChainHead,
    segment: Option<SegmentWriter>,
    segment_records: u64,
    unsynced: bool,
    last_sync: Instant,
    next_retry: Instant,
    scratch: Vec<u8>,
    /// Records chained but not yet written, in chain order (see
    /// [`Writer::defer_one`]); the next write takes them along.
    framed: Vec<u8>,
    /// How many records `framed` holds.
    unwritten: u64,
    /// The head before the first of them: where the chain goes back to if
    /// they cannot be written.
    unwritten_from: ChainHead,
}

/// The writer loop on its own thread (tools and tests without the agent's
/// multi-thread runtime).
fn run_thread(writer: Arc<Mutex<Writer>>, mut rx: mpsc::Receiver<Request>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            if let Ok(mut w) = writer.lock() {
                w.fail(format!("writer runtime: {e}"));
            }
            return;
        }
    };
    let mut batch = Vec::new();
    loop {
        let Some(wait) = next_wait(&writer) else { return };
        let woke = rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await });
        if on_wake(&writer, woke.ok(), &mut rx, &mut batch) {
            return;
        }
    }
}

/// The same loop as [`run_thread`], as a task on the agent's runtime. Its
/// work between awaits is a buffered write to the WAL file (the page
/// cache); fsync stays on the syncer thread.
async fn run_task(writer: Arc<Mutex<Writer>>, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::new();
    loop {
        let Some(wait) = next_wait(&writer) else { return };
        let woke = tokio::time::timeout(wait, rx.recv()).await;
        if on_wake(&writer, woke.ok(), &mut rx, &mut batch) {
            return;
        }
    }
}

/// How long the loop may sleep; None when the writer is gone (its lock
/// poisoned by a panic: appends fail from then on).
fn next_wait(writer: &Mutex<Writer>) -> Option<Duration> {
    let at = writer.lock().ok()?.next_wakeup();
    Some(at.saturating_duration_since(Instant::now()))
}

/// Handles what one wait brought, under the writer's lock: a request (with
/// whatever else is queued behind it), the channel closing (`Some(None)`),
/// or nothing but a timer (`None`). Returns true when the loop must stop.
fn on_wake(
    writer: &Mutex<Writer>,
    woke: Option<Option<Request>>,
    rx: &mut mpsc::Receiver<Request>,
    batch: &mut Vec<Request>,
) -> bool {
    match writer.lock() {
        Ok(mut w) => {
            let stop = w.on_wake(woke, rx, batch);
            if stop {
                w.disconnect();
            }
            stop
        }
        Err(_) => true,
    }
}

impl Writer {
    /// Handles what one wait brought: a request (with whatever else is
    /// queued behind it), the channel closing (`Some(None)`), or nothing
    /// but a timer (`None`). Returns true when the writer must stop.
    fn on_wake(
        &mut self,
        woke: Option<Option<Request>>,
        rx: &mut mpsc::Receiver<Request>,
        batch: &mut Vec<Request>,
    ) -> bool {
        match woke {
            Some(Some(req)) => {
                batch.push(req);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(req) => batch.push(req),
                        Err(_) => break,
                    }
                }
                if self.handle(batch) {
                    return true;
                }
            }
            Some(None) => {
                self.sync();
                return true;
            }
            None => {}
        }
        self.tick();
        false
    }

    /// Closes the writer's channels to the syncer and converter threads,
    /// which end when they have done what was sent before. The writer
    /// itself outlives its loop (the store holds it for inline appends).
    fn disconnect(&mut self) {
        self.syncer.files = std::sync::mpsc::channel().0;
        self.jobs = std::sync::mpsc::channel().0;
    }

    /// When the loop must wake without a request: the next group fsync,
    /// segment age limit or disk retry.
    fn next_wakeup(&self) -> Instant {
        let now = Instant::now();
        let mut at = now + Duration::from_secs(1);
        // While an fsync runs the next one waits for it: the syncer wakes
        // the loop when it is done.
        if self.dirty() && !self.syncer.busy.load(Ordering::SeqCst) {
            at = at.min(self.last_sync + Duration::from_millis(self.config.fsync_interval_ms));
        }
        if let Some(seg) = &self.segment
            && self.segment_records > 0
        {
            at = at.min(seg.created + Duration::from_secs(self.config.segment_max_age_secs));
        }
        if self.shared.failing.load(Ordering::SeqCst) {
            at = at.min(self.next_retry);
        }
        at.max(now)
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let sync_error = self.syncer.error.lock().ok().and_then(|mut e| e.take());
        if let Some(e) = sync_error {
            self.fail(e);
        }
        if self.dirty() && now >= self.last_sync + Duration::from_millis(self.config.fsync_interval_ms) {
            self.sync_in_background(false);
        }
        let aged = self.segment.as_ref().is_some_and(|s| {
            self.segment_records > 0 && now >= s.created + Duration::from_secs(self.config.segment_max_age_secs)
        });
        if aged {
            self.rotate();
        }
        if self.shared.failing.load(Ordering::SeqCst) && now >= self.next_retry {
            self.retry();
        }
    }

    /// Handles a batch of requests; true when the store is closing.
    fn handle(&mut self, batch: &mut Vec<Request>) -> bool {
        let mut replies = Vec::with_capacity(batch.len());
        let mut close = None;
        for req in batch.drain(..) {
            match req {
                Request::Append(event, reply) => {
                    let seq = self.chain(&event);
                    replies.push((reply, seq));
                }
                Request::Close(reply) => close = Some(reply),
                Request::Tick => {}
            }
        }
        if !replies.is_empty() {
            let result = self.write_unwritten(replies.len() as u64);
            self.shared.last_seq.store(self.head.seq, Ordering::SeqCst);
            for (reply, seq) in replies {
                // A dropped receiver means the caller gave up; the record
                // stays in the chain either way.
                let _ = reply.send(result.clone().map(|()| seq));
            }
        }
        if let Some(reply) = close {
            self.sync();
            self.rotate();
            let _ = self.jobs.send(Job::Flush(reply));
            return true;
        }
        false
    }

    /// Chains and writes one record, together with any deferred before it;
    /// Ok holds its seq.
    fn append_one(&mut self, event: &Event) -> Result<u64, AuditError> {
        let seq = self.chain(event);
        let result = self.write_unwritten(1);
        self.shared.last_seq.store(self.head.seq, Ordering::SeqCst);
        result.map(|()| seq)
    }

    /// Chains one record to be written later (with the next append, by
    /// the fsync interval, or at close), so a statement costs one WAL
    /// `write(2)` instead of two. Refused (like an append) while the disk
    /// fails; written at once when the buffer is large.
    fn defer_one(&mut self, event: &Event) -> Result<(), AuditError> {
        if self.shared.failing.load(Ordering::SeqCst) {
            return Err(self.shared.unavailable());
        }
        self.chain(event);
        self.shared.last_seq.store(self.head.seq, Ordering::SeqCst);
        if self.framed.len() >= MAX_DEFERRED_BYTES {
            return self.write_unwritten(0);
        }
        Ok(())
    }

    /// Records are chained but not yet written, or written but not synced:
    /// the loop must wake by the fsync interval.
    fn dirty(&self) -> bool {
        self.unsynced || self.unwritten > 0
    }

    /// Chains `event` after the head into `framed`; returns its seq.
    fn chain(&mut self, event: &Event) -> u64 {
        if self.unwritten == 0 {
            self.unwritten_from = self.head.clone();
            self.framed.clear();
        }
        let seq = self.head.seq + 1;
        self.chain_into_frame(event, seq);
        self.unwritten += 1;
        seq
    }

    /// Writes every chained record in one `write(2)`; `waited` of them
    /// have a caller that gets the result. If the write fails they are all
    /// dropped and the head goes back to before them (no gap in the chain);
    /// the store is failing then, and deferred records lost are logged.
    fn write_unwritten(&mut self, waited: u64) -> Result<(), AuditError> {
        if self.unwritten == 0 {
            return Ok(());
        }
        let n = std::mem::take(&mut self.unwritten);
        let start = std::mem::replace(&mut self.unwritten_from, ChainHead::genesis());
        let result = self.write_framed(n, start);
        self.framed.clear();
        if let Err(e) = &result {
            self.shared.last_seq.store(self.head.seq, Ordering::SeqCst);
            let lost = n.saturating_sub(waited);
            if lost > 0 {
                tracing::error!(records = lost, error = %e, "deferred audit records could not be written");
            }
        }
        result
    }

    /// Starts the group fsync when the interval has passed (appends keep
    /// the interval without waking the loop while they come).
    fn sync_if_due(&mut self) {
        if self.dirty() && Instant::now() >= self.last_sync + Duration::from_millis(self.config.fsync_interval_ms) {
            self.sync_in_background(false);
        }
    }

    /// Assigns `seq` and `prev_hash`, hashes, and frames the record.
    fn chain_into_frame(&mut self, event: &Event, seq: u64) {
        let prev_hash = std::mem::take(&mut self.head.hash);
        self.scratch.clear();
        chain::encode_event(event, seq, &prev_hash, &mut self.scratch);
        let hash = chain::hash_hex(&self.scratch);
        wal::frame(&self.scratch, &mut self.framed);
        self.head = ChainHead { seq, hash };
    }

    /// Writes the framed batch of `n` records chained from `start`; Ok means
    /// the callers may act on them. When nothing reached the WAL the head
    /// goes back to `start`, so refused events leave no gap in the chain.
    fn write_framed(&mut self, n: u64, start: ChainHead) -> Result<(), AuditError> {
        if let Err(e) = self.write_batch(n, &start) {
            self.head = start;
            return Err(e);
        }
        // The records are in the WAL now: even if the fsync below fails
        // they stay in the chain, and the head stays past them.
        if self.config.fsync == FsyncMode::Always && !self.sync() {
            return Err(self.shared.unavailable());
        }
        let full = self.segment.as_ref().is_some_and(|s| {
            s.len >= self.config.segment_max_bytes
                || (self.config.segment_max_events > 0 && self.segment_records >= self.config.segment_max_events)
        });
        if full {
            self.rotate();
        }
        Ok(())
    }

    fn write_batch(&mut self, n: u64, start: &ChainHead) -> Result<(), AuditError> {
        if self.shared.failing.load(Ordering::SeqCst) {
            return Err(self.shared.unavailable());
        }
        if self.shared.pending_segments.load(Ordering::SeqCst) >= self.config.max_pending_segments {
            return Err(AuditError::Unavailable(
                "too many WAL segments waiting for Parquet conversion".into(),
            ));
        }
        if self.segment.is_none() {
            match SegmentWriter::create(&self.config.dir, start.seq + 1) {
                Ok(seg) => {
                    self.segment = Some(seg);
                    self.segment_records = 0;
                }
                Err(e) => return Err(self.fail(format!("creating a WAL segment: {e}"))),
            }
        }
        let Some(seg) = self.segment.as_mut() else {
            return Err(self.shared.unavailable());
        };
        if let Err(e) = seg.write(&self.framed) {
            return Err(self.fail(format!("writing the WAL: {e}")));
        }
        self.segment_records += n;
        self.unsynced = true;
        Ok(())
    }

    /// Writes what is deferred, then group fsync; false (and failing) when
    /// it did not succeed.
    fn sync(&mut self) -> bool {
        if self.write_unwritten(0).is_err() {
            return false;
        }
        if !self.unsynced {
            return true;
        }
        let result = self.segment.as_ref().map(|s| s.sync()).unwrap_or(Ok(()));
        self.last_sync = Instant::now();
        self.unsynced = false;
        match result {
            Ok(()) => true,
            Err(e) => {
                self.fail(format!("fsync of the WAL: {e}"));
                false
            }
        }
    }

    /// Interval mode: hands the fsync to the syncer thread, so appends are
    /// acknowledged while it runs. `force` queues it even if one is running.
    fn sync_in_background(&mut self, force: bool) {
        // Deferred records are written first, so the fsync covers them
        // (an error leaves the store failing; there is nothing to sync).
        let _ = self.write_unwritten(0);
        if !self.unsynced || (!force && self.syncer.busy.load(Ordering::SeqCst)) {
            return;
        }
        let Some(seg) = self.segment.as_ref() else {
            return;
        };
        match seg.try_clone_file() {
            Ok(file) => {
                self.syncer.busy.store(true, Ordering::SeqCst);
                self.last_sync = Instant::now();
                self.unsynced = false;
                if self.syncer.files.send(file).is_err() {
                    self.fail("the WAL syncer thread is gone".into());
                }
            }
            Err(e) => {
                self.fail(format!("fsync of the WAL: {e}"));
            }
        }
    }

    /// Closes the current segment and hands it to the converter.
    fn rotate(&mut self) {
        match self.config.fsync {
            FsyncMode::Always => {
                self.sync();
            }
            FsyncMode::Interval => self.sync_in_background(true),
        }
        self.hand_off_segment();
    }

    /// Closes the current segment: an empty one is deleted, one with records
    /// goes to the converter.
    fn hand_off_segment(&mut self) {
        if let Some(seg) = self.segment.take() {
            if self.segment_records == 0 {
                let _ = std::fs::remove_file(&seg.path);
            } else {
                self.shared.pending_segments.fetch_add(1, Ordering::SeqCst);
                let _ = self.jobs.send(Job::Convert(seg.path));
            }
        }
        self.segment_records = 0;
    }

    /// Marks the store failing and abandons the current segment: its
    /// whole records are kept (and converted), later ones go to a new one.
    fn fail(&mut self, error: String) -> AuditError {
        self.shared.set_failing(error);
        self.next_retry = Instant::now() + Duration::from_millis(self.config.retry_interval_ms);
        self.unsynced = false;
        self.hand_off_segment();
        self.shared.unavailable()
    }

    /// Probes the disk with a small synced write; clears the failure when
    /// it works.
    fn retry(&mut self) {
        let probe = wal::wal_dir(&self.config.dir).join(".probe");
        let result = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&probe)?;
            f.write_all(&[0u8; 64 << 10])?;
            f.sync_all()?;
            std::fs::remove_file(&probe)
        })();
        match result {
            Ok(()) => {
                tracing::info!("audit store writable again; accepting events");
                self.shared.failing.store(false, Ordering::SeqCst);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&probe);
                tracing::debug!(error = %e, "audit store still cannot write");
                self.next_retry = Instant::now() + Duration::from_millis(self.config.retry_interval_ms);
            }
        }
    }
}
