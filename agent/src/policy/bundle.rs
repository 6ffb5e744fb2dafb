//! Policy bundles: one signed policy pack for a whole fleet, pulled from
//! object storage (`s3://`) or HTTPS, like OPA's bundles.
//!
//! A bundle is one file, a DSSE envelope (the in-toto / Sigstore signing
//! envelope): `payloadType`, `payload` (base64 of the bundle JSON:
//! `revision`, `created`, and `files`, the pack's `.rego` and `.json` files
//! by name) and Ed25519 `signatures` over DSSE's pre-authentication
//! encoding. One object, so a fetch never mixes two versions.
//!
//! The agent accepts a bundle only if a trusted key signed it and its
//! revision is newer than the one in force (no rollback to an older,
//! validly signed pack). It unpacks it under `cache_dir`, loads it like a
//! policy directory, and keeps the envelope as `current.bundle`: when the
//! store is unreachable, at start or later, the last good bundle keeps
//! deciding. With neither a store nor a cached bundle the agent does not
//! start (fail closed).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{PolicyError, PolicyHandle, RegoPolicy, RegoPolicyConfig};
use crate::objstore::{self, S3Config, S3Url};
use crate::signing::{SigningKey, TrustedKeys, encode_signature};

pub const PAYLOAD_TYPE: &str = "application/vnd.loopgate.policy-bundle.v1+json";

/// The envelope as cached on disk.
pub const CURRENT: &str = "current.bundle";

/// A bundle is a policy pack, not a data set.
const MAX_BUNDLE_BYTES: usize = 16 << 20;

/// `[policy.bundle]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleConfig {
    /// `s3://bucket/key` or `https://host/path` of the bundle.
    pub url: String,
    /// Keys a bundle must be signed with (PEM files).
    pub public_keys: Vec<PathBuf>,
    /// How often the store is asked for a newer bundle.
    pub poll_secs: u64,
    /// Where bundles are unpacked and the last good one is kept.
    pub cache_dir: PathBuf,
    /// Connection settings for `s3://` (its `ca_file` also serves https).
    pub s3: S3Config,
}

impl Default for BundleConfig {
    fn default() -> Self {
        BundleConfig {
            url: String::new(),
            public_keys: Vec::new(),
            poll_secs: 60,
            cache_dir: PathBuf::from("/var/lib/loopgate/policy-bundle"),
            s3: S3Config::default(),
        }
    }
}

