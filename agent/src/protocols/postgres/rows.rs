//! PHI masking of what the server sends: result descriptions, rows, COPY
//! data and server messages. The generic rules and detectors live in
//! `crate::mask`; this module knows PostgreSQL's framing.
use std::{collections::BTreeSet, sync::Arc};

use bytes::{BufMut as _, BytesMut};
use pgwire::messages::{
    DecodeContext, Message as _, PgWireBackendMessage,
    data::RowDescription,
    response::{ErrorResponse, NoticeResponse},
};

use super::{
    frame::{Frame, take_i16, take_i32},
    types::{self, Codec},
};
use crate::{
    mask::{ColumnDesc, MaskAction, MaskRule, MaskedValue, Masker, ResultMasker},
    sql::lineage::{Derivation, Lineage, ResultLineage},
};

/// A result column as masking rules see it.
#[derive(Clone, Debug)]
pub struct Column {
    /// The real column name when it comes straight from a table, else the
    /// output name.
    pub name: String,
    pub table: Option<String>,
}

/// Name given to a column that comes from a table loopgate could not
/// identify; an override rule masks it whole (fail closed).
pub const UNRESOLVED: &str = "loopgate_unresolved_column";

/// Name given to a column the server attributes to no table whose values
/// lineage derives from PHI (or cannot explain); masked whole.
pub const DERIVED: &str = "loopgate_derived_phi";

/// Integer and boolean types: the only ones a safe function's result is
/// trusted in (see `sql::functions::SAFE`).
fn is_count_type(oid: u32) -> bool {
    matches!(oid, 16 | 20 | 21 | 23)
}

/// Renames to [`DERIVED`] every column the server attributes to no table
/// (`table: None`, not [`UNRESOLVED`]) whose values derive from PHI by
/// `lineage`: from a column a rule masks (`overrides` first), from a whole
/// row, through a function lineage cannot see into, or from anything when
/// lineage is missing or cannot place the column. `types` are the columns'
/// type OIDs where known.
fn with_lineage(
    masker: &Masker,
    columns: &[Column],
    types: Option<&[u32]>,
    lineage: Option<&Lineage>,
    overrides: &[MaskRule],
) -> Vec<Column> {
    let aligned = match lineage.map(|l| &l.result) {
        Some(ResultLineage::NoData) => return columns.to_vec(),
        Some(ResultLineage::Columns(_)) => lineage.map(|l| l.align(columns.len())).unwrap_or_default(),
        Some(ResultLineage::Unknown) | None => vec![None; columns.len()],
    };
    let phi = |i: usize, d: &Derivation| {
        let trusted_safe = d.safe && types.and_then(|t| t.get(i)).is_some_and(|t| is_count_type(*t));
        !trusted_safe
            && (d.opaque
                || d.sources
                    .iter()
                    .any(|s| s.whole_row() || masker.masks_column(&s.column, Some(&s.table), overrides)))
    };
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let tableless = c.table.is_none() && c.name != UNRESOLVED;
            let derived_phi = tableless && aligned.get(i).and_then(Option::as_ref).is_none_or(|d| phi(i, d));
            if derived_phi {
                Column {
                    name: DERIVED.to_owned(),
                    table: None,
                }
            } else {
                c.clone()
            }
        })
        .collect()
}

/// `overrides` with the rule that masks [`DERIVED`] columns first.
fn with_derived_rule(overrides: &[MaskRule]) -> Vec<MaskRule> {
    std::iter::once(MaskRule::new(DERIVED, MaskAction::Redact))
        .chain(overrides.iter().cloned())
        .collect()
}

/// Decodes a RowDescription.
pub fn decode_description(frame: &Frame) -> Result<RowDescription, String> {
    match super::frame::decode(frame.bytes.clone(), &DecodeContext::default()).map_err(|e| e.to_string())? {
        PgWireBackendMessage::RowDescription(d) => Ok(d),
        _ => Err("expected a RowDescription".into()),
    }
}

/// Masking state of one result set.
pub struct ResultMask {
    plan: ResultMasker,
    /// Shared by the plan's fresh copies.
    names: Arc<[String]>,
    /// Type and format of each column's values.
    codecs: Arc<[Codec]>,
    /// Columns in which at least one value was changed.
    changed: Vec<bool>,
}

