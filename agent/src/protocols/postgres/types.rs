//! Masked values that are still valid values of their column's type, in
//! the text and the binary format: a driver decodes what it is sent.
//!
//! A masked `date` is a fixed sentinel date (`1900-01-01`), a number is 0,
//! a `bytea` holds the redaction token, an array is an array of masked
//! elements (binary header rebuilt), a record a record of masked fields,
//! JSON a JSON string. A type with no sentinel here masks to NULL, which
//! every type accepts. Text types get the masker's usual replacement.
use bytes::BufMut as _;

use crate::mask::{ColumnPlan, MaskMode, MaskedValue, ResultMasker};

pub const TEXT: u32 = 25;
const BYTEA: u32 = 17;
const JSON: u32 = 114;
const JSONB: u32 = 3802;
const RECORD: u32 = 2249;

/// Arrays and records nest; deeper than this a value is withheld (NULL).
const MAX_DEPTH: usize = 16;

/// Days from 2000-01-01 (PostgreSQL's epoch) back to 1900-01-01.
const SENTINEL_DAYS: i32 = -36_524;
const SENTINEL_MICROS: i64 = SENTINEL_DAYS as i64 * 86_400_000_000;

/// How the values of one result column arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    pub oid: u32,
    pub binary: bool,
}

impl Codec {
    pub fn text(oid: u32) -> Codec {
        Codec { oid, binary: false }
    }
}

/// What kind of value a type OID holds, as far as masking is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// UTF-8 text in both formats (text, varchar, name, xml, ...).
    Text,
    /// JSON text; jsonb's binary format is a version byte and the text.
    Json {
        jsonb: bool,
    },
    Bytea,
    Array {
        element: u32,
    },
    Record,
    /// Any other type: masked to its sentinel or NULL, never scanned.
    Scalar,
}

fn kind(oid: u32, binary: bool) -> Kind {
    match oid {
        0 | 18 | 19 | TEXT | 142 | 705 | 1042 | 1043 => Kind::Text,
        JSON => Kind::Json { jsonb: false },
        JSONB => Kind::Json { jsonb: true },
        BYTEA => Kind::Bytea,
        RECORD => Kind::Record,
        // User types (citext, enums, domains over text): text when sent as
        // text; their binary encoding is unknown here, so NULL.
        o if o >= 16384 && !binary => Kind::Text,
        o => match element_of(o) {
            Some(element) => Kind::Array { element },
            None => Kind::Scalar,
        },
    }
}

/// The element type of a built-in array type.
fn element_of(array: u32) -> Option<u32> {
    Some(match array {
        1000 => 16,
        1001 => BYTEA,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1009 => TEXT,
        1014 => 1042,
        1015 => 1043,
        1021 => 700,
        1022 => 701,
        1028 => 26,
        1231 => 1700,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        2951 => 2950,
        1041 => 869,
        651 => 650,
        199 => JSON,
        3807 => JSONB,
        143 => 142,
        2287 => RECORD,
        _ => return None,
    })
}

/// The fixed masked value of a scalar type, in the given format; `None`
/// where there is none (the value becomes NULL).
fn sentinel(oid: u32, binary: bool) -> Option<Vec<u8>> {
    let text: &str = match oid {
        16 => "f",
        20 | 21 | 23 | 26 | 700 | 701 | 1700 => "0",
        1082 => "1900-01-01",
        1114 => "1900-01-01 00:00:00",
        1184 => "1900-01-01 00:00:00+00",
        1083 | 1186 => "00:00:00",
        1266 => "00:00:00+00",
        2950 => "00000000-0000-0000-0000-000000000000",
        869 => "0.0.0.0",
        650 => "0.0.0.0/32",
        829 => "00:00:00:00:00:00",
        _ => return None,
    };
    if !binary {
        return Some(text.as_bytes().to_vec());
    }
    Some(match oid {
        16 => vec![0],
        21 => vec![0; 2],
        23 | 26 | 700 => vec![0; 4],
        20 | 701 | 1083 => vec![0; 8],
        // numeric: ndigits 0, weight 0, sign +, dscale 0.
        1700 => vec![0; 8],
        1082 => SENTINEL_DAYS.to_be_bytes().to_vec(),
        1114 | 1184 => SENTINEL_MICROS.to_be_bytes().to_vec(),
        1266 => vec![0; 12],
        1186 | 2950 => vec![0; 16],
        // family AF_INET, 32 bits, is_cidr, 4 address bytes.
        869 => vec![2, 32, 0, 4, 0, 0, 0, 0],
        650 => vec![2, 32, 1, 4, 0, 0, 0, 0],
        829 => vec![0; 6],
        _ => return None,
    })
}

