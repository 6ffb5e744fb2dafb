//! `loopgate audit verify --url`: a host's chain checked from object
//! storage alone, up to its newest signed checkpoint.
//!
//! The files are walked exactly as on disk (names, links, hashes, file
//! metadata). Then the newest checkpoint must be signed by a trusted key
//! and the chain must reach its seq with its hash there: a chain that
//! ends before it was cut (its newest objects deleted); one with another
//! hash there was rewritten. Because every hash covers all events before
//! it, that one comparison vouches for the whole chain up to the
//! checkpoint. `--all-checkpoints` checks every checkpoint besides. Each
//! session recording an event names is fetched and hashed: the chain
//! holds its SHA-256, so a recording rewritten or deleted in the bucket
//! shows.
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use sha2::{Digest as _, Sha256};

use super::checkpoint::{self, Checkpoint};
use super::layout;
use super::parquet;
use super::recording::{self, RecordingRef};
use super::row::{COMMAND_PARAMETERS, EVENT_ID, list_at, str_at};
use super::verify::{Broken, Walk};
use crate::objstore::S3Url;
use crate::signing::TrustedKeys;

/// Downloads in flight while walking a chain.
const PARALLEL_GETS: usize = 4;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Keys checkpoints must be signed with; empty: checkpoints unchecked.
    pub trusted: TrustedKeys,
    /// Check every checkpoint, not only the newest.
    pub all_checkpoints: bool,
    /// Fail when the newest checkpoint is older than this (a host that
    /// stopped shipping, or newer checkpoints deleted).
    pub max_age: Option<Duration>,
}

/// A host whose chain holds.
#[derive(Clone, Debug)]
pub struct HostReport {
    pub host: String,
    pub objects: usize,
    pub events: u64,
    pub last_seq: u64,
    pub last_hash: String,
    /// The newest checkpoint, verified (none without trusted keys).
    pub checkpoint: Option<Checkpoint>,
    pub checkpoints_listed: usize,
    pub checkpoints_checked: usize,
    /// Session recordings the chain names, each matching its hash.
    pub recordings: usize,
}

pub type Outcome = Result<HostReport, Result<Broken, String>>;

/// The `host=` partitions under `url` (every day's).
pub async fn hosts(store: &AmazonS3, url: &S3Url) -> Result<Vec<String>, String> {
    let mut hosts = std::collections::BTreeSet::new();
    for date in dates(store, url).await? {
        let listing = store
            .list_with_delimiter(Some(&url.key(&date)))
            .await
            .map_err(|e| format!("listing {url}/{date}: {e}"))?;
        for p in listing.common_prefixes {
            if let Some(host) = p.filename().and_then(|n| n.strip_prefix("host=")) {
                hosts.insert(host.to_owned());
            }
        }
    }
    Ok(hosts.into_iter().collect())
}

async fn dates(store: &AmazonS3, url: &S3Url) -> Result<Vec<String>, String> {
    let listing = store
        .list_with_delimiter(url.root().as_ref())
        .await
        .map_err(|e| format!("listing {url}: {e}"))?;
    let mut dates: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .filter(|n| n.starts_with("date="))
        .map(str::to_owned)
        .collect();
    dates.sort();
    Ok(dates)
}

/// One chain file in the store.
struct Remote {
    relative: String,
    key: ObjectPath,
    first_seq: u64,
}

impl Remote {
    fn shown(&self, url: &S3Url) -> PathBuf {
        PathBuf::from(format!("s3://{}/{}", url.bucket, self.key))
    }
}

