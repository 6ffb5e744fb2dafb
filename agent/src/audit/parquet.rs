//! Parquet files of the store: Arrow schema v1, ZSTD, chain metadata, and
//! an atomic write (temp file, fsync, rename, fsync dir) so a reader or a
//! crash never sees half a file.
use super::chain::{self, CellRef};
use super::row::{COLUMNS, Cell, ColumnType, HASH, PREV_HASH, Row, SEQ, int_at, str_at};
use super::wal::sync_dir;
use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use parquet::schema::types::ColumnPath;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Columns whose values never repeat: written without a dictionary.
const UNIQUE_COLUMNS: &[&str] = &["event_id", "seq", "time", "command_id", "prev_hash", "hash"];

pub const META_SCHEMA_VERSION: &str = "loopgate.schema_version";
pub const META_FIRST_SEQ: &str = "loopgate.first_seq";
pub const META_LAST_SEQ: &str = "loopgate.last_seq";
pub const META_FIRST_HASH: &str = "loopgate.first_hash";
pub const META_LAST_HASH: &str = "loopgate.last_hash";
pub const META_PREV_FILE_LAST_HASH: &str = "loopgate.prev_file_last_hash";
pub const META_ROWS: &str = "loopgate.rows";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow_schema::ArrowError,
    },
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
}

/// The chain facts a file carries in its key-value metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainMeta {
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_hash: String,
    pub last_hash: String,
    pub prev_file_last_hash: String,
    pub rows: u64,
}

impl ChainMeta {
    /// The facts of a non-empty run of chained rows.
    pub fn of(rows: &[Row]) -> Option<Self> {
        let (first, last) = (rows.first()?, rows.last()?);
        Some(ChainMeta {
            first_seq: int_at(first, SEQ)?,
            last_seq: int_at(last, SEQ)?,
            first_hash: str_at(first, HASH)?.to_owned(),
            last_hash: str_at(last, HASH)?.to_owned(),
            prev_file_last_hash: str_at(first, PREV_HASH)?.to_owned(),
            rows: rows.len() as u64,
        })
    }

    fn key_values(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new(META_SCHEMA_VERSION.into(), super::SCHEMA_VERSION.to_string()),
            KeyValue::new(META_FIRST_SEQ.into(), self.first_seq.to_string()),
            KeyValue::new(META_LAST_SEQ.into(), self.last_seq.to_string()),
            KeyValue::new(META_FIRST_HASH.into(), self.first_hash.clone()),
            KeyValue::new(META_LAST_HASH.into(), self.last_hash.clone()),
            KeyValue::new(META_PREV_FILE_LAST_HASH.into(), self.prev_file_last_hash.clone()),
            KeyValue::new(META_ROWS.into(), self.rows.to_string()),
        ]
    }

    fn from_key_values(kv: &HashMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| kv.get(k).cloned().ok_or_else(|| format!("metadata {k} missing"));
        let num = |k: &str| {
            get(k)?
                .parse::<u64>()
                .map_err(|_| format!("metadata {k} is not a number"))
        };
        Ok(ChainMeta {
            first_seq: num(META_FIRST_SEQ)?,
            last_seq: num(META_LAST_SEQ)?,
            first_hash: get(META_FIRST_HASH)?,
            last_hash: get(META_LAST_HASH)?,
            prev_file_last_hash: get(META_PREV_FILE_LAST_HASH)?,
            rows: num(META_ROWS)?,
        })
    }
}