/// Masks one non-NULL field of column `col`, whose values arrive as
/// `codec`, under the column's plan; counts it once when it changed.
pub fn mask_field<'v>(plan: &ResultMasker, col: usize, codec: Codec, value: &'v [u8]) -> MaskedValue<'v> {
    let masked = match plan.column_plan(col) {
        None => MaskedValue::Null,
        Some(ColumnPlan::Keep) => return MaskedValue::Original(value),
        Some(p) => mask_in(plan, col, p, codec, value, 0),
    };
    if masked.is_changed() {
        plan.note_masked();
    }
    masked
}

fn mask_in<'v>(
    plan: &ResultMasker,
    col: usize,
    column: ColumnPlan,
    codec: Codec,
    value: &'v [u8],
    depth: usize,
) -> MaskedValue<'v> {
    if depth > MAX_DEPTH {
        return MaskedValue::Null;
    }
    let mode = match column {
        ColumnPlan::Keep => return MaskedValue::Original(value),
        ColumnPlan::Mask(MaskMode::Null) => return MaskedValue::Null,
        ColumnPlan::Mask(mode) => Some(mode),
        ColumnPlan::Scan { .. } => None,
    };
    match kind(codec.oid, codec.binary) {
        Kind::Text => plan.mask_part(col, value),
        Kind::Json { jsonb } => {
            let (version, text) = match (jsonb && codec.binary, value.split_first()) {
                (true, Some((&v, rest))) => (Some(v), rest),
                (true, None) => return MaskedValue::Null,
                (false, _) => (None, value),
            };
            let masked = match mode {
                Some(_) => json_string(plan.redact_token()),
                None => match plan.mask_part(col, text) {
                    MaskedValue::Original(_) => return MaskedValue::Original(value),
                    MaskedValue::Masked(v) => v,
                    MaskedValue::Null => return MaskedValue::Null,
                },
            };
            let mut out = Vec::with_capacity(masked.len() + 1);
            out.extend(version);
            out.extend_from_slice(&masked);
            MaskedValue::Masked(out)
        }
        Kind::Bytea => match mode {
            None => MaskedValue::Original(value),
            Some(_) if codec.binary => MaskedValue::Masked(plan.redact_token().as_bytes().to_vec()),
            Some(_) => MaskedValue::Masked(bytea_hex(plan.redact_token().as_bytes())),
        },
        Kind::Scalar => match mode {
            None => MaskedValue::Original(value),
            Some(_) => sentinel(codec.oid, codec.binary).map_or(MaskedValue::Null, MaskedValue::Masked),
        },
        Kind::Array { element } => {
            let element = Codec {
                oid: element,
                binary: codec.binary,
            };
            let rebuilt = if codec.binary {
                binary_array(value, |v| mask_in(plan, col, column, element, v, depth + 1))
            } else {
                text_array(value, |v| {
                    mask_in(plan, col, column, Codec::text(element.oid), v, depth + 1)
                })
            };
            settle(rebuilt, value)
        }
        Kind::Record => {
            let rebuilt = if codec.binary {
                binary_record(value, |oid, v| {
                    let field = Codec { oid, binary: true };
                    mask_in(plan, col, column, field, v, depth + 1)
                })
            } else {
                // A record's text does not say its fields' types: each
                // field is masked as text.
                text_record(value, |v| mask_in(plan, col, column, Codec::text(TEXT), v, depth + 1))
            };
            settle(rebuilt, value)
        }
    }
}

