//! The `[audit]` table of the agent's TOML config, with `[audit.remote]`.
use crate::objstore::{S3Config, S3Url};
use serde::Deserialize;
use std::path::PathBuf;

/// Where the store lives unless the config says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/loopgate/audit";

/// When appended records are fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// Group fsync every `fsync_interval_ms`; `append` returns once the
    /// record is written to the WAL file (survives a crash of the agent; a
    /// power loss can cost the last interval).
    Interval,
    /// `append` returns only after the record's fsync (grouped with
    /// whatever else is pending).
    Always,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Root of the store: `wal/` and the `date=.../host=...` partitions.
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    pub fsync_interval_ms: u64,
    /// Day partitions older than this are deleted (HIPAA: 6 years).
    pub retention_days: u32,
    /// A WAL segment is closed and converted to Parquet at this size...
    pub segment_max_bytes: u64,
    /// ...or when it is this old and not empty...
    pub segment_max_age_secs: u64,
    /// ...or when it holds this many events (0: no limit). A closed
    /// segment becomes a file, which is shipped with a checkpoint.
    pub segment_max_events: u64,
    /// How often retention runs (the first run is at most a minute after
    /// start).
    pub retention_check_secs: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Appends waiting for the writer; when full, `append` waits.
    pub queue_capacity: usize,
    /// While failing, how often the store retries its disk.
    pub retry_interval_ms: u64,
    /// Most closed segments waiting for conversion before appends are
    /// refused; bounds disk use when Parquet writes keep failing.
    pub max_pending_segments: usize,
    /// Ship sealed files to object storage, with signed checkpoints.
    pub remote: Option<RemoteConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            dir: PathBuf::from(DEFAULT_DIR),
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 10,
            retention_days: 2190,
            segment_max_bytes: 16 << 20,
            segment_max_age_secs: 300,
            segment_max_events: 0,
            retention_check_secs: 3600,
            row_group_rows: 65_536,
            queue_capacity: 8192,
            retry_interval_ms: 500,
            max_pending_segments: 64,
            remote: None,
        }
    }
}

impl AuditConfig {
    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match &self.remote {
            Some(r) => r.validate(self.retention_days).map_err(|e| format!("remote: {e}")),
            None => Ok(()),
        }
    }

    /// How long files stay on this host: with a remote store, until they
    /// are shipped and `local_retention_days` old.
    pub fn local_retention_days(&self) -> u32 {
        self.remote
            .as_ref()
            .and_then(|r| r.local_retention_days)
            .unwrap_or(self.retention_days)
    }
}

/// Object Lock retention mode set on every uploaded object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectLockMode {
    /// Nobody, not even the account root, can delete or overwrite the
    /// object before its retention date.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can.
    Governance,
}

impl ObjectLockMode {
    pub fn header_value(self) -> &'static str {
        match self {
            ObjectLockMode::Compliance => "COMPLIANCE",
            ObjectLockMode::Governance => "GOVERNANCE",
        }
    }
}

/// `[audit.remote]`: the fleet's evidence store.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// `s3://bucket/prefix`; files keep their `date=…/host=…/` path under it.
    pub url: String,
    pub s3: S3Config,
    /// The host's Ed25519 key for checkpoints (PKCS#8 PEM, mode 0600), or a
    /// systemd credential holding it. Without one no checkpoints are made.
    pub signing_key_file: Option<PathBuf>,
    pub signing_key_credential: Option<String>,
    /// A checkpoint follows every upload that moved the shipped head, and
    /// is re-signed at least this often while nothing moves (liveness).
    pub checkpoint_interval_secs: u64,
    /// Shipped files are deleted locally when this old (default:
    /// `retention_days`); files not yet shipped never are.
    pub local_retention_days: Option<u32>,
    /// Past this many bytes of sealed files waiting for upload, new events
    /// are refused (fail closed) until the store catches up; 0: no limit.
    pub max_backlog_bytes: u64,
    /// Object Lock retention on every object (the bucket needs Object Lock
    /// enabled); none when absent.
    pub object_lock: Option<ObjectLockMode>,
    pub object_lock_days: u32,
    /// How often the directory is rescanned for sealed files the shipper
    /// was not told about (recordings, files of an earlier run).
    pub scan_interval_secs: u64,
    /// Longest wait between upload attempts while the store fails.
    pub retry_max_secs: u64,
    /// At shutdown, how long to keep trying to upload what is left (the
    /// rest goes at the next start).
    pub shutdown_upload_secs: u64,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            url: String::new(),
            s3: S3Config::default(),
            signing_key_file: None,
            signing_key_credential: None,
            checkpoint_interval_secs: 300,
            local_retention_days: None,
            max_backlog_bytes: 2 << 30,
            object_lock: None,
            object_lock_days: 2190,
            scan_interval_secs: 60,
            retry_max_secs: 60,
            shutdown_upload_secs: 10,
        }
    }
}