impl BundleConfig {
    pub fn validate(&self) -> Result<(), String> {
        Source::describe(&self.url)?;
        if self.public_keys.is_empty() {
            return Err("public_keys must name at least one key: bundles are accepted only signed".into());
        }
        if self.poll_secs == 0 {
            return Err("poll_secs must be at least 1".into());
        }
        if !self.cache_dir.is_absolute() {
            return Err("cache_dir must be an absolute path".into());
        }
        self.s3.validate().map_err(|e| format!("s3: {e}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("bundle refused: {0}")]
    Invalid(String),
    #[error("bundle revision {offered} is not newer than revision {current} in force (rollback refused)")]
    Rollback { offered: u64, current: u64 },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

/// The DSSE envelope.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct EnvelopeSignature {
    keyid: String,
    sig: String,
}

/// What a bundle carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Increases with every published bundle.
    pub revision: u64,
    pub created: String,
    /// File name → contents (`.rego` modules, `.json` data).
    pub files: BTreeMap<String, String>,
}

/// A bundle whose signature and contents checked out.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub payload: Payload,
    /// SHA-256 of the payload, hex: names this exact pack.
    pub digest: String,
    pub key_id: String,
}

/// DSSE's pre-authentication encoding: what the signatures cover.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A pack file name: flat, no hidden files, `.rego` or `.json`.
fn valid_name(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".rego") || name.ends_with(".json"))
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Builds and signs a bundle of the pack in `dir` (it must load).
pub fn build(dir: &Path, key: &SigningKey, revision: u64, created: String) -> Result<Vec<u8>, BundleError> {
    RegoPolicy::load(dir)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_file() && valid_name(&name) {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            files.insert(name, text);
        }
    }
    let payload = serde_json::to_vec(&Payload {
        revision,
        created,
        files,
    })
    .map_err(|e| BundleError::Invalid(e.to_string()))?;
    let envelope = Envelope {
        payload_type: PAYLOAD_TYPE.to_owned(),
        payload: B64.encode(&payload),
        signatures: vec![EnvelopeSignature {
            keyid: key.public().id(),
            sig: encode_signature(&key.sign(&pae(PAYLOAD_TYPE, &payload))),
        }],
    };
    let mut out = serde_json::to_vec_pretty(&envelope).map_err(|e| BundleError::Invalid(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// Checks an envelope: a trusted signature over the payload, then the
/// payload's shape. Nothing of an unsigned payload is looked at.
pub fn open(bytes: &[u8], trusted: &TrustedKeys) -> Result<Bundle, BundleError> {
    let invalid = |m: String| BundleError::Invalid(m);
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(invalid(format!("larger than {MAX_BUNDLE_BYTES} bytes")));
    }
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a bundle envelope: {e}")))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(invalid(format!(
            "payload type {:?} is not a policy bundle",
            envelope.payload_type
        )));
    }
    let payload = B64
        .decode(envelope.payload.as_bytes())
        .map_err(|_| invalid("the payload is not base64".into()))?;
    let signed = pae(&envelope.payload_type, &payload);
    let mut reasons = Vec::new();
    let key_id = envelope
        .signatures
        .iter()
        .find_map(|s| match trusted.check(&s.keyid, &signed, &s.sig) {
            Ok(()) => Some(s.keyid.clone()),
            Err(e) => {
                reasons.push(e);
                None
            }
        })
        .ok_or_else(|| {
            if reasons.is_empty() {
                invalid("it is not signed".into())
            } else {
                invalid(format!("no trusted signature ({})", reasons.join("; ")))
            }
        })?;
    let parsed: Payload = serde_json::from_slice(&payload).map_err(|e| invalid(format!("payload: {e}")))?;
    if let Some(bad) = parsed.files.keys().find(|n| !valid_name(n)) {
        return Err(invalid(format!("file name {bad:?} (only flat .rego and .json names)")));
    }
    if !parsed.files.keys().any(|n| n.ends_with(".rego")) {
        return Err(invalid("it holds no .rego module".into()));
    }
    let digest = Sha256::digest(&payload).iter().map(|b| format!("{b:02x}")).collect();
    Ok(Bundle {
        payload: parsed,
        digest,
        key_id,
    })
}

impl Bundle {
    /// Writes the pack to `cache_dir/rev-<revision>-<digest>` (whole or
    /// not at all) and returns that directory.
    pub fn unpack(&self, cache_dir: &Path) -> Result<PathBuf, BundleError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BundleError::Io { path, source }
        };
        let dir = cache_dir.join(format!("rev-{}-{}", self.payload.revision, &self.digest[..16]));
        if dir.is_dir() {
            return Ok(dir);
        }
        std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
        let tmp = cache_dir.join(format!(".unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        for (name, text) in &self.payload.files {
            let path = tmp.join(name);
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// Removes the packs of other revisions under `cache_dir` (best effort).
    fn prune_others(dir: &Path, cache_dir: &Path) {
        let Ok(entries) = std::fs::read_dir(cache_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let old = entry.file_name().to_string_lossy().starts_with("rev-") && path != dir;
            if old && let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::debug!(dir = %path.display(), error = %e, "could not remove an old policy bundle");
            }
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "revision {} (sha256 {}, {} files, signed by key {})",
            self.payload.revision,
            &self.digest[..16],
            self.payload.files.len(),
            self.key_id
        )
    }
}

/// Where bundles come from.
enum Source {
    S3 {
        store: Arc<object_store::aws::AmazonS3>,
        key: ObjectPath,
    },
    Https {
        url: String,
        client: object_store::client::HttpClient,
    },
}

impl Source {
    fn describe(url: &str) -> Result<(), String> {
        if url.starts_with("https://") {
            url::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
            return Ok(());
        }
        let u = S3Url::parse(url).map_err(|e| format!("url: {e} (or https://)"))?;
        if u.prefix.is_empty() {
            return Err(format!("url {url:?} names a bucket, not a bundle object"));
        }
        Ok(())
    }