/// A rebuilt container: unchanged when no part changed, NULL when it could
/// not be parsed (fail closed).
fn settle(rebuilt: Option<Option<Vec<u8>>>, original: &[u8]) -> MaskedValue<'_> {
    match rebuilt {
        Some(None) => MaskedValue::Original(original),
        Some(Some(v)) => MaskedValue::Masked(v),
        None => MaskedValue::Null,
    }
}

fn json_string(token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len() + 2);
    out.push(b'"');
    for c in token.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
    out
}

fn bytea_hex(bytes: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(2 + bytes.len() * 2);
    out.extend_from_slice(b"\\x");
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
    out
}

fn take_i32(body: &mut &[u8]) -> Option<i32> {
    let (head, rest) = body.split_first_chunk::<4>()?;
    *body = rest;
    Some(i32::from_be_bytes(*head))
}

/// Binary array: ndim, has-null flag, element OID, (length, lower bound)
/// per dimension, then each element as length (-1: NULL) and bytes.
/// `Some(None)`: nothing changed; `None`: malformed.
fn binary_array<'v>(value: &'v [u8], mut mask: impl FnMut(&'v [u8]) -> MaskedValue<'v>) -> Option<Option<Vec<u8>>> {
    let mut body = value;
    let ndim = take_i32(&mut body)?;
    let _has_null = take_i32(&mut body)?;
    let element_oid = take_i32(&mut body)?;
    if !(0..=6).contains(&ndim) {
        return None;
    }
    let mut count: usize = if ndim == 0 { 0 } else { 1 };
    let mut dims = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        let len = take_i32(&mut body)?;
        let lower = take_i32(&mut body)?;
        if len < 0 {
            return None;
        }
        count = count.checked_mul(len as usize)?;
        dims.push((len, lower));
    }
    if count > body.len() / 4 {
        return None;
    }
    let mut elements = Vec::with_capacity(count);
    let mut changed = false;
    for _ in 0..count {
        let len = take_i32(&mut body)?;
        if len < 0 {
            elements.push(MaskedValue::Null);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return None;
        }
        let (element, rest) = body.split_at(len);
        body = rest;
        let masked = mask(element);
        changed |= masked.is_changed();
        elements.push(masked);
    }
    if !body.is_empty() {
        return None;
    }
    if !changed {
        return Some(None);
    }
    let has_null = elements.iter().any(|e| matches!(e, MaskedValue::Null));
    let mut out = Vec::with_capacity(value.len());
    out.put_i32(ndim);
    out.put_i32(i32::from(has_null));
    out.put_i32(element_oid);
    for (len, lower) in dims {
        out.put_i32(len);
        out.put_i32(lower);
    }
    for e in &elements {
        put_field(&mut out, e.as_bytes());
    }
    Some(Some(out))
}

fn put_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            out.put_i32(v.len() as i32);
            out.put_slice(v);
        }
        None => out.put_i32(-1),
    }
}

/// Binary record: field count, then per field its type OID, length (-1:
/// NULL) and bytes.
fn binary_record<'v>(
    value: &'v [u8],
    mut mask: impl FnMut(u32, &'v [u8]) -> MaskedValue<'v>,
) -> Option<Option<Vec<u8>>> {
    let mut body = value;
    let n = take_i32(&mut body)?;
    if n < 0 || n as usize > body.len() / 8 {
        return None;
    }
    let mut fields = Vec::with_capacity(n as usize);
    let mut changed = false;
    for _ in 0..n {
        let oid = take_i32(&mut body)? as u32;
        let len = take_i32(&mut body)?;
        if len < 0 {
            fields.push((oid, MaskedValue::Null));
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return None;
        }
        let (field, rest) = body.split_at(len);
        body = rest;
        let masked = mask(oid, field);
        changed |= masked.is_changed();
        fields.push((oid, masked));
    }
    if !body.is_empty() {
        return None;
    }
    if !changed {
        return Some(None);
    }
    let mut out = Vec::with_capacity(value.len());
    out.put_i32(n);
    for (oid, f) in &fields {
        out.put_u32(*oid);
        put_field(&mut out, f.as_bytes());
    }
    Some(Some(out))
}