impl RemoteConfig {
    pub fn validate(&self, retention_days: u32) -> Result<(), String> {
        self.s3_url()?;
        self.s3.validate().map_err(|e| format!("s3: {e}"))?;
        if self.signing_key_file.is_some() && self.signing_key_credential.is_some() {
            return Err("set one of signing_key_file and signing_key_credential".into());
        }
        if self.local_retention_days.is_some_and(|d| d > retention_days) {
            return Err(format!(
                "local_retention_days is longer than retention_days ({retention_days})"
            ));
        }
        if self.object_lock.is_some() && self.object_lock_days == 0 {
            return Err("object_lock_days must be at least 1".into());
        }
        if self.checkpoint_interval_secs == 0 || self.scan_interval_secs == 0 || self.retry_max_secs == 0 {
            return Err("checkpoint_interval_secs, scan_interval_secs and retry_max_secs must be at least 1".into());
        }
        Ok(())
    }

    pub fn s3_url(&self) -> Result<S3Url, String> {
        if self.url.is_empty() {
            return Err("url is required (s3://bucket/prefix)".into());
        }
        S3Url::parse(&self.url)
    }

    /// Whether checkpoints are signed.
    pub fn signs(&self) -> bool {
        self.signing_key_file.is_some() || self.signing_key_credential.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_gives_the_defaults() {
        let c: AuditConfig = toml::from_str("").expect("parses");
        assert_eq!(c, AuditConfig::default());
        assert_eq!(c.dir, PathBuf::from("/var/lib/loopgate/audit"));
        assert_eq!(c.fsync_interval_ms, 10);
        assert_eq!(c.retention_days, 2190);
    }

    #[test]
    fn fields_parse_and_typos_are_rejected() {
        let c: AuditConfig =
            toml::from_str("dir = \"/tmp/a\"\nfsync = \"always\"\nretention_days = 30").expect("parses");
        assert_eq!(c.fsync, FsyncMode::Always);
        assert_eq!(c.retention_days, 30);
        assert!(toml::from_str::<AuditConfig>("fsync_intervall_ms = 5").is_err());
        assert!(toml::from_str::<AuditConfig>("fsync = \"never\"").is_err());
    }

    #[test]
    fn the_remote_table_parses_and_is_checked() {
        let c: AuditConfig = toml::from_str(
            "retention_days = 30\n[remote]\nurl = \"s3://audit/fleet\"\nlocal_retention_days = 7\n\
             object_lock = \"compliance\"\n[remote.s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n",
        )
        .expect("parses");
        c.validate().expect("valid");
        let r = c.remote.as_ref().expect("remote");
        assert_eq!(r.object_lock, Some(ObjectLockMode::Compliance));
        assert_eq!(c.local_retention_days(), 7);
        assert_eq!(r.s3_url().expect("url").prefix, "fleet");

        let too_long: AuditConfig =
            toml::from_str("retention_days = 5\n[remote]\nurl = \"s3://audit/x\"\nlocal_retention_days = 7\n")
                .expect("parses");
        assert!(too_long.validate().unwrap_err().contains("local_retention_days"));
        let no_url: AuditConfig = toml::from_str("[remote]\n").expect("parses");
        assert!(no_url.validate().unwrap_err().contains("url is required"));
        assert!(toml::from_str::<AuditConfig>("[remote]\nurll = \"x\"").is_err());
        assert!(toml::from_str::<AuditConfig>("[remote]\nobject_lock = \"forever\"").is_err());
    }
}