    fn open(config: &BundleConfig) -> Result<Source, String> {
        Source::describe(&config.url)?;
        if config.url.starts_with("https://") {
            return Ok(Source::Https {
                url: config.url.clone(),
                client: config.s3.connector()?.client(),
            });
        }
        let url = S3Url::parse(&config.url)?;
        let bucket = S3Url {
            bucket: url.bucket.clone(),
            prefix: String::new(),
        };
        let store = objstore::open(
            &bucket,
            &config.s3,
            objstore::Open {
                from_env: false,
                max_retries: 2,
            },
        )?;
        Ok(Source::S3 {
            store,
            key: ObjectPath::from(url.prefix),
        })
    }

    /// The bundle's bytes, unless it still has the ETag `known`.
    async fn fetch(&self, known: Option<&str>) -> Result<Option<(Bytes, Option<String>)>, String> {
        match self {
            Source::S3 { store, key } => {
                let options = GetOptions {
                    if_none_match: known.map(str::to_owned),
                    ..GetOptions::default()
                };
                match store.get_opts(key, options).await {
                    Ok(got) => {
                        let etag = got.meta.e_tag.clone();
                        let bytes = got.bytes().await.map_err(|e| e.to_string())?;
                        Ok(Some((bytes, etag)))
                    }
                    Err(object_store::Error::NotModified { .. }) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
            Source::Https { url, client } => {
                let mut request = http::Request::builder().method(http::Method::GET).uri(url.as_str());
                if let Some(etag) = known {
                    request = request.header(http::header::IF_NONE_MATCH, etag);
                }
                let request = request
                    .body(object_store::client::HttpRequestBody::empty())
                    .map_err(|e| e.to_string())?;
                let response = client.execute(request).await.map_err(|e| e.to_string())?;
                match response.status() {
                    http::StatusCode::NOT_MODIFIED => Ok(None),
                    s if s.is_success() => {
                        let etag = response
                            .headers()
                            .get(http::header::ETAG)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let bytes = response.into_body().bytes().await.map_err(|e| e.to_string())?;
                        Ok(Some((bytes, etag)))
                    }
                    s => Err(format!("HTTP {s}")),
                }
            }
        }
    }
}

/// What `loopgate status` shows of the bundle.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleStatus {
    pub url: String,
    pub revision: Option<u64>,
    pub digest: Option<String>,
    pub key_id: Option<String>,
    /// Where the pack in force was unpacked.
    pub dir: Option<PathBuf>,
    /// Where it came from at start: `store` or `cache` (the store was unreachable).
    pub loaded_from: Option<String>,
    pub last_fetch_unix_ms: Option<u64>,
    /// The last fetch or load that failed, until one succeeds.
    pub last_error: Option<String>,
}

/// What happened to an offered bundle, for the caller to log and record.
pub enum Outcome {
    Loaded(Bundle),
    Refused(BundleError),
}

/// Keeps the policy in force in step with the fleet's bundle.
pub struct BundleSync {
    config: BundleConfig,
    trusted: TrustedKeys,
    source: Source,
    handle: Arc<PolicyHandle>,
    state: Mutex<SyncState>,
    status: Mutex<BundleStatus>,
}

#[derive(Default)]
struct SyncState {
    etag: Option<String>,
    revision: u64,
    digest: String,
    /// The digest of the last refused bundle: refused once, not every poll.
    refused: Option<String>,
}

impl BundleSync {
    /// Loads the bundle from the store, else the cached last good one; an
    /// error when there is neither (the agent must not start).
    pub async fn start(config: &BundleConfig, policy: &RegoPolicyConfig) -> Result<Arc<BundleSync>, BundleError> {
        config.validate().map_err(BundleError::Config)?;
        let trusted = TrustedKeys::load(&config.public_keys).map_err(|e| BundleError::Config(e.to_string()))?;
        let source = Source::open(config).map_err(BundleError::Config)?;
        let fetched = tokio::time::timeout(Duration::from_secs(10), source.fetch(None))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let fetched = match fetched {
            Ok(Some(got)) => Ok(got),
            Ok(None) => Err("the store answered 304 to an unconditional request".to_owned()),
            Err(e) => Err(e),
        };
        let (bytes, etag, from) = match fetched {
            Ok((bytes, etag)) => (bytes.to_vec(), etag, "store"),
            Err(e) => {
                let cached = config.cache_dir.join(CURRENT);
                tracing::warn!(url = %config.url, error = %e, cache = %cached.display(), "policy bundle store unreachable; using the cached bundle");
                let bytes = std::fs::read(&cached).map_err(|_| BundleError::Fetch {
                    url: config.url.clone(),
                    message: format!("{e}; and no cached bundle at {}", cached.display()),
                })?;
                (bytes, None, "cache")
            }
        };
        let bundle = open(&bytes, &trusted)?;
        let dir = bundle.unpack(&config.cache_dir)?;
        let engine = RegoPolicy::load_with(&dir, policy)?;
        save_current(&config.cache_dir, &bytes)?;
        Bundle::prune_others(&dir, &config.cache_dir);
        tracing::info!(url = %config.url, from, bundle = %bundle.describe(), "policy bundle in force");
        let status = BundleStatus {
            url: config.url.clone(),
            revision: Some(bundle.payload.revision),
            digest: Some(bundle.digest.clone()),
            key_id: Some(bundle.key_id.clone()),
            dir: Some(dir),
            loaded_from: Some(from.to_owned()),
            last_fetch_unix_ms: (from == "store").then(unix_ms),
            last_error: None,
        };
        Ok(Arc::new(BundleSync {
            config: config.clone(),
            trusted,
            source,
            handle: Arc::new(PolicyHandle::with_config(Arc::new(engine), policy.clone())),
            state: Mutex::new(SyncState {
                etag: (from == "store").then_some(etag).flatten(),
                revision: bundle.payload.revision,
                digest: bundle.digest,
                refused: None,
            }),
            status: Mutex::new(status),
        }))
    }

