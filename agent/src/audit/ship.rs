//! The shipper thread: uploads sealed files to object storage, oldest
//! first, under the same `date=…/host=…/` path, then signs a checkpoint of
//! the shipped chain head and uploads it too.
//!
//! A file is *sealed* when it sits under `date=*/host=*/` with a name not
//! starting with `.`: writers create `.name.tmp`, fsync and rename, so a
//! sealed file never changes. That covers the chain's Parquet files and
//! any later recordings alike. Once the store has a file, the shipper
//! leaves `.name.shipped` beside it; retention deletes only files with
//! that marker. Nothing is ever deleted here, so a failing store costs
//! disk, never a file: uploads are retried with backoff (each request
//! also inside object_store), the backlog is visible in `loopgate status`,
//! and past `max_backlog_bytes` new events are refused (fail closed).
//!
//! It runs on a thread of its own with a single-threaded runtime, so
//! network waits never touch the proxy's workers or the WAL writer.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::client::{HttpClient, HttpRequestBody};
use object_store::path::Path as ObjectPath;
use object_store::signer::{SignedUrlOptions, Signer as _};
use object_store::{Attribute, Attributes, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpoint;
use super::config::{AuditConfig, ObjectLockMode, RemoteConfig};
use super::{layout, parquet};
use crate::objstore::{self, S3Url};
use crate::signing::SigningKey;

/// What the converter (and the store) tell the shipper.
pub(crate) enum ShipJob {
    /// A file was sealed.
    Sealed(PathBuf),
    /// Ship what is waiting for at most this long, sign a last checkpoint,
    /// answer and stop (store shutdown).
    Flush(Duration, oneshot::Sender<()>),
}

/// What `loopgate status` shows of shipping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteHealth {
    pub url: String,
    /// Files and bytes uploaded since the agent started.
    pub shipped_files: u64,
    pub shipped_bytes: u64,
    /// Sealed files waiting for upload.
    pub backlog_files: usize,
    pub backlog_bytes: u64,
    /// The oldest of them, relative to the audit directory.
    pub oldest_waiting: Option<String>,
    /// The backlog is past `max_backlog_bytes`: new events are refused.
    pub refusing_events: bool,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    pub last_error_unix_ms: Option<u64>,
    pub last_upload_unix_ms: Option<u64>,
    /// Seq of the newest event in the store (every file up to it shipped).
    pub shipped_seq: Option<u64>,
    /// Id of the key checkpoints are signed with (none: no checkpoints).
    pub checkpoint_key_id: Option<String>,
    pub last_checkpoint_seq: Option<u64>,
    pub last_checkpoint_unix_ms: Option<u64>,
}

/// Shared between the shipper, the store's appenders and status.
pub(crate) struct RemoteState {
    health: Mutex<RemoteHealth>,
    /// Appenders read this alone: one relaxed load per event.
    refusing: AtomicBool,
}