impl ResultMask {
    /// Plans masking for a result described by `desc`, whose columns are
    /// `columns` (real name and table where known, else the output name),
    /// produced by a statement of the given `lineage` (`None`: unknown, so
    /// every column without a table is masked whole). The one place a
    /// description and the statement's facts become a plan. Returns the
    /// description to send instead of the original when the plan changes
    /// it; today never, as masked values keep their type.
    pub fn from_description(
        masker: &Masker,
        desc: RowDescription,
        columns: &[Column],
        overrides: &[MaskRule],
        lineage: Option<&Lineage>,
    ) -> Result<(ResultMask, Option<BytesMut>), String> {
        if columns.len() != desc.fields.len() {
            return Err(format!(
                "{} result columns resolved for {} described",
                columns.len(),
                desc.fields.len()
            ));
        }
        let types: Vec<u32> = desc.fields.iter().map(|f| f.type_id).collect();
        let columns = with_lineage(masker, columns, Some(&types), lineage, overrides);
        let overrides = &with_derived_rule(overrides)[..];
        let descs: Vec<ColumnDesc<'_>> = desc
            .fields
            .iter()
            .zip(&columns)
            .map(|(f, c)| ColumnDesc {
                name: &c.name,
                table: c.table.as_deref(),
                type_oid: f.type_id,
                binary: f.format_code == 1,
            })
            .collect();
        let plan = masker.plan(&descs, overrides);
        let names: Arc<[String]> = desc.fields.iter().map(|f| f.name.clone()).collect();
        let codecs: Arc<[Codec]> = desc
            .fields
            .iter()
            .map(|f| Codec {
                oid: f.type_id,
                binary: f.format_code == 1,
            })
            .collect();
        let changed = vec![false; names.len()];
        Ok((
            ResultMask {
                plan,
                names,
                codecs,
                changed,
            },
            None,
        ))
    }

    /// The same plan for another result with the same description,
    /// nothing masked yet.
    pub fn fresh(&self) -> ResultMask {
        ResultMask {
            plan: self.plan.fresh(),
            names: Arc::clone(&self.names),
            codecs: Arc::clone(&self.codecs),
            changed: vec![false; self.changed.len()],
        }
    }

    /// A plan for rows whose columns loopgate does not know (no description
    /// could be had): every value is withheld as NULL, never forwarded.
    pub fn withheld(masker: &Masker, columns: usize) -> ResultMask {
        let descs = vec![
            ColumnDesc {
                name: UNRESOLVED,
                table: None,
                type_oid: 0,
                binary: false,
            };
            columns
        ];
        ResultMask {
            plan: masker.plan(&descs, &[MaskRule::new("*", MaskAction::Null)]),
            names: vec![UNRESOLVED.to_owned(); columns].into(),
            codecs: vec![Codec::text(0); columns].into(),
            changed: vec![false; columns],
        }
    }

    /// A plan for COPY TO data of the given columns and types, whose
    /// values arrive as text (text and CSV) or in binary, from a statement
    /// of the given `lineage` (see [`ResultMask::from_description`]).
    pub fn for_copy(
        masker: &Masker,
        columns: &[Column],
        types: &[u32],
        binary: bool,
        overrides: &[MaskRule],
        lineage: Option<&Lineage>,
    ) -> ResultMask {
        let type_of = |i: usize| types.get(i).copied().unwrap_or(0);
        let known_types = (types.len() == columns.len()).then_some(types);
        let columns = &with_lineage(masker, columns, known_types, lineage, overrides)[..];
        let overrides = &with_derived_rule(overrides)[..];
        let descs: Vec<ColumnDesc<'_>> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| ColumnDesc {
                name: &c.name,
                table: c.table.as_deref(),
                type_oid: type_of(i),
                binary,
            })
            .collect();
        ResultMask {
            plan: masker.plan(&descs, overrides),
            names: columns.iter().map(|c| c.name.clone()).collect(),
            codecs: (0..columns.len())
                .map(|i| Codec {
                    oid: type_of(i),
                    binary,
                })
                .collect(),
            changed: vec![false; columns.len()],
        }
    }

    /// Number of columns of the planned result.
    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// Masks one field of column `col` by its type, noting the column as
    /// changed. COPY data and DataRows share it.
    pub fn field<'v>(&mut self, col: usize, value: &'v [u8]) -> MaskedValue<'v> {
        let Some(codec) = self.codecs.get(col).copied() else {
            self.plan.note_masked();
            return MaskedValue::Null;
        };
        let masked = types::mask_field(&self.plan, col, codec, value);
        if masked.is_changed()
            && let Some(c) = self.changed.get_mut(col)
        {
            *c = true;
        }
        masked
    }

    /// Masks one DataRow. Returns `None` when nothing changed (the original
    /// frame is forwarded as it is), else the rewritten row.
    pub fn data_row(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<bool, String> {
        if self.plan.is_noop() {
            return Ok(false);
        }
        let mut body = frame.body();
        let count = take_i16(&mut body).ok_or("truncated DataRow")?;
        if count < 0 || count as usize != self.names.len() {
            return Err(format!(
                "DataRow has {count} fields, its description {}",
                self.names.len()
            ));
        }
        let start = out.len();
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_i16(count);
        let mut any = false;
        for col in 0..count as usize {
            let len = take_i32(&mut body).ok_or("truncated DataRow")?;
            if len < 0 {
                out.put_i32(-1);
                continue;
            }
            let len = len as usize;
            if body.len() < len {
                return Err("truncated DataRow value".into());
            }
            let (value, rest) = body.split_at(len);
            body = rest;
            let masked = self.field(col, value);
            any |= masked.is_changed();
            match masked.as_bytes() {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
                None => out.put_i32(-1),
            }
        }
        if !body.is_empty() {
            return Err("trailing bytes after DataRow fields".into());
        }
        if !any {
            out.truncate(start);
            return Ok(false);
        }
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        Ok(true)
    }

    pub fn masked_count(&self) -> u64 {
        self.plan.masked_fields()
    }

    /// Names of the columns with at least one masked value.
    pub fn masked_columns(&self, into: &mut BTreeSet<String>) {
        for (name, changed) in self.names.iter().zip(&self.changed) {
            if *changed {
                into.insert(name.clone());
            }
        }
    }
}

