//! COPY TO data, masked field by field in every format: text (escapes,
//! custom DELIMITER and NULL), CSV (quoting, QUOTE, ESCAPE, HEADER) and
//! binary (the same type-valid values as binary results).
//!
//! The server sends one row per CopyData, but nothing here relies on it:
//! a record split across messages is carried over to the next one, and
//! the output is re-framed as whole records.
use crate::{
    mask::MaskedValue,
    sql::{CopyFormat, CopyFormatKind},
};

use super::rows::ResultMask;

/// Signature, flags and header-extension length of binary COPY data.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A record longer than this without an end is refused (a server would
/// not send it; a stream that does is not COPY data).
const MAX_CARRY: usize = 64 * 1024 * 1024;

/// The syntax of one COPY data stream.
#[derive(Clone, Debug)]
enum Syntax {
    Text {
        delimiter: u8,
        null: Vec<u8>,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
    },
    Binary,
}

/// An ongoing COPY TO.
pub struct CopyOut {
    mask: ResultMask,
    syntax: Syntax,
    /// The header line (text/CSV HEADER) is still to come; it passes as it is.
    header: bool,
    /// Binary: the file header is still to come.
    binary_header: bool,
    /// Binary: the trailer was seen; nothing may follow.
    ended: bool,
    carry: Vec<u8>,
}

impl CopyOut {
    /// `format` from the statement; `binary` from the server's
    /// CopyOutResponse, which has the last word on the overall format.
    pub fn new(mask: ResultMask, format: Option<&CopyFormat>, binary: bool) -> Result<CopyOut, String> {
        let default = CopyFormat::default();
        let format = format.unwrap_or(&default);
        let one_byte = |c: Option<char>, default: u8, what: &str| -> Result<u8, String> {
            match c {
                None => Ok(default),
                Some(c) if c.is_ascii() => Ok(c as u8),
                Some(_) => Err(format!("a non-ASCII COPY {what} cannot be read")),
            }
        };
        let syntax = match (binary, format.kind) {
            (true, _) => Syntax::Binary,
            (false, CopyFormatKind::Binary) => return Err("the server sent text data for a binary COPY".into()),
            (false, CopyFormatKind::Text) => Syntax::Text {
                delimiter: one_byte(format.delimiter, b'\t', "delimiter")?,
                null: format.null.clone().unwrap_or_else(|| "\\N".into()).into_bytes(),
            },
            (false, CopyFormatKind::Csv) => {
                let quote = one_byte(format.quote, b'"', "quote")?;
                Syntax::Csv {
                    delimiter: one_byte(format.delimiter, b',', "delimiter")?,
                    quote,
                    escape: one_byte(format.escape, quote, "escape")?,
                    null: format.null.clone().unwrap_or_default().into_bytes(),
                }
            }
        };
        Ok(CopyOut {
            mask,
            header: format.header && !binary,
            binary_header: binary,
            ended: false,
            syntax,
            carry: Vec::new(),
        })
    }

    #[cfg(test)]
    pub fn mask(&self) -> &ResultMask {
        &self.mask
    }

    pub fn into_mask(self) -> ResultMask {
        self.mask
    }

    /// Masks one CopyData payload into `out`; returns the data rows it
    /// completed (the header is not a row).
    pub fn data(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<u64, String> {
        let mut input = std::mem::take(&mut self.carry);
        let data: &[u8] = if input.is_empty() {
            chunk
        } else {
            input.extend_from_slice(chunk);
            &input
        };
        let mut rows = 0;
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            let used = match self.syntax {
                Syntax::Binary => self.binary_record(rest, out)?,
                _ => self.text_record(rest, out),
            };
            match used {
                Some((n, row)) => {
                    at += n;
                    rows += u64::from(row);
                }
                None => break,
            }
        }
        let rest = &data[at..];
        if rest.len() > MAX_CARRY {
            return Err("a COPY record is too long".into());
        }
        self.carry = rest.to_vec();
        Ok(rows)
    }