impl RemoteState {
    pub(crate) fn health(&self) -> RemoteHealth {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn refusing(&self) -> Option<String> {
        if !self.refusing.load(Ordering::Relaxed) {
            return None;
        }
        let h = self.health();
        Some(format!(
            "{} bytes of sealed audit files wait for upload to {} (max_backlog_bytes); last error: {}",
            h.backlog_bytes,
            h.url,
            h.last_error.as_deref().unwrap_or("none")
        ))
    }

    fn update(&self, f: impl FnOnce(&mut RemoteHealth)) {
        f(&mut self.health.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// `.name.shipped` beside `path`: the store has it.
pub fn marker(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.shipped"))
}

pub fn is_shipped(path: &Path) -> bool {
    marker(path).exists()
}

/// A file waiting for upload.
struct Waiting {
    path: PathBuf,
    bytes: u64,
}

/// Upload order: the chain's files by first seq (so the store's chain only
/// ever grows at its end), then everything else by path.
type Order = (u8, u64, String);

pub(crate) struct Shipper {
    dir: PathBuf,
    config: RemoteConfig,
    url: S3Url,
    store: Arc<AmazonS3>,
    /// The same transport, for uploads object_store has no call for
    /// (Object Lock headers).
    http: HttpClient,
    key: Option<SigningKey>,
    state: Arc<RemoteState>,
    jobs: mpsc::UnboundedReceiver<ShipJob>,
    waiting: BTreeMap<Order, Waiting>,
    /// The newest chain file in the store (see [`Shipper::shipped_head`]).
    head: Option<Head>,
    /// The last checkpoint signed: (seq, when).
    checkpointed: Option<(u64, Instant)>,
}

impl Shipper {
    /// Builds the client and loads the key; errors stop the store from opening.
    pub(crate) fn open(
        config: &AuditConfig,
    ) -> Result<(Self, Arc<RemoteState>, mpsc::UnboundedSender<ShipJob>), String> {
        let remote = config.remote.clone().ok_or("no [audit.remote]")?;
        remote.validate(config.retention_days)?;
        let url = remote.s3_url()?;
        let store = objstore::open(
            &url,
            &remote.s3,
            objstore::Open {
                from_env: false,
                max_retries: 3,
            },
        )
        .map_err(|e| format!("[audit.remote] {url}: {e}"))?;
        let http = remote.s3.connector()?.client();
        let key = if remote.signs() {
            let key = SigningKey::load(
                remote.signing_key_file.as_deref(),
                remote.signing_key_credential.as_deref(),
            )
            .map_err(|e| format!("[audit.remote] signing key: {e}"))?;
            Some(key)
        } else {
            tracing::warn!(url = %url, "no audit signing key: files are shipped without checkpoints");
            None
        };
        let state = Arc::new(RemoteState {
            health: Mutex::new(RemoteHealth {
                url: url.to_string(),
                checkpoint_key_id: key.as_ref().map(|k| k.public().id()),
                ..RemoteHealth::default()
            }),
            refusing: AtomicBool::new(false),
        });
        let (tx, jobs) = mpsc::unbounded_channel();
        let shipper = Shipper {
            dir: config.dir.clone(),
            config: remote,
            url,
            store,
            http,
            key,
            state: state.clone(),
            jobs,
            waiting: BTreeMap::new(),
            head: None,
            checkpointed: None,
        };
        Ok((shipper, state, tx))
    }

    pub(crate) fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("audit-ship".into()).spawn(move || {
            let state = self.state.clone();
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(self.run()),
                Err(e) => state.update(|h| h.last_error = Some(format!("shipper runtime: {e}"))),
            }
        })
    }

    async fn run(mut self) {
        tracing::info!(url = %self.url, key_id = ?self.key.as_ref().map(|k| k.public().id()), "shipping audit files");
        self.rescan(true);
        let scan_every = Duration::from_secs(self.config.scan_interval_secs);
        let max_backoff = Duration::from_secs(self.config.retry_max_secs);
        let mut backoff = Duration::from_secs(1);
        let mut retry_at: Option<Instant> = None;
        let mut next_scan = Instant::now() + scan_every;
        loop {
            if retry_at.is_none_or(|t| Instant::now() >= t) {
                match self.ship_round().await {
                    Ok(()) => {
                        backoff = Duration::from_secs(1);
                        retry_at = None;
                    }
                    Err(e) => {
                        self.failed(&e);
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(max_backoff);
                    }
                }
            }
            let mut wake = next_scan;
            if let Some(t) = retry_at {
                wake = wake.min(t);
            }
            if let (Some((_, at)), true) = (self.checkpointed, self.key.is_some()) {
                wake = wake.min(at + Duration::from_secs(self.config.checkpoint_interval_secs));
            }
            let job = tokio::select! {
                job = self.jobs.recv() => job,
                _ = tokio::time::sleep_until(wake.into()) => None,
            };
            match job {
                Some(ShipJob::Sealed(path)) => self.add(path),
                Some(ShipJob::Flush(limit, reply)) => {
                    self.flush(limit).await;
                    let _ = reply.send(());
                    return;
                }
                None if self.jobs.is_closed() => return,
                None => {}
            }
            if Instant::now() >= next_scan {
                next_scan = Instant::now() + scan_every;
                self.rescan(false);
            }
        }
    }

    /// Keeps shipping until nothing waits or `limit` passes; then a last
    /// checkpoint. What is left goes at the next start.
    async fn flush(&mut self, limit: Duration) {
        while let Ok(job) = self.jobs.try_recv() {
            if let ShipJob::Sealed(path) = job {
                self.add(path);
            }
        }
        self.rescan(false);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), self.ship_round()).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    self.failed(&e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(_) => break,
            }
        }
        let left = self.waiting.len();
        if left > 0 {
            tracing::warn!(
                files = left,
                "audit files not yet uploaded at shutdown; they go at the next start"
            );
        }
    }

    /// Uploads every waiting file in order, stopping at the first failure
    /// (the order keeps the store's chain contiguous), then checkpoints.
    async fn ship_round(&mut self) -> Result<(), String> {
        while let Some((order, waiting)) = self.waiting.pop_first() {
            if let Err(e) = self.ship(&waiting.path).await {
                self.waiting.insert(order, waiting);
                self.publish_backlog();
                return Err(e);
            }
            if order.0 == 0 && waiting.path.exists() {
                self.advance_head(&waiting.path)?;
            }
            self.state.update(|h| {
                h.shipped_files += 1;
                h.shipped_bytes += waiting.bytes;
                h.last_upload_unix_ms = Some(unix_ms());
                h.consecutive_failures = 0;
                h.last_error = None;
            });
            self.publish_backlog();
        }
        self.checkpoint_if_due().await
    }

    async fn ship(&self, path: &Path) -> Result<(), String> {
        let relative = self.relative(path)?;
        let bytes = match std::fs::read(path) {
            Ok(b) => Bytes::from(b),
            // Retention (of an older marker) or an operator removed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let sha256 = Sha256::digest(&bytes);
        self.put(&relative, bytes.clone(), &sha256).await?;
        let note = serde_json::json!({
            "key": self.url.key(&relative).as_ref(),
            "sha256": sha256.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "bytes": bytes.len(),
            "unix_ms": unix_ms(),
        });
        std::fs::write(marker(path), format!("{note}\n"))
            .map_err(|e| format!("marking {} shipped: {e}", path.display()))?;
        tracing::debug!(file = %relative, bytes = bytes.len(), "shipped audit file");
        Ok(())
    }

    /// Puts `bytes` at `relative` unless the store has it already. An
    /// existing object with other contents is an error: evidence is never
    /// overwritten (it may be another host with the same name).
    async fn put(&self, relative: &str, bytes: Bytes, sha256: &[u8]) -> Result<(), String> {
        let key = self.url.key(relative);
        let result = match self.config.object_lock {
            None => {
                let mut attributes = Attributes::new();
                attributes.insert(Attribute::ContentType, content_type(relative).into());
                let options = PutOptions {
                    mode: PutMode::Create,
                    attributes,
                    ..PutOptions::default()
                };
                match self.store.put_opts(&key, PutPayload::from(bytes), options).await {
                    Ok(_) => Ok(()),
                    Err(object_store::Error::AlreadyExists { .. }) => Err(Put::Exists),
                    Err(e) => Err(Put::Failed(e.to_string())),
                }
            }
            Some(mode) => self.put_locked(&key, relative, bytes, sha256, mode).await,
        };
        match result {
            Ok(()) => Ok(()),
            Err(Put::Exists) => {
                let existing = self
                    .store
                    .get(&key)
                    .await
                    .map_err(|e| format!("{key}: exists; reading it back: {e}"))?
                    .bytes()
                    .await
                    .map_err(|e| format!("{key}: exists; reading it back: {e}"))?;
                if Sha256::digest(&existing).as_slice() == sha256 {
                    Ok(())
                } else {
                    Err(format!(
                        "{key} exists in the store with other contents; not overwritten \
                         (another host with the same name, or tampering)"
                    ))
                }
            }
            Err(Put::Failed(e)) => Err(format!("{key}: {e}")),
        }
    }

    /// A PUT carrying Object Lock headers: object_store has no option for
    /// them, so the request is presigned with them (SigV4 must cover every
    /// `x-amz-` header) and sent on our transport.
    async fn put_locked(
        &self,
        key: &ObjectPath,
        relative: &str,
        bytes: Bytes,
        sha256: &[u8],
        mode: ObjectLockMode,
    ) -> Result<(), Put> {
        let until = layout::now_us() + i64::from(self.config.object_lock_days) * 86_400_000_000;
        let until = format!("{}Z", &layout::rfc3339(until)[..19]);
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha256);
        let headers = [
            ("x-amz-object-lock-mode", mode.header_value().to_owned()),
            ("x-amz-object-lock-retain-until-date", until),
            ("x-amz-checksum-sha256", checksum),
            ("content-type", content_type(relative).to_owned()),
            ("if-none-match", "*".to_owned()),
        ];
        let mut options = SignedUrlOptions::new();
        let mut request = http::Request::builder().method(http::Method::PUT);
        for (name, value) in &headers {
            let (name, value) = (
                http::HeaderName::from_static(name),
                http::HeaderValue::from_str(value).map_err(|e| Put::Failed(e.to_string()))?,
            );
            options = options.with_signed_header(name.clone(), value.clone());
            request = request.header(name, value);
        }
        let url = self
            .store
            .signed_url_opts(http::Method::PUT, key, Duration::from_secs(900), &options)
            .await
            .map_err(|e| Put::Failed(e.to_string()))?;
        let request = request
            .uri(url.as_str())
            .header(http::header::CONTENT_LENGTH, bytes.len())
            .body(HttpRequestBody::from(bytes))
            .map_err(|e| Put::Failed(e.to_string()))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| Put::Failed(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status == http::StatusCode::PRECONDITION_FAILED {
            return Err(Put::Exists);
        }
        let body = response.into_body().bytes().await.unwrap_or_default();
        let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        Err(Put::Failed(format!("HTTP {status}: {text}")))
    }

    /// Signs and uploads a checkpoint of the shipped head when it moved
    /// since the last one, or when the last one is `checkpoint_interval_secs`
    /// old (so a verifier can tell a live host from a cut one).
    async fn checkpoint_if_due(&mut self) -> Result<(), String> {
        if self.key.is_none() {
            return Ok(());
        }
        let Some(head) = self.shipped_head()? else {
            return Ok(());
        };
        let Some(key) = &self.key else { return Ok(()) };
        let interval = Duration::from_secs(self.config.checkpoint_interval_secs);
        let due = match self.checkpointed {
            None => true,
            Some((seq, at)) => seq != head.seq || at.elapsed() >= interval,
        };
        if !due {
            return Ok(());
        }
        let checkpoint = Checkpoint::sign(key, &head.host, head.seq, &head.hash, layout::now_us(), Some(head.file));
        let relative = checkpoint.relative_key();
        let json = Bytes::from(checkpoint.to_json());
        let sha256 = Sha256::digest(&json);
        self.put(&relative, json, &sha256).await?;
        self.checkpointed = Some((head.seq, Instant::now()));
        self.state.update(|h| {
            h.last_checkpoint_seq = Some(head.seq);
            h.last_checkpoint_unix_ms = Some(unix_ms());
        });
        tracing::debug!(seq = head.seq, "signed audit checkpoint");
        Ok(())
    }

    /// The newest shipped chain file: every older one is shipped too,
    /// because files go in chain order. Found on disk once, then kept.
    fn shipped_head(&mut self) -> Result<Option<Head>, String> {
        if self.head.is_none() {
            let files = layout::list_files(&self.dir).map_err(|e| format!("listing {}: {e}", self.dir.display()))?;
            if let Some(newest) = files.iter().rev().find(|f| is_shipped(&f.path)) {
                self.advance_head(&newest.path)?;
            }
        }
        Ok(self.head.clone())
    }

    /// `path`, a chain file just shipped, may be the new head.
    fn advance_head(&mut self, path: &Path) -> Result<(), String> {
        let meta = parquet::read_meta(path).map_err(|e| e.to_string())?;
        if self.head.as_ref().is_some_and(|h| h.seq >= meta.last_seq) {
            return Ok(());
        }
        let relative = self.relative(path)?;
        let host = relative
            .split('/')
            .nth(1)
            .and_then(|h| h.strip_prefix("host="))
            .unwrap_or_default()
            .to_owned();
        self.state.update(|h| h.shipped_seq = Some(meta.last_seq));
        self.head = Some(Head {
            host,
            seq: meta.last_seq,
            hash: meta.last_hash,
            file: relative,
        });
        Ok(())
    }

    fn add(&mut self, path: PathBuf) {
        let Ok(relative) = self.relative(&path) else { return };
        if is_shipped(&path) {
            return;
        }
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        let seq = layout::seq_of_name(&relative);
        let order = (u8::from(seq.is_none()), seq.unwrap_or(0), relative);
        self.waiting.insert(order, Waiting { path, bytes });
        self.publish_backlog();
    }

    /// Finds sealed files without a marker: all of them at start, then
    /// those of the last two days (where writers put new files).
    fn rescan(&mut self, full: bool) {
        let since = (!full).then(|| layout::date_of(layout::now_us() - 86_400_000_000));
        match layout::list_sealed(&self.dir, since.as_deref()) {
            Ok(files) => {
                for path in files {
                    self.add(path);
                }
            }
            Err(e) => tracing::warn!(dir = %self.dir.display(), error = %e, "cannot scan for sealed audit files"),
        }
    }

    fn relative(&self, path: &Path) -> Result<String, String> {
        let rel = path
            .strip_prefix(&self.dir)
            .map_err(|_| format!("{} is outside the audit directory", path.display()))?;
        rel.to_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{} is not UTF-8", path.display()))
    }

    fn publish_backlog(&self) {
        let bytes: u64 = self.waiting.values().map(|w| w.bytes).sum();
        let refusing = self.config.max_backlog_bytes > 0 && bytes > self.config.max_backlog_bytes;
        let was = self.state.refusing.swap(refusing, Ordering::Relaxed);
        if refusing != was {
            if refusing {
                tracing::error!(bytes, url = %self.url, "audit upload backlog is full; refusing new events");
            } else {
                tracing::info!(bytes, "audit upload backlog below its limit; accepting events");
            }
        }
        let oldest = self.waiting.values().next().and_then(|w| self.relative(&w.path).ok());
        self.state.update(|h| {
            h.backlog_files = self.waiting.len();
            h.backlog_bytes = bytes;
            h.oldest_waiting = oldest;
            h.refusing_events = refusing;
        });
    }

    fn failed(&self, error: &str) {
        let mut failures = 0;
        self.state.update(|h| {
            h.consecutive_failures += 1;
            failures = h.consecutive_failures;
            h.last_error = Some(error.to_owned());
            h.last_error_unix_ms = Some(unix_ms());
        });
        // The first failure and then every doubling: a long outage does
        // not flood the log.
        if failures.is_power_of_two() {
            tracing::warn!(url = %self.url, failures, error, "audit upload failed; will retry");
        }
    }
}

#[derive(Clone)]
struct Head {
    host: String,
    seq: u64,
    hash: String,
    file: String,
}

enum Put {
    Exists,
    Failed(String),
}

fn content_type(relative: &str) -> &'static str {
    match relative.rsplit('.').next() {
        Some("parquet") => "application/vnd.apache.parquet",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn unix_ms() -> u64 {
    u64::try_from(layout::now_us() / 1000).unwrap_or(0)
}