/// Arrow schema v1 (see README.md for what each column means).
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields: Vec<Field> = COLUMNS
                .iter()
                .map(|c| match c.ty {
                    ColumnType::Str => Field::new(c.name, DataType::Utf8, false),
                    ColumnType::OptStr => Field::new(c.name, DataType::Utf8, true),
                    ColumnType::Int => Field::new(c.name, DataType::Int64, false),
                    ColumnType::OptInt => Field::new(c.name, DataType::Int64, true),
                    ColumnType::Time => Field::new(
                        c.name,
                        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                        false,
                    ),
                    ColumnType::List => Field::new(
                        c.name,
                        DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                        false,
                    ),
                })
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// Column-major Arrow batch of `rows`.
#[cfg(test)]
fn rows_to_batch(rows: &[Row]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());
    for (i, column) in COLUMNS.iter().enumerate() {
        let cells = rows.iter().map(|r| r.get(i));
        let array: ArrayRef = match column.ty {
            ColumnType::Str | ColumnType::OptStr => {
                let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
                for cell in cells {
                    match cell {
                        Some(Cell::Str(Some(v))) => b.append_value(v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Int | ColumnType::OptInt => {
                let mut b = Int64Builder::with_capacity(rows.len());
                for cell in cells {
                    match cell {
                        Some(Cell::Int(v)) => b.append_option(*v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Time => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
                for cell in cells {
                    match cell {
                        Some(Cell::Time(v)) => b.append_value(*v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::List => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for cell in cells {
                    if let Some(Cell::List(items)) = cell {
                        for item in items {
                            b.values().append_value(item);
                        }
                    }
                    b.append(true);
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    RecordBatch::try_new(schema(), arrays)
}

/// Builds Arrow arrays straight from canonical encodings, without an
/// owned row per event: the converter's hot path.
pub struct BatchBuilder {
    columns: Vec<ColumnBuilder>,
    rows: usize,
}

enum ColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Time(TimestampMicrosecondBuilder),
    List(ListBuilder<StringBuilder>),
}

impl BatchBuilder {
    pub fn new() -> Self {
        let columns = COLUMNS
            .iter()
            .map(|c| match c.ty {
                ColumnType::Str | ColumnType::OptStr => ColumnBuilder::Str(StringBuilder::new()),
                ColumnType::Int | ColumnType::OptInt => ColumnBuilder::Int(Int64Builder::new()),
                ColumnType::Time => ColumnBuilder::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
                ColumnType::List => ColumnBuilder::List(ListBuilder::new(StringBuilder::new())),
            })
            .collect();
        BatchBuilder { columns, rows: 0 }
    }

    /// Appends one event: `cells` are every column but `hash`.
    pub fn push(&mut self, cells: &[CellRef<'_>], hash: &str) {
        let hash_cell = CellRef::Str(Some(hash));
        let values = cells.iter().copied().chain(std::iter::once(hash_cell));
        for (builder, cell) in self.columns.iter_mut().zip(values) {
            match (builder, cell) {
                (ColumnBuilder::Str(b), CellRef::Str(v)) => b.append_option(v),
                (ColumnBuilder::Int(b), CellRef::Int(v)) => b.append_option(v),
                (ColumnBuilder::Time(b), CellRef::Time(v)) => b.append_value(v),
                (ColumnBuilder::List(b), list @ CellRef::List { .. }) => {
                    for item in list.items() {
                        b.values().append_value(item);
                    }
                    b.append(true);
                }
                // decode_ref yields cells in schema order, so types match.
                (ColumnBuilder::Str(b), _) => b.append_null(),
                (ColumnBuilder::Int(b), _) => b.append_null(),
                (ColumnBuilder::Time(b), _) => b.append_value(0),
                (ColumnBuilder::List(b), _) => b.append(true),
            }
        }
        self.rows += 1;
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows pushed so far as a batch; the builder starts empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        self.rows = 0;
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    ColumnBuilder::Str(b) => Arc::new(b.finish()),
                    ColumnBuilder::Int(b) => Arc::new(b.finish()),
                    ColumnBuilder::Time(b) => Arc::new(b.finish()),
                    ColumnBuilder::List(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        RecordBatch::try_new(schema(), arrays)
    }
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `rows` as they are (stored hashes included) to `path`
/// atomically: tests use it to tamper like an attacker would. The store
/// writes from WAL records with [`write_encoded_file`].
#[cfg(test)]
pub fn write_file(path: &Path, rows: &[Row], row_group_rows: usize) -> Result<(), FileError> {
    let meta = ChainMeta::of(rows).ok_or_else(|| FileError::Format {
        path: path.to_owned(),
        problem: "no rows to write".into(),
    })?;
    write_atomic(path, &meta, row_group_rows, |writer| {
        for chunk in rows.chunks(row_group_rows.max(1)) {
            let batch = rows_to_batch(chunk).map_err(|source| FileError::Arrow {
                path: path.to_owned(),
                source,
            })?;
            writer.write(&batch).map_err(|source| FileError::Parquet {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(())
    })
}

/// Writes WAL record payloads (canonical encodings, chained in this order,
/// as a segment holds them) to `path` atomically; `meta` describes them.
pub fn write_encoded_file(
    path: &Path,
    payloads: &[impl AsRef<[u8]>],
    meta: &ChainMeta,
    row_group_rows: usize,
) -> Result<(), FileError> {
    let group = row_group_rows.max(1);
    write_atomic(path, meta, group, |writer| {
        let mut builder = BatchBuilder::new();
        // A record waits for the next one, whose `prev_hash` is its hash:
        // one SHA-256 per file instead of one per record. (A WAL changed
        // after the fact carries its mismatch into the file, where
        // `verify`, which recomputes every hash, finds it.)
        let mut waiting: Vec<CellRef<'_>> = Vec::with_capacity(COLUMNS.len());
        let mut cells = Vec::with_capacity(COLUMNS.len());
        let mut waiting_payload: Option<&[u8]> = None;
        let arrow = |source| FileError::Arrow {
            path: path.to_owned(),
            source,
        };
        let pq = |source| FileError::Parquet {
            path: path.to_owned(),
            source,
        };
        for payload in payloads {
            let payload = payload.as_ref();
            chain::decode_ref(payload, &mut cells).map_err(|e| FileError::Format {
                path: path.to_owned(),
                problem: e.to_string(),
            })?;
            if let Some(previous) = waiting_payload {
                match cells.get(PREV_HASH) {
                    Some(CellRef::Str(Some(hash))) => builder.push(&waiting, hash),
                    _ => builder.push(&waiting, &chain::hash_hex(previous)),
                }
                if builder.len() >= group {
                    writer.write(&builder.finish().map_err(arrow)?).map_err(pq)?;
                }
            }
            std::mem::swap(&mut waiting, &mut cells);
            waiting_payload = Some(payload);
        }
        if let Some(last) = waiting_payload {
            builder.push(&waiting, &chain::hash_hex(last));
        }
        if !builder.is_empty() {
            writer.write(&builder.finish().map_err(arrow)?).map_err(pq)?;
        }
        Ok(())
    })
}

/// Temp file, `fill`, fsync, rename, fsync dir; the temp file is removed
/// on failure.
fn write_atomic(
    path: &Path,
    meta: &ChainMeta,
    row_group_rows: usize,
    fill: impl FnOnce(&mut ArrowWriter<File>) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let pq = |source| FileError::Parquet {
        path: path.to_owned(),
        source,
    };
    let parent = path.parent().ok_or_else(|| FileError::Format {
        path: path.to_owned(),
        problem: "no parent directory".into(),
    })?;
    create_dirs_durably(parent).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("part.parquet");
    let tmp = parent.join(format!(".{name}.tmp"));
    let result = (|| {
        let file = File::create(&tmp).map_err(io)?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(pq)?))
            .set_max_row_group_row_count(Some(row_group_rows.max(1)))
            .set_key_value_metadata(Some(meta.key_values()));
        // A dictionary of values that never repeat only costs hashing.
        for column in UNIQUE_COLUMNS {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*column), false);
        }
        let props = props.build();
        let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).map_err(pq)?;
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(pq)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        sync_dir(parent).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` and any missing ancestors, fsyncing each new entry's parent.
fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_durably(parent)?;
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_dir(parent)?;
    }
    Ok(())
}

/// A file's chain metadata, without reading its rows.
pub fn read_meta(path: &Path) -> Result<ChainMeta, FileError> {
    let file = File::open(path).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| FileError::Parquet {
        path: path.to_owned(),
        source,
    })?;
    meta_of(path, &builder)
}

fn meta_of<R: ChunkReader>(path: &Path, builder: &ParquetRecordBatchReaderBuilder<R>) -> Result<ChainMeta, FileError> {
    let kv: HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    ChainMeta::from_key_values(&kv).map_err(|problem| FileError::Format {
        path: path.to_owned(),
        problem,
    })
}

/// A file's chain metadata and every row, in file order.
pub fn read_file(path: &Path) -> Result<(ChainMeta, Vec<Row>), FileError> {
    let file = File::open(path).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_from(file, path)
}

/// [`read_file`] of a file held in memory (downloaded from a store);
/// `shown` names it in errors.
pub fn read_bytes(bytes: bytes::Bytes, shown: &Path) -> Result<(ChainMeta, Vec<Row>), FileError> {
    read_from(bytes, shown)
}

fn read_from<R: ChunkReader + 'static>(reader: R, path: &Path) -> Result<(ChainMeta, Vec<Row>), FileError> {
    let format = |problem: String| FileError::Format {
        path: path.to_owned(),
        problem,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|source| FileError::Parquet {
        path: path.to_owned(),
        source,
    })?;
    let meta = meta_of(path, &builder)?;
    let reader = builder.build().map_err(|source| FileError::Parquet {
        path: path.to_owned(),
        source,
    })?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| FileError::Arrow {
            path: path.to_owned(),
            source,
        })?;
        batch_to_rows(&batch, &mut rows).map_err(format)?;
    }
    Ok((meta, rows))
}

fn batch_to_rows(batch: &RecordBatch, rows: &mut Vec<Row>) -> Result<(), String> {
    let start = rows.len();
    rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(COLUMNS.len())));
    for column in COLUMNS {
        let array = batch
            .column_by_name(column.name)
            .ok_or_else(|| format!("column {} missing", column.name))?;
        let wrong = || {
            format!(
                "column {} has type {}, expected schema v1",
                column.name,
                array.data_type()
            )
        };
        let out = &mut rows[start..];
        match column.ty {
            ColumnType::Str | ColumnType::OptStr => {
                let a = array.as_string_opt::<i32>().ok_or_else(wrong)?;
                for (i, row) in out.iter_mut().enumerate() {
                    row.push(Cell::Str(a.is_valid(i).then(|| a.value(i).to_owned())));
                }
            }
            ColumnType::Int | ColumnType::OptInt => {
                let a = array.as_primitive_opt::<Int64Type>().ok_or_else(wrong)?;
                for (i, row) in out.iter_mut().enumerate() {
                    row.push(Cell::Int(a.is_valid(i).then(|| a.value(i))));
                }
            }
            ColumnType::Time => {
                let a = array.as_primitive_opt::<TimestampMicrosecondType>().ok_or_else(wrong)?;
                for (i, row) in out.iter_mut().enumerate() {
                    row.push(Cell::Time(a.value(i)));
                }
            }
            ColumnType::List => {
                let a = array.as_list_opt::<i32>().ok_or_else(wrong)?;
                for (i, row) in out.iter_mut().enumerate() {
                    let items = a.value(i);
                    let items = items.as_string_opt::<i32>().ok_or_else(wrong)?;
                    row.push(Cell::List(
                        items.iter().map(|v| v.unwrap_or_default().to_owned()).collect(),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::row::{event_to_row, row_to_event, tests::full_event};

    fn chained_rows(n: usize) -> Vec<Row> {
        let mut prev = chain::GENESIS_HASH.to_owned();
        (0..n)
            .map(|i| {
                let mut e = full_event();
                e.seq = i as u64 + 1;
                e.prev_hash = prev.clone();
                let mut row = event_to_row(&e);
                let h = chain::row_hash(&row);
                row[HASH] = Cell::Str(Some(h.clone()));
                prev = h;
                row
            })
            .collect()
    }

    #[test]
    fn a_written_file_reads_back_identically_with_its_chain_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("date=2024-01-01/host=h/x-1.parquet");
        let rows = chained_rows(10);
        write_file(&path, &rows, 4).expect("write");
        let (meta, back) = read_file(&path).expect("read");
        assert_eq!(back, rows);
        assert_eq!(meta, ChainMeta::of(&rows).expect("meta"));
        assert_eq!(meta.prev_file_last_hash, chain::GENESIS_HASH);
        assert!(
            back.iter()
                .all(|r| str_at(r, HASH) == Some(chain::row_hash(r).as_str()))
        );
        assert_eq!(row_to_event(&back[3]).expect("event").seq, 4);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x-1.parquet")]);
    }

    #[test]
    fn the_converter_path_writes_what_the_row_path_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rows = chained_rows(7);
        let payloads: Vec<Vec<u8>> = rows
            .iter()
            .map(|r| {
                let mut buf = Vec::new();
                chain::encode(r, &mut buf);
                buf
            })
            .collect();
        let path = dir.path().join("date=2024-01-01/host=h/x-1.parquet");
        let meta = ChainMeta::of(&rows).expect("meta");
        write_encoded_file(&path, &payloads, &meta, 3).expect("write");
        let (back_meta, back) = read_file(&path).expect("read");
        assert_eq!(back, rows);
        assert_eq!(back_meta, meta);
    }
}