    /// Checks that the data ended on a record boundary (CopyDone).
    pub fn done(&self) -> Result<(), String> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err("COPY data ended inside a record".into())
        }
    }

    /// One text or CSV record at the start of `data`: `(bytes used, is a
    /// data row)`, or `None` when it is not complete yet.
    fn text_record(&mut self, data: &[u8], out: &mut Vec<u8>) -> Option<(usize, bool)> {
        let end = record_end(&self.syntax, data)?;
        let line = &data[..end];
        if std::mem::take(&mut self.header) {
            out.extend_from_slice(line);
            return Some((end, false));
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let newline = &line[body.len()..];
        let fields = match &self.syntax {
            Syntax::Text { delimiter, .. } => split_text(body, *delimiter),
            Syntax::Csv {
                delimiter,
                quote,
                escape,
                ..
            } => split_csv(body, *delimiter, *quote, *escape),
            Syntax::Binary => Vec::new(),
        };
        let width = self.mask.width();
        for (col, field) in fields.iter().enumerate() {
            if col > 0 {
                out.push(self.delimiter());
            }
            let Field { raw, quoted } = field;
            if !quoted && *raw == self.null_marker() {
                out.extend_from_slice(raw);
                continue;
            }
            if col >= width || fields.len() != width {
                // Not the columns loopgate described: withheld (fail closed).
                self.mask.field(usize::MAX, raw);
                out.extend_from_slice(self.null_marker());
                continue;
            }
            let value = self.decode(raw, *quoted);
            match self.mask.field(col, &value) {
                MaskedValue::Original(_) => out.extend_from_slice(raw),
                MaskedValue::Masked(m) => self.encode_into(&m, out),
                MaskedValue::Null => out.extend_from_slice(self.null_marker()),
            }
        }
        out.extend_from_slice(newline);
        Some((end, true))
    }

    fn delimiter(&self) -> u8 {
        match &self.syntax {
            Syntax::Text { delimiter, .. } | Syntax::Csv { delimiter, .. } => *delimiter,
            Syntax::Binary => 0,
        }
    }

    fn null_marker(&self) -> &[u8] {
        match &self.syntax {
            Syntax::Text { null, .. } | Syntax::Csv { null, .. } => null,
            Syntax::Binary => b"",
        }
    }

    /// A field's value as the server meant it (escapes and quotes removed).
    fn decode(&self, raw: &[u8], quoted: bool) -> Vec<u8> {
        match &self.syntax {
            Syntax::Text { .. } => unescape_text(raw),
            Syntax::Csv { quote, escape, .. } if quoted => unquote_csv(raw, *quote, *escape),
            _ => raw.to_vec(),
        }
    }

    /// Writes a masked value in the stream's syntax.
    fn encode_into(&self, value: &[u8], out: &mut Vec<u8>) {
        match &self.syntax {
            Syntax::Text { delimiter, .. } => {
                for &b in value {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' if *delimiter == b'\t' => out.extend_from_slice(b"\\t"),
                        b if b == *delimiter => {
                            out.push(b'\\');
                            out.push(b);
                        }
                        b => out.push(b),
                    }
                }
            }
            Syntax::Csv { quote, escape, .. } => {
                out.push(*quote);
                for &b in value {
                    if b == *quote || b == *escape {
                        out.push(*escape);
                    }
                    out.push(b);
                }
                out.push(*quote);
            }
            Syntax::Binary => out.extend_from_slice(value),
        }
    }

    /// The binary file header, or one tuple (field count, then length and
    /// bytes per field), or the trailer (count -1).
    fn binary_record(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Option<(usize, bool)>, String> {
        if self.ended {
            return Err("binary COPY data after its trailer".into());
        }
        if self.binary_header {
            let fixed = BINARY_SIGNATURE.len() + 8;
            if data.len() < fixed {
                return Ok(None);
            }
            if !data.starts_with(BINARY_SIGNATURE) {
                return Err("binary COPY data without its signature".into());
            }
            let ext = i32::from_be_bytes([data[15], data[16], data[17], data[18]]);
            let ext = usize::try_from(ext).map_err(|_| "bad binary COPY header")?;
            let Some(total) = fixed.checked_add(ext).filter(|t| *t <= data.len()) else {
                return Ok(None);
            };
            out.extend_from_slice(&data[..total]);
            self.binary_header = false;
            return Ok(Some((total, false)));
        }
        let Some(head) = data.first_chunk::<2>() else {
            return Ok(None);
        };
        let count = i16::from_be_bytes(*head);
        if count == -1 {
            out.extend_from_slice(&data[..2]);
            self.ended = true;
            return Ok(Some((2, false)));
        }
        if count < 0 {
            return Err("bad binary COPY field count".into());
        }
        // Parse fully before writing, so an incomplete tuple writes nothing.
        let mut at = 2;
        let mut fields = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let Some(len) = data.get(at..at + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len < 0 {
                fields.push(None);
                continue;
            }
            let len = len as usize;
            let Some(value) = data.get(at..at + len) else {
                return Ok(None);
            };
            at += len;
            fields.push(Some(value));
        }
        out.extend_from_slice(&data[..2]);
        let width = self.mask.width();
        for (col, value) in fields.into_iter().enumerate() {
            let masked = match value {
                None => MaskedValue::Null,
                Some(_) if count as usize != width => {
                    self.mask.field(usize::MAX, b"");
                    MaskedValue::Null
                }
                Some(v) => self.mask.field(col, v),
            };
            match masked.as_bytes() {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        Ok(Some((at, true)))
    }
}

/// Where the first record of `data` ends (after its newline), or `None`
/// when it has no end yet. A CSV newline inside quotes is data.
fn record_end(syntax: &Syntax, data: &[u8]) -> Option<usize> {
    match syntax {
        Syntax::Csv { quote, escape, .. } => {
            let mut in_quotes = false;
            let mut i = 0;
            while i < data.len() {
                let b = data[i];
                if in_quotes {
                    if b == *escape && escape != quote && data.get(i + 1).is_some() {
                        i += 2;
                        continue;
                    }
                    if b == *quote {
                        if escape == quote && data.get(i + 1) == Some(quote) {
                            i += 2;
                            continue;
                        }
                        in_quotes = false;
                    }
                } else if b == *quote {
                    in_quotes = true;
                } else if b == b'\n' {
                    return Some(i + 1);
                }
                i += 1;
            }
            None
        }
        _ => data.iter().position(|&b| b == b'\n').map(|i| i + 1),
    }
}

struct Field<'a> {
    raw: &'a [u8],
    quoted: bool,
}

/// Text format: fields split at the delimiter not escaped by a backslash.
fn split_text(body: &[u8], delimiter: u8) -> Vec<Field<'_>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            i += 2;
            continue;
        }
        if body[i] == delimiter {
            fields.push(Field {
                raw: &body[start..i],
                quoted: false,
            });
            start = i + 1;
        }
        i += 1;
    }
    fields.push(Field {
        raw: &body[start.min(body.len())..],
        quoted: false,
    });
    fields
}

