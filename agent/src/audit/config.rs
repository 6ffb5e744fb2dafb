//! The `[audit]` table of the agent's TOML config.
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
    /// ...or when it is this old and not empty.
    pub segment_max_age_secs: u64,
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
            retention_check_secs: 3600,
            row_group_rows: 65_536,
            queue_capacity: 8192,
            retry_interval_ms: 500,
            max_pending_segments: 64,
        }
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
}