/// One element or field of an array or record literal.
enum Item {
    Null,
    /// Unquoted or quoted, with escapes removed.
    Value(Vec<u8>),
    /// A nested array (`{...}` inside an array).
    Nested(Vec<u8>),
}

/// Text array literal: `{a,"b c",NULL,{d}}`, optionally after a dimension
/// decoration (`[0:1]=`). Elements are re-quoted; the decoration is kept.
fn text_array(value: &[u8], mut mask: impl FnMut(&[u8]) -> MaskedValue<'_>) -> Option<Option<Vec<u8>>> {
    let start = value.iter().position(|&b| b == b'{')?;
    let (decoration, body) = value.split_at(start);
    let mut out = decoration.to_vec();
    let mut changed = false;
    let consumed = array_into(body, &mut mask, &mut out, &mut changed, 0)?;
    if !body[consumed..].iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(changed.then_some(out))
}

/// Parses one `{...}` at the start of `body` into `out`; returns the bytes consumed.
fn array_into(
    body: &[u8],
    mask: &mut impl FnMut(&[u8]) -> MaskedValue<'_>,
    out: &mut Vec<u8>,
    changed: &mut bool,
    depth: usize,
) -> Option<usize> {
    if depth > MAX_DEPTH || body.first() != Some(&b'{') {
        return None;
    }
    out.push(b'{');
    let mut i = 1;
    let mut first = true;
    loop {
        while body.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match body.get(i)? {
            b'}' if first => {
                out.push(b'}');
                return Some(i + 1);
            }
            _ => {}
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let item = if body[i] == b'{' {
            let nested_start = out.len();
            let used = array_into(&body[i..], mask, out, changed, depth + 1)?;
            i += used;
            let nested = out.split_off(nested_start);
            Item::Nested(nested)
        } else {
            let (item, used) = literal_item(&body[i..], b",}", true)?;
            i += used;
            item
        };
        match item {
            Item::Nested(n) => out.extend_from_slice(&n),
            Item::Null => out.extend_from_slice(b"NULL"),
            Item::Value(v) => match mask(&v) {
                MaskedValue::Original(o) => quoted_into(o, out),
                MaskedValue::Masked(m) => {
                    *changed = true;
                    quoted_into(&m, out);
                }
                MaskedValue::Null => {
                    *changed = true;
                    out.extend_from_slice(b"NULL");
                }
            },
        }
        while body.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match body.get(i)? {
            b',' => i += 1,
            b'}' => {
                out.push(b'}');
                return Some(i + 1);
            }
            _ => return None,
        }
    }
}

/// Reads one element (array) or field (record) up to a byte of `ends`.
/// Arrays spell NULL as an unquoted `NULL`; records as an empty field.
fn literal_item(body: &[u8], ends: &[u8], array: bool) -> Option<(Item, usize)> {
    let mut value = Vec::new();
    let mut i = 0;
    let mut quoted_any = false;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                quoted_any = true;
                i += 1;
                loop {
                    match *body.get(i)? {
                        b'\\' => {
                            value.push(*body.get(i + 1)?);
                            i += 2;
                        }
                        b'"' if !array && body.get(i + 1) == Some(&b'"') => {
                            value.push(b'"');
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            break;
                        }
                        c => {
                            value.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\\' => {
                value.push(*body.get(i + 1)?);
                i += 2;
            }
            b if ends.contains(&b) => break,
            // Space around a quoted item is not part of it.
            b if quoted_any && b.is_ascii_whitespace() => i += 1,
            b => {
                value.push(b);
                i += 1;
            }
        }
    }
    if !quoted_any {
        let trimmed = if array { value.trim_ascii() } else { &value[..] };
        if array && trimmed.eq_ignore_ascii_case(b"NULL") {
            return Some((Item::Null, i));
        }
        if !array && trimmed.is_empty() {
            return Some((Item::Null, i));
        }
        let trimmed = trimmed.to_vec();
        return Some((Item::Value(trimmed), i));
    }
    Some((Item::Value(value), i))
}

/// Writes `value` double-quoted with `"` and `\` escaped (valid in both
/// array and record literals for any element type).
fn quoted_into(value: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Text record literal: `(a,"b c",)`; an empty field is NULL.
fn text_record(value: &[u8], mut mask: impl FnMut(&[u8]) -> MaskedValue<'_>) -> Option<Option<Vec<u8>>> {
    let body = value.trim_ascii();
    let inner = body.strip_prefix(b"(")?;
    let mut out = vec![b'('];
    let mut changed = false;
    let mut i = 0;
    loop {
        let (item, used) = literal_item(&inner[i..], b",)", false)?;
        i += used;
        match item {
            Item::Null | Item::Nested(_) => {}
            Item::Value(v) => match mask(&v) {
                MaskedValue::Original(o) => quoted_into(o, &mut out),
                MaskedValue::Masked(m) => {
                    changed = true;
                    quoted_into(&m, &mut out);
                }
                MaskedValue::Null => changed = true,
            },
        }
        match inner.get(i)? {
            b',' => {
                out.push(b',');
                i += 1;
            }
            b')' if i + 1 == inner.len() => {
                out.push(b')');
                return Some(changed.then_some(out));
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{ColumnDesc, MaskAction, MaskConfig, MaskRule, Masker};

    fn plan_for(mode: MaskAction, oid: u32, binary: bool) -> ResultMasker {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let desc = ColumnDesc {
            name: "c",
            table: None,
            type_oid: oid,
            binary,
        };
        masker.plan(&[desc], &[MaskRule::new("c", mode)])
    }

    fn masked(mode: MaskAction, oid: u32, binary: bool, value: &[u8]) -> Option<Vec<u8>> {
        let plan = plan_for(mode, oid, binary);
        let codec = Codec { oid, binary };
        match mask_field(&plan, 0, codec, value) {
            MaskedValue::Original(v) => Some(v.to_vec()),
            MaskedValue::Masked(v) => Some(v),
            MaskedValue::Null => None,
        }
    }

    fn text(v: Option<Vec<u8>>) -> String {
        String::from_utf8(v.expect("not NULL")).unwrap()
    }

    #[test]
    fn dates_and_timestamps_become_the_sentinel_in_both_formats() {
        assert_eq!(
            text(masked(MaskAction::Redact, 1082, false, b"1980-02-03")),
            "1900-01-01"
        );
        let days = masked(MaskAction::Partial, 1082, true, &3000i32.to_be_bytes()).unwrap();
        assert_eq!(i32::from_be_bytes(days.try_into().unwrap()), SENTINEL_DAYS);
        let ts = masked(MaskAction::Hash, 1184, true, &5i64.to_be_bytes()).unwrap();
        assert_eq!(i64::from_be_bytes(ts.try_into().unwrap()), SENTINEL_MICROS);
        assert_eq!(
            text(masked(MaskAction::Redact, 1114, false, b"1980-02-03 10:00:00")),
            "1900-01-01 00:00:00"
        );
        assert_eq!(masked(MaskAction::Null, 1082, true, &[0; 4]), None);
    }

    #[test]
    fn numbers_uuids_and_unknown_types() {
        assert_eq!(text(masked(MaskAction::Redact, 23, false, b"12345")), "0");
        assert_eq!(masked(MaskAction::Redact, 20, true, &[1; 8]), Some(vec![0; 8]));
        assert_eq!(
            masked(MaskAction::Redact, 1700, true, &[0, 1, 0, 0, 0, 0, 0, 0, 0, 7]),
            Some(vec![0; 8])
        );
        assert_eq!(masked(MaskAction::Redact, 2950, true, &[9; 16]), Some(vec![0; 16]));
        // point: no sentinel, so NULL in either format.
        assert_eq!(masked(MaskAction::Redact, 600, false, b"(1,2)"), None);
        assert_eq!(masked(MaskAction::Redact, 600, true, &[0; 16]), None);
        // A user type: text as text, NULL as binary.
        assert_eq!(text(masked(MaskAction::Redact, 20000, false, b"x")), "***");
        assert_eq!(masked(MaskAction::Redact, 20000, true, b"x"), None);
        // Not scanned: a number is kept under a scan plan.
        assert_eq!(
            masked(MaskAction::Scan, 23, true, &[0, 0, 0, 1]),
            Some(vec![0, 0, 0, 1])
        );
    }

    #[test]
    fn bytea_is_a_valid_bytea_in_both_formats() {
        assert_eq!(text(masked(MaskAction::Redact, 17, false, b"\\x3132")), "\\x2a2a2a");
        assert_eq!(text(masked(MaskAction::Redact, 17, true, b"123-45-6789")), "***");
    }

    #[test]
    fn json_masks_to_a_json_string() {
        assert_eq!(text(masked(MaskAction::Redact, 114, false, b"{\"a\":1}")), "\"***\"");
        let jsonb = masked(MaskAction::Redact, 3802, true, b"\x01{\"a\":1}").unwrap();
        assert_eq!(jsonb, b"\x01\"***\"");
        let scanned = text(masked(MaskAction::Scan, 114, false, br#"{"ssn":"123-45-6789"}"#));
        assert_eq!(scanned, r#"{"ssn":"***"}"#);
    }

    fn binary_text_array(items: &[Option<&str>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_i32(1);
        out.put_i32(i32::from(items.iter().any(Option::is_none)));
        out.put_i32(TEXT as i32);
        out.put_i32(items.len() as i32);
        out.put_i32(1);
        for i in items {
            put_field(&mut out, i.map(str::as_bytes));
        }
        out
    }

    fn decode_binary_array(mut v: &[u8]) -> (i32, Vec<Option<Vec<u8>>>) {
        let ndim = take_i32(&mut v).unwrap();
        let has_null = take_i32(&mut v).unwrap();
        let _oid = take_i32(&mut v).unwrap();
        let mut n = 1;
        for _ in 0..ndim {
            n *= take_i32(&mut v).unwrap();
            take_i32(&mut v).unwrap();
        }
        let items = (0..n)
            .map(|_| {
                let len = take_i32(&mut v).unwrap();
                (len >= 0).then(|| {
                    let (a, b) = v.split_at(len as usize);
                    v = b;
                    a.to_vec()
                })
            })
            .collect();
        assert!(v.is_empty(), "no trailing bytes");
        (has_null, items)
    }

    #[test]
    fn binary_arrays_keep_a_valid_header() {
        let value = binary_text_array(&[Some("123-45-6789"), None, Some("ok")]);
        let out = masked(MaskAction::Redact, 1009, true, &value).unwrap();
        let (has_null, items) = decode_binary_array(&out);
        assert_eq!(has_null, 1);
        assert_eq!(items, [Some(b"***".to_vec()), None, Some(b"***".to_vec())]);
        // Null mode: every element NULL, the flag set.
        let out = masked(MaskAction::Null, 1009, true, &value);
        assert_eq!(out, None, "a whole NULL-mode value is NULL");
        // Scan: only the element with a finding changes.
        let out = masked(MaskAction::Scan, 1009, true, &value).unwrap();
        let (_, items) = decode_binary_array(&out);
        assert_eq!(items, [Some(b"***".to_vec()), None, Some(b"ok".to_vec())]);
        // Dates inside an array become sentinels of the element type.
        let mut dates = Vec::new();
        dates.put_i32(1);
        dates.put_i32(0);
        dates.put_i32(1082);
        dates.put_i32(1);
        dates.put_i32(1);
        put_field(&mut dates, Some(&7i32.to_be_bytes()));
        let out = masked(MaskAction::Redact, 1182, true, &dates).unwrap();
        let (_, items) = decode_binary_array(&out);
        assert_eq!(items, [Some(SENTINEL_DAYS.to_be_bytes().to_vec())]);
        // Truncated: withheld.
        assert_eq!(masked(MaskAction::Redact, 1009, true, &value[..value.len() - 1]), None);
        assert_eq!(masked(MaskAction::Scan, 1009, true, &[0, 0, 0, 9]), None);
    }

    #[test]
    fn text_arrays_are_rebuilt_element_by_element() {
        let out = text(masked(
            MaskAction::Redact,
            1009,
            false,
            br#"{123-45-6789,"a, b",NULL,"q\"x"}"#,
        ));
        assert_eq!(out, r#"{"***","***",NULL,"***"}"#);
        let out = text(masked(
            MaskAction::Scan,
            1009,
            false,
            br#"{{x,"ssn 123-45-6789"},{y,z}}"#,
        ));
        assert_eq!(out, r#"{{"x","ssn ***"},{"y","z"}}"#);
        assert_eq!(
            text(masked(MaskAction::Redact, 1182, false, b"[0:0]={1980-02-03}")),
            r#"[0:0]={"1900-01-01"}"#
        );
        assert_eq!(text(masked(MaskAction::Redact, 1009, false, b"{}")), "{}");
        assert_eq!(masked(MaskAction::Redact, 1009, false, b"{\"open"), None);
        let untouched = masked(MaskAction::Scan, 1009, false, b"{a,b}").unwrap();
        assert_eq!(untouched, b"{a,b}");
    }

    #[test]
    fn records_in_both_formats() {
        let out = text(masked(
            MaskAction::Scan,
            RECORD,
            false,
            br#"(123-45-6789,"ann@example.org",,7)"#,
        ));
        assert_eq!(out, r#"("***","***",,"7")"#);
        let out = text(masked(MaskAction::Redact, RECORD, false, br#"("a ""b""",x)"#));
        assert_eq!(out, r#"("***","***")"#);
        assert_eq!(masked(MaskAction::Redact, RECORD, false, b"(a,b"), None);

        let mut rec = Vec::new();
        rec.put_i32(3);
        rec.put_u32(TEXT);
        put_field(&mut rec, Some(b"123-45-6789"));
        rec.put_u32(1082);
        put_field(&mut rec, Some(&9i32.to_be_bytes()));
        rec.put_u32(23);
        put_field(&mut rec, None);
        let out = masked(MaskAction::Redact, RECORD, true, &rec).unwrap();
        let mut expect = Vec::new();
        expect.put_i32(3);
        expect.put_u32(TEXT);
        put_field(&mut expect, Some(b"***"));
        expect.put_u32(1082);
        put_field(&mut expect, Some(&SENTINEL_DAYS.to_be_bytes()));
        expect.put_u32(23);
        put_field(&mut expect, None);
        assert_eq!(out, expect);
        assert_eq!(masked(MaskAction::Redact, RECORD, true, &rec[..6]), None);
    }

    #[test]
    fn fields_are_counted_once() {
        let plan = plan_for(MaskAction::Redact, 1009, false);
        let _ = mask_field(&plan, 0, Codec::text(1009), b"{a,b,c}");
        assert_eq!(plan.masked_fields(), 1);
        let scan = plan_for(MaskAction::Scan, 1009, false);
        let _ = mask_field(&scan, 0, Codec::text(1009), b"{a,b}");
        assert_eq!(scan.masked_fields(), 0);
    }
}