/// CSV: fields split at the delimiter outside quotes.
fn split_csv(body: &[u8], delimiter: u8, quote: u8, escape: u8) -> Vec<Field<'_>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut quoted = false;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if in_quotes {
            if b == escape && escape != quote && i + 1 < body.len() {
                i += 2;
                continue;
            }
            if b == quote {
                if escape == quote && body.get(i + 1) == Some(&quote) {
                    i += 2;
                    continue;
                }
                in_quotes = false;
            }
        } else if b == quote {
            in_quotes = true;
            quoted = true;
        } else if b == delimiter {
            fields.push(Field {
                raw: &body[start..i],
                quoted,
            });
            start = i + 1;
            quoted = false;
        }
        i += 1;
    }
    fields.push(Field {
        raw: &body[start..],
        quoted,
    });
    fields
}

/// Removes text-format backslash escapes (`\t`, `\n`, `\\`, octal, ...).
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 >= raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        out.push(match c {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'b' => 8,
            b'f' => 12,
            b'v' => 11,
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                (v & 0xff) as u8
            }
            other => other,
        });
    }
    out
}

/// A quoted CSV field's value: quotes removed, escapes resolved.
fn unquote_csv(raw: &[u8], quote: u8, escape: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_quotes = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        // Inside quotes, the escape character makes the next quote or
        // escape literal (a doubled quote when escape is the quote).
        if in_quotes && b == escape && raw.get(i + 1).is_some_and(|n| *n == quote || *n == escape) {
            out.push(raw[i + 1]);
            i += 2;
            continue;
        }
        if b == quote {
            in_quotes = !in_quotes;
        } else {
            out.push(b);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{MaskConfig, Masker};
    use crate::protocols::postgres::rows::Column;

    fn copy(format: CopyFormat, binary: bool, types: &[u32]) -> CopyOut {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let columns: Vec<Column> = ["id", "ssn", "dob", "note"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                table: Some("patients".into()),
            })
            .collect();
        let mask = ResultMask::for_copy(&masker, &columns, types, binary, &[], None);
        CopyOut::new(mask, Some(&format), binary).unwrap()
    }

    const TYPES: [u32; 4] = [23, 25, 1082, 25];

    fn run(c: &mut CopyOut, chunks: &[&[u8]]) -> (String, u64) {
        let mut out = Vec::new();
        let mut rows = 0;
        for chunk in chunks {
            rows += c.data(chunk, &mut out).unwrap();
        }
        c.done().unwrap();
        (String::from_utf8(out).unwrap(), rows)
    }

    #[test]
    fn text_format_masks_by_column_and_keeps_the_header() {
        let format = CopyFormat {
            header: true,
            ..CopyFormat::default()
        };
        let mut c = copy(format, false, &TYPES);
        let (out, rows) = run(
            &mut c,
            &[
                b"id\tssn\tdob\tphone\n",
                b"1\t123-45-6789\t1980-02-03\t\\N\n",
                b"2\t987-65-4321\t\\N\tcall 555-234-5678\\tnow\n",
            ],
        );
        assert_eq!(rows, 2);
        assert_eq!(
            out,
            "id\tssn\tdob\tphone\n1\t***-**-6789\t1900-01-01\t\\N\n2\t***-**-4321\t\\N\tcall ***\\tnow\n"
        );
        assert_eq!(c.mask().masked_count(), 4);
    }

    #[test]
    fn text_format_with_a_custom_delimiter_and_null() {
        let format = CopyFormat {
            delimiter: Some('|'),
            null: Some("NIL".into()),
            ..CopyFormat::default()
        };
        let mut c = copy(format, false, &TYPES);
        let (out, _) = run(&mut c, &[b"1|123-45-6789|NIL|a\\|b\n"]);
        assert_eq!(out, "1|***-**-6789|NIL|a\\|b\n");
    }

    #[test]
    fn csv_quotes_headers_and_records_split_across_messages() {
        let format = CopyFormat {
            kind: CopyFormatKind::Csv,
            header: true,
            ..CopyFormat::default()
        };
        let mut c = copy(format, false, &TYPES);
        let (out, rows) = run(
            &mut c,
            &[
                b"id,ssn,dob,note\n1,\"123-45-6789\",1980-02-03,\"multi\nline, \"\"quoted\"\"\"\n2,98",
                b"7-65-4321,,\"\"\n",
            ],
        );
        assert_eq!(rows, 2);
        assert_eq!(
            out,
            "id,ssn,dob,note\n1,\"***-**-6789\",\"1900-01-01\",\"multi\nline, \"\"quoted\"\"\"\n2,\"***-**-4321\",,\"\"\n"
        );
    }

    #[test]
    fn csv_with_custom_quote_escape_and_delimiter() {
        let format = CopyFormat {
            kind: CopyFormatKind::Csv,
            delimiter: Some(';'),
            quote: Some('\''),
            escape: Some('\\'),
            ..CopyFormat::default()
        };
        let mut c = copy(format, false, &TYPES);
        let (out, _) = run(&mut c, &[b"1;'123-45-6789';1980-02-03;'it\\'s 555-234-5678'\n"]);
        assert_eq!(out, "1;'***-**-6789';'1900-01-01';'it\\'s ***'\n");
    }

    #[test]
    fn binary_copy_is_masked_with_type_valid_values() {
        let mut c = copy(CopyFormat::default(), true, &TYPES);
        let mut data = BINARY_SIGNATURE.to_vec();
        data.extend_from_slice(&[0; 8]);
        let tuple = |out: &mut Vec<u8>| {
            out.extend_from_slice(&4i16.to_be_bytes());
            for v in [&7i32.to_be_bytes()[..], b"123-45-6789", &100i32.to_be_bytes(), b"fine"] {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        };
        tuple(&mut data);
        let mut second = Vec::new();
        tuple(&mut second);
        second.extend_from_slice(&(-1i16).to_be_bytes());
        let mut out = Vec::new();
        // Split mid-tuple: nothing of the partial tuple is written early.
        let cut = data.len() - 3;
        let mut rows = c.data(&data[..cut], &mut out).unwrap();
        let header_only = out.len();
        assert_eq!(header_only, 19);
        rows += c.data(&data[cut..], &mut out).unwrap();
        rows += c.data(&second, &mut out).unwrap();
        c.done().unwrap();
        assert_eq!(rows, 2);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("123-45-6789"), "{text}");
        assert!(text.contains("***-**-6789"));
        let days = (-36_524i32).to_be_bytes();
        assert!(out.windows(4).any(|w| w == days));
        assert!(out.ends_with(&[0xff, 0xff]));
        assert!(c.data(b"\0\x01", &mut out).is_err(), "nothing after the trailer");
    }

    #[test]
    fn rows_of_another_width_are_withheld() {
        let mut c = copy(CopyFormat::default(), false, &TYPES);
        let (out, _) = run(&mut c, &[b"1\t123-45-6789\n"]);
        assert_eq!(out, "\\N\t\\N\n");
    }
}
