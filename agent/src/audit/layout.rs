//! Where files live: `<dir>/date=YYYY-MM-DD/host=<host>/<first-time>-<seq>.parquet`
//! (hive-style, so query engines prune by date and host).
use std::io;
use std::path::{Path, PathBuf};

/// A Parquet file of the store, as named on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    pub path: PathBuf,
    /// First seq, from the file name.
    pub first_seq: u64,
    /// `YYYY-MM-DD` of the partition it sits in.
    pub date: String,
}

/// Civil date (y, m, d) of a day count since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const DAY_US: i64 = 86_400_000_000;

/// `YYYY-MM-DD` (UTC) of a µs timestamp.
pub fn date_of(time_us: i64) -> String {
    let (y, m, d) = civil_from_days(time_us.div_euclid(DAY_US));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, for people reading tails and timelines.
pub fn rfc3339(time_us: i64) -> String {
    let (y, m, d) = civil_from_days(time_us.div_euclid(DAY_US));
    let in_day = time_us.rem_euclid(DAY_US);
    let secs = in_day / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        in_day % 1_000_000
    )
}

/// Host names go into a directory name: keep them to a safe alphabet.
pub fn safe_host(host: &str) -> String {
    let s: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

/// The path of the file whose first event has `first_time_us` and `first_seq`.
pub fn file_path(dir: &Path, host: &str, first_time_us: i64, first_seq: u64) -> PathBuf {
    dir.join(relative_path(host, first_time_us, first_seq))
}

/// [`file_path`] relative to the store's root, `/`-separated: also the
/// object key under a remote store's prefix.
pub fn relative_path(host: &str, first_time_us: i64, first_seq: u64) -> String {
    let stamp: String = rfc3339(first_time_us)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!(
        "date={}/host={}/{stamp}-{first_seq:020}.parquet",
        date_of(first_time_us),
        safe_host(host)
    )
}

/// First seq in a chain file's name (`…-<seq>.parquet`), if it is one.
pub fn seq_of_name(name: &str) -> Option<u64> {
    name.rsplit('/')
        .next()?
        .strip_suffix(".parquet")?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

/// Now, µs since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Every sealed file under `date=*/host=*/` (any name not starting with
/// `.`: writers rename finished files into place), in partitions from
/// `since` (`YYYY-MM-DD`) on when given.
pub fn list_sealed(dir: &Path, since: Option<&str>) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (date, path) in partition_entries(dir)? {
        let sealed = since.is_none_or(|s| date.as_str() >= s) && !name_of(&path).starts_with('.') && path.is_file();
        if sealed {
            out.push(path);
        }
    }
    Ok(out)
}

/// Every Parquet file of the store, in chain order (by first seq from the
/// name; `verify` checks that the names match the contents).
pub fn list_files(dir: &Path) -> io::Result<Vec<DataFile>> {
    let mut out = Vec::new();
    for (date, path) in partition_entries(dir)? {
        let name = name_of(&path);
        if name.starts_with('.') {
            continue;
        }
        if let Some(first_seq) = seq_of_name(name) {
            out.push(DataFile { path, first_seq, date });
        }
    }
    out.sort_by(|a, b| (a.first_seq, &a.path).cmp(&(b.first_seq, &b.path)));
    Ok(out)
}

/// Every sealed session recording (`recording-*.cast`) in the partition
/// directory `dir` (a `date=*/host=*/` directory).
pub fn recordings_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = name_of(p);
            name.starts_with("recording-") && name.ends_with(".cast")
        })
        .collect();
    out.sort();
    out
}

/// Seals recordings a crash left unsealed (`.recording-X.cast.tmp`) as
/// `recording-X.unfinished.cast`: what the client was shown is kept (and
/// shipped), under a name that says no result names it.
pub fn seal_unfinished_recordings(dir: &Path) -> io::Result<usize> {
    let mut sealed = 0;
    for (_, path) in partition_entries(dir)? {
        let name = name_of(&path);
        let Some(base) = name
            .strip_prefix(".recording-")
            .and_then(|n| n.strip_suffix(".cast.tmp"))
        else {
            continue;
        };
        std::fs::rename(&path, path.with_file_name(format!("recording-{base}.unfinished.cast")))?;
        sealed += 1;
    }
    Ok(sealed)
}

/// Removes `.<name>.parquet.tmp` files a crash left behind mid-conversion
/// (their segments are still in the WAL and get converted again).
pub fn remove_temp_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for (_, path) in partition_entries(dir)? {
        let name = name_of(&path);
        if name.starts_with('.') && name.ends_with(".parquet.tmp") {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Every entry of every `date=*/host=*/` directory, with its date, sorted.
fn partition_entries(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for date_dir in read_dir_sorted(dir)? {
        let Some(date) = dir_value(&date_dir, "date=") else {
            continue;
        };
        for host_dir in read_dir_sorted(&date_dir)? {
            if dir_value(&host_dir, "host=").is_none() {
                continue;
            }
            for path in read_dir_sorted(&host_dir)? {
                out.push((date.clone(), path));
            }
        }
    }
    Ok(out)
}

fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

fn dir_value(path: &Path, prefix: &str) -> Option<String> {
    if !path.is_dir() {
        return None;
    }
    path.file_name()?.to_str()?.strip_prefix(prefix).map(str::to_owned)
}

fn read_dir_sorted(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        out.push(entry?.path());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(-1), "1969-12-31");
        // 2024-02-29 12:00:00 UTC
        assert_eq!(date_of(1_709_208_000_000_000), "2024-02-29");
        assert_eq!(rfc3339(1_709_208_000_123_456), "2024-02-29T12:00:00.123456Z");
    }

    #[test]
    fn file_paths_are_hive_partitioned_and_listed_in_seq_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = file_path(dir.path(), "db/1", 1_709_208_000_000_000, 10);
        let b = file_path(dir.path(), "db/1", 1_709_208_000_000_000 - DAY_US, 2);
        assert!(a.ends_with("date=2024-02-29/host=db_1/20240229T120000.000000Z-00000000000000000010.parquet"));
        for p in [&a, &b] {
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, b"x").expect("write");
        }
        let tmp = a.with_file_name(".x-00000000000000000011.parquet.tmp");
        std::fs::write(&tmp, b"half").expect("write");
        let files = list_files(dir.path()).expect("list");
        assert_eq!(files.iter().map(|f| f.first_seq).collect::<Vec<_>>(), vec![2, 10]);
        assert_eq!(files[0].date, "2024-02-28");
        assert_eq!(remove_temp_files(dir.path()).expect("clean"), 1);
        assert!(!tmp.exists() && a.exists() && b.exists());
    }

    #[test]
    fn recordings_a_crash_left_unsealed_are_sealed_as_unfinished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let part = dir.path().join("date=2026-01-02/host=h");
        std::fs::create_dir_all(&part).expect("mkdir");
        std::fs::write(part.join(".recording-s-3.cast.tmp"), "{}\n").expect("write");
        std::fs::write(part.join("recording-s-2.cast"), "{}\n").expect("write");
        assert_eq!(seal_unfinished_recordings(dir.path()).expect("seal"), 1);
        let names: Vec<_> = recordings_in(&part)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["recording-s-2.cast", "recording-s-3.unfinished.cast"]);
    }
}
