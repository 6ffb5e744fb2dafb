//! Canonical encoding of a row and the SHA-256 hash chain over it.
//!
//! The encoding is the WAL record payload too, so an event is encoded once
//! on the write path, straight from the event ([`encode_event`]). Anyone can re-derive it from the Parquet columns (see
//! README.md), which is what makes the chain checkable without loopgate.
use super::event::Event;
use super::row::{COLUMNS, Cell, ColumnType, ColumnVisitor, HASH, PREV_HASH, Row, SEQ, walk};
use sha2::{Digest, Sha256};

/// `prev_hash` of the very first event of a store.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// First byte of every encoding; bumps with the schema.
const ENCODING_VERSION: u8 = 1;

/// Appends the canonical encoding of `row` (every column but `hash`) to `out`.
pub fn encode(row: &[Cell], out: &mut Vec<u8>) {
    out.push(ENCODING_VERSION);
    for cell in row.iter().take(HASH) {
        match cell {
            Cell::Str(None) | Cell::Int(None) => out.push(0),
            Cell::Str(Some(v)) => {
                out.push(1);
                put_bytes(out, v.as_bytes());
            }
            Cell::Int(Some(v)) => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Cell::Time(v) => out.extend_from_slice(&v.to_le_bytes()),
            Cell::List(items) => {
                put_len(out, items.len());
                for item in items {
                    put_bytes(out, item.as_bytes());
                }
            }
        }
    }
}

/// Appends the canonical encoding of `event` chained at `seq` after
/// `prev_hash`: the bytes [`encode`] gives for its row with those two set,
/// without building the row (the append path).
pub fn encode_event(event: &Event, seq: u64, prev_hash: &str, out: &mut Vec<u8>) {
    out.push(ENCODING_VERSION);
    walk(
        event,
        &mut Encoder {
            out,
            column: 0,
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            prev_hash,
        },
    );
}

/// Writes what [`walk`] visits, as [`encode`] writes cells.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    column: usize,
    seq: i64,
    prev_hash: &'a str,
}