/// Masks the text fields of an ErrorResponse or NoticeResponse (message,
/// detail, hint, where, ...): constraint errors echo the values of the
/// offending row. Returns the rewritten frame when anything changed.
pub fn server_message(masker: &Masker, frame: &Frame) -> Result<Option<BytesMut>, String> {
    let notice = frame.tag == Some(b'N');
    let mut fields =
        match super::frame::decode(frame.bytes.clone(), &DecodeContext::default()).map_err(|e| e.to_string())? {
            PgWireBackendMessage::NoticeResponse(n) => n.fields,
            PgWireBackendMessage::ErrorResponse(e) => e.fields,
            _ => return Err("expected an ErrorResponse or NoticeResponse".into()),
        };
    let mut changed = false;
    for (code, value) in fields.iter_mut() {
        // Severity, SQLSTATE, position, file, line, routine: no values.
        if matches!(code, b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R') {
            continue;
        }
        if let std::borrow::Cow::Owned(masked) = masker.mask_free_text(value) {
            *value = masked;
            changed = true;
        }
        // A unique violation's detail quotes the key values verbatim, in
        // forms the detectors may not know: keep only its shape.
        if *code == b'D'
            && let Some(open) = value.find(")=(")
        {
            *value = format!("{})=(***) already exists or is referenced.", &value[..open]);
            changed = true;
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut out = BytesMut::new();
    let encoded = if notice {
        NoticeResponse::new(fields).encode(&mut out)
    } else {
        ErrorResponse::new(fields).encode(&mut out)
    };
    encoded.map_err(|e| e.to_string())?;
    Ok(Some(out))
}

/// SQLSTATE of an ErrorResponse, for the audit record.
pub fn error_code(frame: &Frame) -> Option<String> {
    let mut body = frame.body();
    while let Some((&code, rest)) = body.split_first() {
        if code == 0 {
            break;
        }
        let (value, rest) = super::frame::cstr(rest)?;
        if code == b'C' {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        body = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskConfig;
    use pgwire::messages::data::FieldDescription;

    fn masker() -> Masker {
        Masker::new(&MaskConfig::default(), None).unwrap()
    }

    /// The lineage of a statement that returns no table data.
    fn no_phi_lineage() -> Lineage {
        Lineage {
            result: ResultLineage::NoData,
            ..Lineage::unknown()
        }
    }

    fn frame(bytes: BytesMut) -> Frame {
        Frame {
            tag: Some(bytes[0]),
            bytes,
        }
    }

    fn description(names: &[(&str, u32)]) -> Frame {
        let fields = names
            .iter()
            .enumerate()
            .map(|(i, (n, oid))| FieldDescription::new(n.to_string(), 0, i as i16, *oid, -1, -1, 0))
            .collect();
        let mut out = BytesMut::new();
        RowDescription::new(fields).encode(&mut out).unwrap();
        frame(out)
    }

    fn plan(m: &Masker, names: &[(&str, u32)]) -> (ResultMask, Option<BytesMut>) {
        let desc = decode_description(&description(names)).unwrap();
        let columns: Vec<Column> = names
            .iter()
            .map(|(n, _)| Column {
                name: n.to_string(),
                table: None,
            })
            .collect();
        ResultMask::from_description(m, desc, &columns, &[], Some(&no_phi_lineage())).unwrap()
    }

    #[test]
    fn real_column_names_defeat_aliases() {
        let m = masker();
        let desc = decode_description(&description(&[("x", 25), ("y", 1082)])).unwrap();
        let columns = [
            Column {
                name: "ssn".into(),
                table: Some("patients".into()),
            },
            Column {
                name: "dob".into(),
                table: Some("patients".into()),
            },
        ];
        let (mut mask, _) = ResultMask::from_description(&m, desc, &columns, &[], None).unwrap();
        let mut out = BytesMut::new();
        assert!(
            mask.data_row(&row(&[Some("123-45-6789"), Some("1980-02-03")]), &mut out)
                .unwrap()
        );
        let got = fields(&out);
        assert_eq!(got[0].as_deref(), Some("***-**-6789"));
        assert_eq!(got[1].as_deref(), Some("1900-01-01"), "a date stays a date");
    }

    fn lineage_of(sql: &str) -> Lineage {
        let analyzer = crate::sql::Analyzer::new(&crate::sql::SqlConfig::default(), masker());
        let analysis = analyzer.analyze(sql);
        (*analysis.statements[0].classification.as_ref().unwrap().lineage).clone()
    }

    /// The first field's value after masking a one-row result of `sql`
    /// whose fields the server attributes to no table.
    fn derived(sql: &str, fields: &[(&str, u32)], values: &[Option<&str>], overrides: &[MaskRule]) -> Vec<String> {
        let m = masker();
        let desc = decode_description(&description(fields)).unwrap();
        let columns: Vec<Column> = fields
            .iter()
            .map(|(n, _)| Column {
                name: n.to_string(),
                table: None,
            })
            .collect();
        let lineage = lineage_of(sql);
        let (mut mask, _) = ResultMask::from_description(&m, desc, &columns, overrides, Some(&lineage)).unwrap();
        let mut out = BytesMut::new();
        let r = row(values);
        if !mask.data_row(&r, &mut out).unwrap() {
            out = r.bytes.clone();
        }
        fields_of(&out)
    }

    fn fields_of(bytes: &[u8]) -> Vec<String> {
        fields(bytes).into_iter().map(|v| v.unwrap_or_default()).collect()
    }

    #[test]
    fn values_derived_from_phi_are_masked_whole() {
        let got = derived(
            "select reverse(ssn) as r, upper(city) as c, count(*) as n from patients",
            &[("r", 25), ("c", 25), ("n", 20)],
            &[Some("9876-54-321"), Some("BOSTON"), Some("3")],
            &[],
        );
        assert_eq!(got, ["***", "BOSTON", "3"]);
        // A function lineage cannot see into: masked, whatever it returns.
        let got = derived("select my_func(id) from visits", &[("my_func", 25)], &[Some("x")], &[]);
        assert_eq!(got, ["***"]);
        // A safe function's result arriving as text is not trusted.
        let got = derived(
            "select length(ssn) from patients",
            &[("length", 25)],
            &[Some("11")],
            &[],
        );
        assert_eq!(got, ["***"]);
        // A principal allowed to see the column sees what derives from it.
        let keep = [MaskRule::new("patients.ssn", MaskAction::Keep)];
        let got = derived(
            "select reverse(ssn) from patients",
            &[("reverse", 25)],
            &[Some("x")],
            &keep,
        );
        assert_eq!(got, ["x"]);
        // A result lineage cannot place (FETCH) is masked where tableless.
        let got = derived("fetch 1 from c", &[("a", 25)], &[Some("x")], &[]);
        assert_eq!(got, ["***"]);
        // Statements without table data are left alone.
        let got = derived("show timezone", &[("TimeZone", 25)], &[Some("UTC")], &[]);
        assert_eq!(got, ["UTC"]);
    }

    #[test]
    fn a_fresh_plan_masks_the_same_and_counts_from_zero() {
        let m = masker();
        let (mut first, _) = plan(&m, &[("ssn", 25), ("note", 25)]);
        let mut next = first.fresh();
        let values = [Some("123-45-6789"), Some("call 555-234-5678")];
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        first.data_row(&row(&values), &mut a).unwrap();
        let counted = first.masked_count();
        assert!(counted >= 2, "{counted}");
        let fresh_before = next.masked_count();
        next.data_row(&row(&values), &mut b).unwrap();
        assert_eq!(fresh_before, 0);
        assert_eq!(a, b, "the same plan masks the same way");
        assert_eq!(next.masked_count(), counted);
        let mut columns = BTreeSet::new();
        next.masked_columns(&mut columns);
        assert_eq!(columns.len(), 2);
    }

    fn row(values: &[Option<&str>]) -> Frame {
        let mut out = BytesMut::new();
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v.as_bytes());
                }
                None => out.put_i32(-1),
            }
        }
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        frame(out)
    }

    fn fields(bytes: &[u8]) -> Vec<Option<String>> {
        let mut body = &bytes[5..];
        let n = take_i16(&mut body).unwrap();
        (0..n)
            .map(|_| {
                let len = take_i32(&mut body).unwrap();
                if len < 0 {
                    return None;
                }
                let (v, rest) = body.split_at(len as usize);
                body = rest;
                Some(String::from_utf8(v.to_vec()).unwrap())
            })
            .collect()
    }

    #[test]
    fn masks_phi_columns_and_keeps_the_rest() {
        let m = masker();
        let (mut mask, rewritten) = plan(&m, &[("id", 23), ("name", 25), ("ssn", 25), ("dob", 1082)]);
        // dob stays a date: its masked value is a sentinel date.
        assert!(rewritten.is_none());

        let mut out = BytesMut::new();
        let changed = mask
            .data_row(
                &row(&[Some("7"), Some("Ann Lee"), Some("123-45-6789"), Some("1980-02-03")]),
                &mut out,
            )
            .unwrap();
        assert!(changed);
        let got = fields(&out);
        assert_eq!(got[0].as_deref(), Some("7"));
        assert_eq!(got[1].as_deref(), Some("Ann Lee"));
        assert_ne!(got[2].as_deref(), Some("123-45-6789"));
        assert_eq!(got[3].as_deref(), Some("1900-01-01"));
        assert!(mask.masked_count() >= 2);
        let mut cols = BTreeSet::new();
        mask.masked_columns(&mut cols);
        assert!(cols.contains("ssn") && cols.contains("dob") && !cols.contains("name"));
    }

    #[test]
    fn untouched_rows_are_forwarded_as_they_are() {
        let m = masker();
        let (mut mask, rewritten) = plan(&m, &[("id", 23), ("city", 25)]);
        assert!(rewritten.is_none());
        let mut out = BytesMut::new();
        assert!(!mask.data_row(&row(&[Some("1"), Some("Boston")]), &mut out).unwrap());
        assert!(out.is_empty());
        // A free-text column that happens to hold an SSN is caught by the scan.
        assert!(
            mask.data_row(&row(&[Some("2"), Some("ssn 123-45-6789 here")]), &mut out)
                .unwrap()
        );
        assert!(!String::from_utf8_lossy(&out).contains("123-45-6789"));
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        let m = masker();
        let (mut mask, _) = plan(&m, &[("ssn", 25)]);
        let mut out = BytesMut::new();
        for bad in [
            &b"D\0\0\0\x06\0\x02"[..],
            b"D\0\0\0\x0a\0\x01\0\0\0\x09",
            b"D\0\0\0\x05\0",
            b"D\0\0\0\x04",
        ] {
            let f = Frame {
                tag: Some(b'D'),
                bytes: BytesMut::from(bad),
            };
            assert!(mask.data_row(&f, &mut out).is_err());
        }
    }

    #[test]
    fn server_messages_lose_echoed_values() {
        let m = masker();
        let mut out = BytesMut::new();
        ErrorResponse::new(vec![
            (b'S', "ERROR".into()),
            (b'C', "23505".into()),
            (
                b'M',
                "duplicate key value violates unique constraint \"patients_ssn_key\"".into(),
            ),
            (b'D', "Key (ssn)=(123-45-6789) already exists.".into()),
        ])
        .encode(&mut out)
        .unwrap();
        let f = frame(out);
        assert_eq!(error_code(&f).as_deref(), Some("23505"));
        let masked = server_message(&m, &f).unwrap().expect("detail masked");
        assert!(!String::from_utf8_lossy(&masked).contains("123-45-6789"));
        assert!(String::from_utf8_lossy(&masked).contains("Key (ssn)"));
    }
}