/// Verifies `host`'s chain under `url`.
pub async fn verify_host(store: &AmazonS3, url: &S3Url, host: &str, options: &Options) -> Outcome {
    let files = chain_files(store, url, host).await.map_err(Err)?;
    let Some(last_file) = files.last() else {
        return Err(Err(format!("no audit files for host {host} under {url}")));
    };
    let last_shown = last_file.shown(url);
    let checkpoints = checkpoint_keys(store, url, host).await.map_err(Err)?;
    let wanted: Vec<&(u64, i64, ObjectPath)> = match (options.trusted.is_empty(), options.all_checkpoints) {
        (true, _) => Vec::new(),
        (false, true) => checkpoints.iter().collect(),
        (false, false) => checkpoints.last().into_iter().collect(),
    };
    if !options.trusted.is_empty() && wanted.is_empty() {
        return Err(Ok(Broken {
            file: last_shown,
            row: None,
            event_id: None,
            problem: format!(
                "no signed checkpoint for host {host} under {url}/{}: the end of the chain is not vouched for",
                checkpoint::DIR
            ),
        }));
    }
    let mut signed = Vec::with_capacity(wanted.len());
    for (_, _, key) in wanted {
        signed.push(fetch_checkpoint(store, url, host, key, &options.trusted).await?);
    }
    let mut walk = Walk::new(None);
    let mut recordings = Vec::new();
    for c in &signed {
        walk.watch(c.seq);
    }
    let mut downloads = futures_util::stream::iter(files.iter())
        .map(|f| async move {
            let bytes = store.get(&f.key).await?.bytes().await?;
            Ok::<_, object_store::Error>((f, bytes))
        })
        .buffered(PARALLEL_GETS);
    while let Some(next) = downloads.next().await {
        let (file, bytes) = next.map_err(|e| Err(format!("reading from {url}: {e}")))?;
        let shown = file.shown(url);
        let (meta, rows) = parquet::read_bytes(bytes, &shown).map_err(|e| {
            Ok(Broken {
                file: shown.clone(),
                row: None,
                event_id: None,
                problem: format!("unreadable: {e}"),
            })
        })?;
        walk.check_file(&shown, &file.relative, &meta, &rows).map_err(Ok)?;
        for (i, row) in rows.iter().enumerate() {
            if let Some(r) = RecordingRef::from_parameters(list_at(row, COMMAND_PARAMETERS)) {
                recordings.push((shown.clone(), i, str_at(row, EVENT_ID).map(str::to_owned), r));
            }
        }
    }
    // The chain holds each recording's hash: the objects must match.
    let mut checks = futures_util::stream::iter(recordings.iter())
        .map(|(file, row, event_id, r)| async move {
            check_recording(store, url, r).await.map_err(|problem| {
                problem.map(|problem| Broken {
                    file: file.clone(),
                    row: Some(*row),
                    event_id: event_id.clone(),
                    problem,
                })
            })
        })
        .buffered(PARALLEL_GETS);
    while let Some(checked) = checks.next().await {
        checked?;
    }
    let (last_seq, last_hash) = walk.head();
    for c in &signed {
        check_against(c, &walk, last_seq, &last_shown).map_err(Ok)?;
    }
    let newest = signed.iter().max_by_key(|c| (c.seq, c.time_us)).cloned();
    if let (Some(limit), Some(c)) = (options.max_age, &newest) {
        let age = Duration::from_micros(u64::try_from(layout::now_us() - c.time_us).unwrap_or(0));
        if age > limit {
            return Err(Ok(Broken {
                file: PathBuf::from(format!("s3://{}/{}", url.bucket, url.key(&c.relative_key()))),
                row: None,
                event_id: None,
                problem: format!(
                    "the newest checkpoint was signed {}s ago (at {}), more than --max-age {}s: \
                     the host stopped shipping, or newer objects were deleted",
                    age.as_secs(),
                    c.time,
                    limit.as_secs()
                ),
            }));
        }
    }
    Ok(HostReport {
        host: host.to_owned(),
        objects: files.len(),
        events: walk.events(),
        last_seq,
        last_hash,
        checkpoint: newest,
        checkpoints_listed: checkpoints.len(),
        checkpoints_checked: signed.len(),
        recordings: recordings.len(),
    })
}

/// The recording's object hashed as it streams in, against the hash the
/// chain holds. Errors as in [`Outcome`]: `Err(Ok(problem))` the trail
/// is broken, `Err(Err(e))` the store could not be read.
async fn check_recording(store: &AmazonS3, url: &S3Url, r: &RecordingRef) -> Result<(), Result<String, String>> {
    if r.file(std::path::Path::new("")).is_none() {
        return Err(Ok(format!("recording path {:?} leaves the host's partitions", r.path)));
    }
    let key = url.key(&r.path);
    let mut body = match store.get(&key).await {
        Ok(got) => got.into_stream(),
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Ok(format!("recording {} is missing from the bucket", r.path)));
        }
        Err(e) => return Err(Err(format!("reading {url}/{}: {e}", r.path))),
    };
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.next().await {
        hasher.update(chunk.map_err(|e| Err(format!("reading {url}/{}: {e}", r.path)))?);
    }
    let hash = recording::hex(&hasher.finalize());
    if hash != r.sha256 {
        return Err(Ok(format!(
            "recording {} was rewritten: sha256 {hash}, recorded {}",
            r.path, r.sha256
        )));
    }
    Ok(())
}