impl ColumnVisitor for Encoder<'_> {
    fn str(&mut self, v: Option<&str>) {
        let v = if self.column == PREV_HASH {
            Some(self.prev_hash)
        } else {
            v
        };
        if self.column < HASH {
            match v {
                None => self.out.push(0),
                Some(v) => {
                    self.out.push(1);
                    put_bytes(self.out, v.as_bytes());
                }
            }
        }
        self.column += 1;
    }

    fn int(&mut self, v: Option<i64>) {
        let v = if self.column == SEQ { Some(self.seq) } else { v };
        match v {
            None => self.out.push(0),
            Some(v) => {
                self.out.push(1);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.column += 1;
    }

    fn time(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
        self.column += 1;
    }

    fn list(&mut self, items: &[String]) {
        put_len(self.out, items.len());
        for item in items {
            put_bytes(self.out, item.as_bytes());
        }
        self.column += 1;
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Lower-case hex SHA-256 of an encoding.
pub fn hash_hex(encoding: &[u8]) -> String {
    hex(&Sha256::digest(encoding))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The hash `row` should carry, recomputed from its other columns.
pub fn row_hash(row: &[Cell]) -> String {
    let mut buf = Vec::with_capacity(512);
    encode(row, &mut buf);
    hash_hex(&buf)
}

#[derive(Debug, thiserror::Error)]
#[error("malformed record at byte {at}: {problem}")]
pub struct DecodeError {
    pub at: usize,
    pub problem: &'static str,
}

/// A decoded value borrowing from the encoding (no allocation per field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellRef<'a> {
    Str(Option<&'a str>),
    Int(Option<i64>),
    Time(i64),
    /// `count` items, each a u32 LE length and UTF-8 bytes (already checked).
    List {
        count: u32,
        raw: &'a [u8],
    },
}

impl<'a> CellRef<'a> {
    /// The items of a list cell; empty for other cells.
    pub fn items(self) -> impl Iterator<Item = &'a str> {
        let (count, raw) = match self {
            CellRef::List { count, raw } => (count, raw),
            _ => (0, &[][..]),
        };
        let mut r = Reader { bytes: raw, at: 0 };
        (0..count).map_while(move |_| r.str().ok())
    }

    fn to_cell(self) -> Cell {
        match self {
            CellRef::Str(v) => Cell::Str(v.map(str::to_owned)),
            CellRef::Int(v) => Cell::Int(v),
            CellRef::Time(v) => Cell::Time(v),
            list @ CellRef::List { .. } => Cell::List(list.items().map(str::to_owned).collect()),
        }
    }
}

/// Decodes an encoding into `out` (cleared first): every column but `hash`.
pub fn decode_ref<'a>(bytes: &'a [u8], out: &mut Vec<CellRef<'a>>) -> Result<(), DecodeError> {
    out.clear();
    let mut r = Reader { bytes, at: 0 };
    if r.u8()? != ENCODING_VERSION {
        return Err(r.err("unknown encoding version"));
    }
    for column in &COLUMNS[..HASH] {
        let cell = match column.ty {
            ColumnType::Str | ColumnType::OptStr => match r.u8()? {
                0 => CellRef::Str(None),
                1 => CellRef::Str(Some(r.str()?)),
                _ => return Err(r.err("bad null tag")),
            },
            ColumnType::Int | ColumnType::OptInt => match r.u8()? {
                0 => CellRef::Int(None),
                1 => CellRef::Int(Some(r.i64()?)),
                _ => return Err(r.err("bad null tag")),
            },
            ColumnType::Time => CellRef::Time(r.i64()?),
            ColumnType::List => {
                let count = r.u32()?;
                let start = r.at;
                for _ in 0..count {
                    r.str()?;
                }
                CellRef::List {
                    count,
                    raw: &bytes[start..r.at],
                }
            }
        };
        out.push(cell);
    }
    if r.at != bytes.len() {
        return Err(r.err("trailing bytes"));
    }
    Ok(())
}

/// The `time` of an encoding, read without decoding (or checking) the
/// rest: the columns before it are skipped by their lengths.
pub fn time_of(bytes: &[u8]) -> Result<i64, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    if r.u8()? != ENCODING_VERSION {
        return Err(r.err("unknown encoding version"));
    }
    for column in &COLUMNS[..HASH] {
        match column.ty {
            ColumnType::Time => return r.i64(),
            ColumnType::Str | ColumnType::OptStr => match r.u8()? {
                0 => {}
                1 => {
                    let n = r.u32()? as usize;
                    r.take(n)?;
                }
                _ => return Err(r.err("bad null tag")),
            },
            ColumnType::Int | ColumnType::OptInt => match r.u8()? {
                0 => {}
                1 => {
                    r.i64()?;
                }
                _ => return Err(r.err("bad null tag")),
            },
            ColumnType::List => {
                for _ in 0..r.u32()? {
                    let n = r.u32()? as usize;
                    r.take(n)?;
                }
            }
        }
    }
    Err(r.err("no time column"))
}

/// Decodes an encoding back into a full row, recomputing `hash`.
pub fn decode(bytes: &[u8]) -> Result<Row, DecodeError> {
    let mut cells = Vec::with_capacity(COLUMNS.len());
    decode_ref(bytes, &mut cells)?;
    let mut row: Row = cells.into_iter().map(CellRef::to_cell).collect();
    row.push(Cell::Str(Some(hash_hex(bytes))));
    Ok(row)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, problem: &'static str) -> DecodeError {
        DecodeError { at: self.at, problem }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.err("truncated"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u32()? as usize;
        let at = self.at;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|_| DecodeError {
            at,
            problem: "invalid UTF-8",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::row::{PREV_HASH, event_to_row, tests::full_event};

    #[test]
    fn decode_inverts_encode_and_recomputes_the_hash() {
        let mut row = event_to_row(&full_event());
        let mut buf = Vec::new();
        encode(&row, &mut buf);
        row[HASH] = Cell::Str(Some(hash_hex(&buf)));
        assert_eq!(decode(&buf).expect("decodes"), row);
    }

    #[test]
    fn time_of_reads_the_time_decode_ref_does() {
        use crate::audit::{event::EventKind, row::TIME};
        for event in [full_event(), Event::new(EventKind::AgentStart)] {
            let mut buf = Vec::new();
            encode_event(&event, 7, &"cd".repeat(32), &mut buf);
            let mut cells = Vec::new();
            decode_ref(&buf, &mut cells).unwrap();
            assert_eq!(cells[TIME], CellRef::Time(time_of(&buf).unwrap()));
            for cut in [0, 1, 5, 30] {
                assert!(time_of(&buf[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(time_of(&[ENCODING_VERSION, 7]).is_err(), "a bad null tag");
    }

    #[test]
    fn hash_covers_every_column_and_prev_hash() {
        let row = event_to_row(&full_event());
        let base = row_hash(&row);
        for i in 0..HASH {
            let mut changed = row.clone();
            changed[i] = match &changed[i] {
                Cell::Str(Some(v)) => Cell::Str(Some(format!("{v}x"))),
                Cell::Str(None) => Cell::Str(Some(String::new())),
                Cell::Int(Some(v)) => Cell::Int(Some(v + 1)),
                Cell::Int(None) => Cell::Int(Some(0)),
                Cell::Time(v) => Cell::Time(v + 1),
                Cell::List(v) => Cell::List(v.iter().skip(1).cloned().collect()),
            };
            assert_ne!(row_hash(&changed), base, "column {}", COLUMNS[i].name);
        }
        assert!(matches!(row[PREV_HASH], Cell::Str(Some(_))));
    }

    #[test]
    fn null_and_empty_string_hash_differently() {
        // Field boundaries are unambiguous: moving text between columns
        // changes the encoding.
        let mut a = event_to_row(&full_event());
        let mut b = a.clone();
        a[8] = Cell::Str(Some("ab".into()));
        a[9] = Cell::Str(Some(String::new()));
        b[8] = Cell::Str(Some("a".into()));
        b[9] = Cell::Str(Some("b".into()));
        assert_ne!(row_hash(&a), row_hash(&b));
    }

    #[test]
    fn an_event_encodes_as_its_row_with_seq_and_prev_hash_set() {
        use crate::audit::event::EventKind;
        let prev = "ab".repeat(32);
        for event in [full_event(), Event::new(EventKind::AgentStart)] {
            let mut row = event_to_row(&event);
            row[SEQ] = Cell::Int(Some(42));
            row[PREV_HASH] = Cell::Str(Some(prev.clone()));
            let (mut from_row, mut from_event) = (Vec::new(), Vec::new());
            encode(&row, &mut from_row);
            encode_event(&event, 42, &prev, &mut from_event);
            assert_eq!(from_event, from_row);
        }
    }

    #[test]
    fn truncated_encodings_are_rejected() {
        let mut buf = Vec::new();
        encode(&event_to_row(&full_event()), &mut buf);
        for cut in [0, 1, buf.len() / 2, buf.len() - 1] {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }
}