    /// The handle sessions decide with.
    pub fn handle(&self) -> Arc<PolicyHandle> {
        self.handle.clone()
    }

    pub fn status(&self) -> BundleStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.config.poll_secs)
    }

    /// Asks the store for a newer bundle and puts it in force. None when
    /// nothing changed, or when the store is unreachable (logged; the
    /// pack in force keeps deciding) or offers a bundle already refused.
    pub async fn poll(self: &Arc<Self>) -> Option<Outcome> {
        let known = self.lock().etag.clone();
        let fetched = self.source.fetch(known.as_deref()).await;
        let now = unix_ms();
        let (bytes, etag) = match fetched {
            Ok(None) => {
                self.update_status(|s| s.last_fetch_unix_ms = Some(now));
                return None;
            }
            Ok(Some(got)) => got,
            Err(e) => {
                tracing::warn!(url = %self.config.url, error = %e, "policy bundle store unreachable; the pack in force keeps deciding");
                self.update_status(|s| s.last_error = Some(format!("fetching: {e}")));
                return None;
            }
        };
        self.update_status(|s| s.last_fetch_unix_ms = Some(now));
        let digest = hex_sha256(&bytes);
        {
            let mut state = self.lock();
            state.etag = etag;
            if state.refused.as_deref() == Some(digest.as_str()) {
                return None;
            }
        }
        // Compiling the pack blocks (up to its compile bound): not on a
        // runtime worker, where it would stall the sessions there.
        let sync = Arc::clone(self);
        let offered = match tokio::task::spawn_blocking(move || sync.offer(&bytes)).await {
            Ok(offered) => offered,
            Err(e) => {
                tracing::error!(url = %self.config.url, error = %e, "checking a policy bundle stopped");
                return None;
            }
        };
        match offered {
            Ok(Some(bundle)) => {
                self.update_status(|s| {
                    s.revision = Some(bundle.payload.revision);
                    s.digest = Some(bundle.digest.clone());
                    s.key_id = Some(bundle.key_id.clone());
                    s.loaded_from = Some("store".into());
                    s.last_error = None;
                });
                Some(Outcome::Loaded(bundle))
            }
            Ok(None) => {
                self.update_status(|s| s.last_error = None);
                None
            }
            Err(e) => {
                // A bundle that is wrong stays refused until another is
                // published; a local write error is tried again.
                if !matches!(e, BundleError::Io { .. }) {
                    self.lock().refused = Some(digest);
                }
                self.update_status(|s| s.last_error = Some(e.to_string()));
                Some(Outcome::Refused(e))
            }
        }
    }

    /// Checks, unpacks and loads `bytes`; Ok(None) for the pack in force.
    fn offer(&self, bytes: &[u8]) -> Result<Option<Bundle>, BundleError> {
        let bundle = open(bytes, &self.trusted)?;
        let current = self.lock().revision;
        if bundle.digest == self.lock().digest {
            return Ok(None);
        }
        if bundle.payload.revision <= current {
            return Err(BundleError::Rollback {
                offered: bundle.payload.revision,
                current,
            });
        }
        let dir = bundle.unpack(&self.config.cache_dir)?;
        self.handle.reload(&dir)?;
        save_current(&self.config.cache_dir, bytes)?;
        Bundle::prune_others(&dir, &self.config.cache_dir);
        let mut state = self.lock();
        state.revision = bundle.payload.revision;
        state.digest = bundle.digest.clone();
        state.refused = None;
        drop(state);
        self.update_status(|s| s.dir = Some(dir));
        Ok(Some(bundle))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_status(&self, f: impl FnOnce(&mut BundleStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The `policy_reload` event of a poll's outcome: the audit trail says
/// which pack decided from when, and which bundles were refused.
pub fn event(url: &str, outcome: &Outcome) -> crate::audit::Event {
    use crate::audit::{Decision, Event, EventKind, Verdict};
    let mut event = Event::new(EventKind::PolicyReload);
    event.decision = Some(match outcome {
        Outcome::Loaded(b) => {
            Decision::new(Verdict::Allow).reason(format!("loaded policy bundle {} from {url}", b.describe()))
        }
        Outcome::Refused(e) => Decision::new(Verdict::Error)
            .rule("policy.bundle")
            .reason(format!("policy bundle from {url} refused, previous policy kept: {e}")),
    });
    event
}

/// Keeps the envelope as the last good bundle (temp file, fsync, rename).
fn save_current(cache_dir: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    use std::io::Write as _;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    let tmp = cache_dir.join(format!(".{CURRENT}.tmp"));
    let path = cache_dir.join(CURRENT);
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_pem(SigningKey::generate_pem().expect("gen").as_bytes(), "test").expect("key")
    }

    fn pack() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("loopgate.rego"),
            "package loopgate\ndecision := {\"decision\": \"allow\"}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("data.json"), "{\"x\": 1}").expect("write");
        std::fs::write(dir.path().join(".hidden.rego"), "junk").expect("write");
        dir
    }

    #[test]
    fn a_built_bundle_opens_with_its_key_and_unpacks_whole() {
        let key = key();
        let trusted = TrustedKeys::from_keys(vec![key.public().clone()]);
        let pack = pack();
        let bytes = build(pack.path(), &key, 7, "2025-01-01T00:00:00Z".into()).expect("build");
        let bundle = open(&bytes, &trusted).expect("open");
        assert_eq!(bundle.payload.revision, 7);
        assert_eq!(
            bundle.payload.files.keys().collect::<Vec<_>>(),
            ["data.json", "loopgate.rego"]
        );
        let cache = tempfile::tempdir().expect("tempdir");
        let dir = bundle.unpack(cache.path()).expect("unpack");
        RegoPolicy::load(&dir).expect("the unpacked pack loads");
        assert_eq!(bundle.unpack(cache.path()).expect("again"), dir);
    }

    #[test]
    fn unsigned_foreign_or_altered_bundles_are_refused() {
        let key = key();
        let trusted = TrustedKeys::from_keys(vec![key.public().clone()]);
        let pack = pack();
        let bytes = build(pack.path(), &key, 1, "t".into()).expect("build");

        let stranger = TrustedKeys::from_keys(vec![self::key().public().clone()]);
        let err = open(&bytes, &stranger).unwrap_err().to_string();
        assert!(err.contains("no trusted signature"), "{err}");

        let mut envelope: Envelope = serde_json::from_slice(&bytes).expect("json");
        let mut payload: Payload =
            serde_json::from_slice(&B64.decode(&envelope.payload).expect("b64")).expect("payload");
        payload
            .files
            .insert("evil.rego".into(), "package loopgate.hipaa".into());
        envelope.payload = B64.encode(serde_json::to_vec(&payload).expect("json"));
        let err = open(&serde_json::to_vec(&envelope).expect("json"), &trusted)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not verify"), "{err}");

        envelope.signatures.clear();
        let err = open(&serde_json::to_vec(&envelope).expect("json"), &trusted)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not signed"), "{err}");
    }

    #[test]
    fn file_names_stay_inside_the_pack() {
        let key = key();
        let trusted = TrustedKeys::from_keys(vec![key.public().clone()]);
        for name in ["../x.rego", "a/b.rego", ".x.rego", "x.sh"] {
            let mut files = BTreeMap::new();
            files.insert(name.to_owned(), "package x".to_owned());
            files.insert("ok.rego".to_owned(), "package loopgate".to_owned());
            let payload = serde_json::to_vec(&Payload {
                revision: 1,
                created: "t".into(),
                files,
            })
            .expect("json");
            let envelope = Envelope {
                payload_type: PAYLOAD_TYPE.into(),
                payload: B64.encode(&payload),
                signatures: vec![EnvelopeSignature {
                    keyid: key.public().id(),
                    sig: encode_signature(&key.sign(&pae(PAYLOAD_TYPE, &payload))),
                }],
            };
            let err = open(&serde_json::to_vec(&envelope).expect("json"), &trusted)
                .unwrap_err()
                .to_string();
            assert!(err.contains("file name"), "{name}: {err}");
        }
    }

    /// An HTTPS server with its own CA serving one bundle with an ETag:
    /// our TLS transport, the CA file, conditional GETs.
    #[tokio::test]
    async fn bundles_come_over_https_with_a_private_ca_and_etags() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let key = key();
        let work = tempfile::tempdir().expect("tempdir");
        let public = work.path().join("policy.pub");
        std::fs::write(&public, key.public().to_pem()).expect("write");
        let bytes = build(pack().path(), &key, 1, "t".into()).expect("build");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let ca = work.path().join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).expect("write");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let conditional = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = conditional.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let answer = if head.contains("if-none-match: \"v1\"") {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n".to_vec()
                } else {
                    let mut a = format!(
                        "HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        bytes.len()
                    )
                    .into_bytes();
                    a.extend_from_slice(&bytes);
                    a
                };
                let _ = stream.write_all(&answer).await;
                let _ = stream.shutdown().await;
            }
        });
        let config = BundleConfig {
            url: format!("https://localhost:{port}/fleet.bundle"),
            public_keys: vec![public],
            poll_secs: 1,
            cache_dir: work.path().join("cache"),
            s3: S3Config {
                ca_file: Some(ca),
                ..S3Config::default()
            },
        };
        let sync = BundleSync::start(&config, &RegoPolicyConfig::default())
            .await
            .expect("start");
        let status = sync.status();
        assert_eq!(
            (status.revision, status.loaded_from.as_deref()),
            (Some(1), Some("store"))
        );
        assert!(sync.poll().await.is_none(), "unchanged: 304");
        assert_eq!(conditional.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(config.cache_dir.join(CURRENT).is_file());

        // Without the private CA the store is not trusted: the cached
        // bundle decides instead.
        let untrusting = BundleConfig {
            s3: S3Config::default(),
            ..config.clone()
        };
        let sync = BundleSync::start(&untrusting, &RegoPolicyConfig::default())
            .await
            .expect("start from cache");
        assert_eq!(sync.status().loaded_from.as_deref(), Some("cache"));
        let empty = BundleConfig {
            cache_dir: work.path().join("empty"),
            ..untrusting
        };
        let err = BundleSync::start(&empty, &RegoPolicyConfig::default())
            .await
            .err()
            .expect("no bundle at all");
        assert!(err.to_string().contains("no cached bundle"), "{err}");
    }

    #[test]
    fn dsse_pae_matches_the_spec() {
        // The example of the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