/// The chain must reach the checkpoint's seq, with its hash there.
fn check_against(c: &Checkpoint, walk: &Walk, last_seq: u64, last_file: &std::path::Path) -> Result<(), Broken> {
    if c.seq > last_seq {
        return Err(Broken {
            file: last_file.to_owned(),
            row: None,
            event_id: None,
            problem: format!(
                "the chain in the store ends at seq {last_seq}, but a checkpoint signed {} vouches for seq {} \
                 (in {}): the newest objects were deleted (the end was cut)",
                c.time,
                c.seq,
                c.file.as_deref().unwrap_or("?")
            ),
        });
    }
    match walk.watched(c.seq) {
        Some(hash) if hash == c.hash => Ok(()),
        found => Err(Broken {
            file: last_file.to_owned(),
            row: None,
            event_id: None,
            problem: format!(
                "the event at seq {} has hash {} in the store, but the checkpoint signed {} vouches for {}: \
                 the chain was rewritten at or before seq {}",
                c.seq,
                found.unwrap_or("(none)"),
                c.time,
                c.hash,
                c.seq
            ),
        }),
    }
}

/// Every chain file of `host`, in chain order (by the seq in its name;
/// the walk checks names against contents).
async fn chain_files(store: &AmazonS3, url: &S3Url, host: &str) -> Result<Vec<Remote>, String> {
    let mut files = Vec::new();
    for date in dates(store, url).await? {
        let prefix = url.key(&format!("{date}/host={host}"));
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| format!("listing {url}/{date}/host={host}: {e}"))?;
        for o in objects {
            let Some(relative) = url.relative(&o.location) else {
                continue;
            };
            let name = relative.rsplit('/').next().unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if let Some(first_seq) = layout::seq_of_name(relative) {
                files.push(Remote {
                    relative: relative.to_owned(),
                    key: o.location.clone(),
                    first_seq,
                });
            }
        }
    }
    files.sort_by(|a, b| (a.first_seq, &a.relative).cmp(&(b.first_seq, &b.relative)));
    Ok(files)
}

/// `host`'s checkpoint objects as (seq, time, key), oldest first, from
/// their names (each one read is checked against its name).
async fn checkpoint_keys(store: &AmazonS3, url: &S3Url, host: &str) -> Result<Vec<(u64, i64, ObjectPath)>, String> {
    let prefix = url.key(checkpoint::host_dir(host).trim_end_matches('/'));
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| format!("listing checkpoints of {host}: {e}"))?;
    let mut out: Vec<(u64, i64, ObjectPath)> = objects
        .into_iter()
        .filter_map(|o| {
            let name = o.location.filename()?.strip_suffix(".json")?;
            let (seq, time) = name.split_once('-')?;
            Some((seq.parse().ok()?, time.parse().ok()?, o.location.clone()))
        })
        .collect();
    out.sort_by_key(|a| (a.0, a.1));
    Ok(out)
}

async fn fetch_checkpoint(
    store: &AmazonS3,
    url: &S3Url,
    host: &str,
    key: &ObjectPath,
    trusted: &TrustedKeys,
) -> Result<Checkpoint, Result<Broken, String>> {
    let shown = PathBuf::from(format!("s3://{}/{key}", url.bucket));
    let broken = |problem: String| {
        Ok(Broken {
            file: shown.clone(),
            row: None,
            event_id: None,
            problem,
        })
    };
    let bytes = store
        .get(key)
        .await
        .map_err(|e| Err(format!("reading {shown:?}: {e}")))?
        .bytes()
        .await
        .map_err(|e| Err(format!("reading {shown:?}: {e}")))?;
    let c: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| broken(format!("not a checkpoint: {e}")))?;
    c.check(trusted)
        .map_err(|e| broken(format!("checkpoint refused: {e} (forged or corrupted)")))?;
    if c.host != host || url.key(&c.relative_key()) != *key {
        return Err(broken(format!(
            "checkpoint of host {} at seq {} is stored under another name (moved or replayed)",
            c.host, c.seq
        )));
    }
    Ok(c)
}
