//! The masker: built once from config, it plans each result's columns once
//! and then masks every value with that plan.
use std::{
    borrow::Cow,
    cell::Cell,
    collections::HashMap,
    ops::Range,
    path::Path,
    sync::{Arc, Mutex},
};

use super::{
    CompiledRule, Detector, DetectorKind, DetectorSet, MaskAction, MaskConfig, MaskMode, MaskRule, Replacer,
    builtin_rules,
};

/// Why a masker could not be built from config.
#[derive(Debug, thiserror::Error)]
pub enum MaskConfigError {
    #[error("mask.mrn_pattern is not a valid regular expression: {0}")]
    MrnPattern(String),
    #[error("mask.hash_key_file {path}: {source}")]
    HashKeyFile { path: String, source: std::io::Error },
    #[error("the hash key must be at least {MIN_HASH_KEY_LEN} bytes, got {0}")]
    HashKeyTooShort(usize),
    #[error("a mask rule or detected_mode uses `hash` but no mask.hash_key_file is configured")]
    HashKeyMissing,
}

/// Bound on memoized (column, table) → rule look-ups; cleared when full.
const RULE_MEMO_ENTRIES: usize = 4096;

/// Shortest accepted HMAC key.
pub const MIN_HASH_KEY_LEN: usize = 16;

/// One column of a result, as the protocol handler knows it (PostgreSQL:
/// from RowDescription, with the table OID resolved to a name when known).
#[derive(Clone, Copy, Debug)]
pub struct ColumnDesc<'a> {
    pub name: &'a str,
    /// `schema.table` or `table`, when the column comes straight from one.
    pub table: Option<&'a str>,
    /// Type OID (PostgreSQL); 0 when unknown.
    pub type_oid: u32,
    /// Values arrive in binary format.
    pub binary: bool,
}

/// What happens to one column of a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnPlan {
    /// Pass values through untouched.
    Keep,
    /// Replace every non-NULL value.
    Mask(MaskMode),
    /// Run the detectors; replace what they find. `framed` values (binary
    /// arrays and other length-framed encodings) cannot be edited in place,
    /// so a value with any finding becomes NULL.
    Scan { framed: bool },
}

/// A masked value: borrowed when unchanged, so untouched values cost no
/// allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaskedValue<'v> {
    Original(&'v [u8]),
    Masked(Vec<u8>),
    Null,
}

impl MaskedValue<'_> {
    /// The bytes to send; `None` for SQL NULL.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            MaskedValue::Original(v) => Some(v),
            MaskedValue::Masked(v) => Some(v),
            MaskedValue::Null => None,
        }
    }

    pub fn is_changed(&self) -> bool {
        !matches!(self, MaskedValue::Original(_))
    }
}

#[derive(Debug)]
struct Inner {
    rules: Vec<CompiledRule>,
    /// `name \0 table` → index of the first matching rule.
    rule_memo: Mutex<HashMap<String, Option<usize>>>,
    scan_unmatched: bool,
    column_detectors: DetectorSet,
    free_text_detectors: DetectorSet,
    detected_mode: MaskMode,
    replacer: Replacer,
}

/// PHI masker shared by all sessions (cheap to clone).
#[derive(Clone, Debug)]
pub struct Masker {
    inner: Arc<Inner>,
}

impl Masker {
    /// Builds from config, reading `hash_key_file` when set.
    pub fn from_config(config: &MaskConfig) -> Result<Self, MaskConfigError> {
        let key = match &config.hash_key_file {
            Some(path) => Some(read_key(path)?),
            None => None,
        };
        Masker::new(config, key.as_deref())
    }

    /// Builds with an explicit hash key (e.g. from a systemd credential).
    pub fn new(config: &MaskConfig, hash_key: Option<&[u8]>) -> Result<Self, MaskConfigError> {
        if let Some(key) = hash_key
            && key.len() < MIN_HASH_KEY_LEN
        {
            return Err(MaskConfigError::HashKeyTooShort(key.len()));
        }
        let uses_hash =
            config.detected_mode == MaskMode::Hash || config.rules.iter().any(|r| r.mode == MaskAction::Hash);
        if uses_hash && hash_key.is_none() {
            return Err(MaskConfigError::HashKeyMissing);
        }
        let mut rules: Vec<CompiledRule> = config.rules.iter().map(CompiledRule::new).collect();
        if config.builtin_rules {
            rules.extend(builtin_rules().iter().map(CompiledRule::new));
        }
        let mrn = match &config.mrn_pattern {
            Some(p) => Some(regex::bytes::Regex::new(p).map_err(|e| MaskConfigError::MrnPattern(e.to_string()))?),
            None => None,
        };
        let build = |kinds: &mut dyn Iterator<Item = DetectorKind>| {
            let mut seen = Vec::new();
            let mut detectors = Vec::new();
            for kind in kinds {
                if seen.contains(&kind) {
                    continue;
                }
                seen.push(kind);
                let detector = match kind {
                    DetectorKind::Ssn => Detector::Ssn,
                    DetectorKind::Mrn => match &mrn {
                        Some(re) => Detector::Mrn(re.clone()),
                        None => continue,
                    },
                    DetectorKind::Phone => Detector::Phone,
                    DetectorKind::Email => Detector::Email,
                    DetectorKind::Date => Detector::Date,
                    DetectorKind::Card => Detector::Card,
                    DetectorKind::Ipv4 => Detector::Ipv4,
                    DetectorKind::Zip => Detector::Zip,
                };
                detectors.push(detector);
            }
            DetectorSet::new(detectors)
        };
        let column_detectors = build(&mut config.detectors.iter().copied());
        let free_text_detectors = build(
            &mut config
                .detectors
                .iter()
                .copied()
                .chain(config.free_text_dates.then_some(DetectorKind::Date)),
        );
        Ok(Masker {
            inner: Arc::new(Inner {
                rules,
                rule_memo: Mutex::new(HashMap::new()),
                scan_unmatched: config.scan_unmatched,
                column_detectors,
                free_text_detectors,
                detected_mode: config.detected_mode,
                replacer: Replacer::new(&config.redact_token, hash_key),
            }),
        })
    }

    /// Plans a result's columns once. `overrides` (from the policy decision)
    /// are tried before the configured rules.
    pub fn plan(&self, columns: &[ColumnDesc<'_>], overrides: &[MaskRule]) -> ResultMasker {
        let overrides: Vec<CompiledRule> = overrides.iter().map(CompiledRule::new).collect();
        let columns = columns
            .iter()
            .map(|c| {
                let overridden = if overrides.is_empty() {
                    None
                } else {
                    let (name, table) = (c.name.to_lowercase(), c.table.map(str::to_lowercase));
                    overrides.iter().find(|r| r.matches(&name, table.as_deref()))
                };
                let rule = overridden.or_else(|| self.configured_rule(c));
                let (plan, rule) = match rule {
                    Some(r) => (self.plan_action(r.action, c), Some(Arc::clone(&r.source))),
                    None if self.inner.scan_unmatched => (self.plan_action(MaskAction::Scan, c), None),
                    None => (ColumnPlan::Keep, None),
                };
                PlannedColumn { plan, rule }
            })
            .collect();
        ResultMasker {
            masker: self.clone(),
            columns,
            masked: Cell::new(0),
        }
    }

    /// Whether values of column `name` (of `table`, when known) are masked
    /// whole by the first matching rule, `overrides` first: the columns
    /// whose derived values lineage masks too. `scan` and `keep` do not
    /// count (a `keep` override lets the caller see the column, and so what
    /// derives from it).
    pub fn masks_column(&self, name: &str, table: Option<&str>, overrides: &[MaskRule]) -> bool {
        let (lower, table_lower) = (name.to_lowercase(), table.map(str::to_lowercase));
        let overridden = overrides
            .iter()
            .map(CompiledRule::new)
            .find(|r| r.matches(&lower, table_lower.as_deref()));
        let action = match overridden {
            Some(r) => Some(r.action),
            None => self
                .configured_rule(&ColumnDesc {
                    name,
                    table,
                    type_oid: 0,
                    binary: false,
                })
                .map(|r| r.action),
        };
        action.and_then(MaskAction::mode).is_some()
    }

    /// First configured rule matching the column, memoized by name and
    /// table: results with the same columns come back again and again.
    fn configured_rule(&self, column: &ColumnDesc<'_>) -> Option<&CompiledRule> {
        let mut key = String::with_capacity(column.name.len() + column.table.map_or(0, str::len) + 1);
        key.push_str(column.name);
        key.push('\0');
        key.push_str(column.table.unwrap_or(""));
        let mut memo = self.inner.rule_memo.lock().unwrap_or_else(|p| p.into_inner());
        let index = match memo.get(&key) {
            Some(index) => *index,
            None => {
                let (name, table) = (column.name.to_lowercase(), column.table.map(str::to_lowercase));
                let index = self.inner.rules.iter().position(|r| r.matches(&name, table.as_deref()));
                if memo.len() >= RULE_MEMO_ENTRIES {
                    memo.clear();
                }
                memo.insert(key, index);
                index
            }
        };
        index.and_then(|i| self.inner.rules.get(i))
    }

    fn plan_action(&self, action: MaskAction, column: &ColumnDesc<'_>) -> ColumnPlan {
        match action.mode() {
            // A binary non-text value cannot be partially shown.
            Some(MaskMode::Partial) if column.binary && !is_plain_text_type(column.type_oid) => {
                ColumnPlan::Mask(MaskMode::Redact)
            }
            Some(mode) => ColumnPlan::Mask(mode),
            None if action == MaskAction::Keep => ColumnPlan::Keep,
            None => {
                if self.inner.column_detectors.is_empty() || !is_scannable_type(column.type_oid) {
                    ColumnPlan::Keep
                } else {
                    ColumnPlan::Scan {
                        framed: column.binary && !is_plain_text_type(column.type_oid),
                    }
                }
            }
        }
    }

    /// The token `redact` writes, for callers that build masked values of
    /// their own encoding (a JSON string).
    pub fn redact_token(&self) -> &str {
        self.inner.replacer.redact_token()
    }

    /// Masks what the detectors find in free text: error and notice messages,
    /// recorded statement literals, bind parameters. Borrowed when clean.
    pub fn mask_free_text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let ranges = self.inner.free_text_detectors.find_all(text.as_bytes());
        if ranges.is_empty() {
            return Cow::Borrowed(text);
        }
        let out = self.replace_ranges(text.as_bytes(), &ranges);
        // Ranges start and end on ASCII bytes, so this never fails; stay safe anyway.
        Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Where the free-text detectors find something in `bytes`: sorted,
    /// non-overlapping ranges (for a caller that must not cut through one).
    pub fn free_text_ranges(&self, bytes: &[u8]) -> Vec<Range<usize>> {
        self.inner.free_text_detectors.find_all(bytes)
    }

    /// [`mask_free_text`](Self::mask_free_text) for bytes that need not be
    /// UTF-8 (a remote command's output). Borrowed when clean.
    pub fn mask_free_bytes<'t>(&self, bytes: &'t [u8]) -> Cow<'t, [u8]> {
        let ranges = self.inner.free_text_detectors.find_all(bytes);
        if ranges.is_empty() {
            return Cow::Borrowed(bytes);
        }
        Cow::Owned(self.replace_ranges(bytes, &ranges))
    }

    fn replace_ranges(&self, value: &[u8], ranges: &[Range<usize>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + 16);
        let mut last = 0;
        for r in ranges {
            out.extend_from_slice(&value[last..r.start]);
            self.inner
                .replacer
                .replace_into(self.inner.detected_mode, &value[r.clone()], &mut out);
            last = r.end;
        }
        out.extend_from_slice(&value[last..]);
        out
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, MaskConfigError> {
    let mut key = std::fs::read(path).map_err(|source| MaskConfigError::HashKeyFile {
        path: path.display().to_string(),
        source,
    })?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    Ok(key)
}

/// Types whose text and binary encodings are the same UTF-8 text (or, for
/// jsonb, a version byte and the text), so masking can edit them in place.
/// OIDs at or above 16384 are user types (citext, domains): treated as text.
fn is_plain_text_type(oid: u32) -> bool {
    matches!(oid, 0 | 18 | 19 | 25 | 114 | 142 | 705 | 1042 | 1043 | 3802) || oid >= 16384
}

/// Types worth running detectors on: text-like types, arrays of them, and
/// records (`row(...)`, whose fields the protocol handler scans one by one).
fn is_scannable_type(oid: u32) -> bool {
    // text[], varchar[], bpchar[], name[], json[], jsonb[], xml[], record, record[]
    is_plain_text_type(oid) || matches!(oid, 1009 | 1015 | 1014 | 1003 | 199 | 3807 | 143 | 2249 | 2287)
}

#[derive(Clone, Debug)]
struct PlannedColumn {
    plan: ColumnPlan,
    rule: Option<Arc<str>>,
}

/// A result's masking plan. One per result set; not shared between threads.
#[derive(Debug)]
pub struct ResultMasker {
    masker: Masker,
    /// Shared by the plan's fresh copies (see [`ResultMasker::fresh`]).
    columns: Arc<[PlannedColumn]>,
    masked: Cell<u64>,
}

impl ResultMasker {
    /// The same plan with nothing masked yet, for the next result of the
    /// same shape.
    pub fn fresh(&self) -> ResultMasker {
        ResultMasker {
            masker: self.masker.clone(),
            columns: Arc::clone(&self.columns),
            masked: Cell::new(0),
        }
    }

    /// Masks one non-NULL value of column `col` (SQL NULLs stay NULL and
    /// are not passed here) and counts it when changed. A column index
    /// outside the plan is a handler bug: the value is withheld (NULL),
    /// never passed through.
    pub fn mask_value<'v>(&self, col: usize, value: &'v [u8]) -> MaskedValue<'v> {
        let masked = match self.columns.get(col) {
            Some(column) if column.plan == ColumnPlan::Scan { framed: true } => {
                if self.masker.inner.column_detectors.find_all(value).is_empty() {
                    MaskedValue::Original(value)
                } else {
                    MaskedValue::Null
                }
            }
            _ => self.mask_part(col, value),
        };
        if masked.is_changed() {
            self.count();
        }
        masked
    }

    /// Masks `value` as text under column `col`'s plan, without counting:
    /// for a part of a field (an element of an array, a field of a record)
    /// whose field the caller counts once with [`ResultMasker::note_masked`].
    pub fn mask_part<'v>(&self, col: usize, value: &'v [u8]) -> MaskedValue<'v> {
        let Some(column) = self.columns.get(col) else {
            return MaskedValue::Null;
        };
        match column.plan {
            ColumnPlan::Keep => MaskedValue::Original(value),
            ColumnPlan::Mask(MaskMode::Null) => MaskedValue::Null,
            ColumnPlan::Mask(mode) => MaskedValue::Masked(self.masker.inner.replacer.replace(mode, value)),
            ColumnPlan::Scan { .. } => {
                let ranges = self.masker.inner.column_detectors.find_all(value);
                if ranges.is_empty() {
                    MaskedValue::Original(value)
                } else {
                    MaskedValue::Masked(self.masker.replace_ranges(value, &ranges))
                }
            }
        }
    }

    /// Counts one masked field (see [`ResultMasker::mask_part`]).
    pub fn note_masked(&self) {
        self.count();
    }

    /// The redaction token, for callers that build a masked value of
    /// their own encoding (a JSON string, a bytea).
    pub fn redact_token(&self) -> &str {
        self.masker.inner.replacer.redact_token()
    }

    fn count(&self) {
        self.masked.set(self.masked.get() + 1);
    }

    /// Fields changed so far (for the audit record's counters).
    pub fn masked_fields(&self) -> u64 {
        self.masked.get()
    }

    pub fn column_plan(&self, col: usize) -> Option<ColumnPlan> {
        self.columns.get(col).map(|c| c.plan)
    }

    /// The rule pattern that decided the column, if any (for the audit record).
    pub fn column_rule(&self, col: usize) -> Option<&str> {
        self.columns.get(col).and_then(|c| c.rule.as_deref())
    }

    /// Whether any column can change (lets the handler skip row rewriting).
    pub fn is_noop(&self) -> bool {
        self.columns.iter().all(|c| c.plan == ColumnPlan::Keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test-key-0123456789abcdef";

    fn col<'a>(name: &'a str, table: Option<&'a str>) -> ColumnDesc<'a> {
        ColumnDesc {
            name,
            table,
            type_oid: 25,
            binary: false,
        }
    }

    fn text(v: &MaskedValue<'_>) -> Option<String> {
        v.as_bytes().map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn default_config_masks_phi_columns_and_scans_the_rest() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let cols = [
            col("id", None),
            col("SSN", None),
            col("email", None),
            col("notes", None),
        ];
        let plan = masker.plan(&cols, &[]);
        assert_eq!(plan.mask_value(0, b"42"), MaskedValue::Original(b"42"));
        assert_eq!(text(&plan.mask_value(1, b"123-45-6789")).unwrap(), "***-**-6789");
        assert_eq!(text(&plan.mask_value(2, b"jane@example.org")).unwrap(), "***");
        assert_eq!(
            text(&plan.mask_value(3, b"call 555-234-5678 re: ssn 123-45-6789")).unwrap(),
            "call *** re: ssn ***"
        );
        assert_eq!(
            plan.mask_value(3, b"no phi here"),
            MaskedValue::Original(b"no phi here")
        );
        assert_eq!(plan.masked_fields(), 3);
        assert_eq!(plan.column_rule(1), Some("ssn"));
        assert_eq!(plan.column_rule(0), None);
    }

    #[test]
    fn configured_rules_come_first_and_keep_makes_exceptions() {
        let config = MaskConfig {
            rules: vec![
                MaskRule::new("email_opt_in", MaskAction::Keep),
                MaskRule::new("patients.ssn", MaskAction::Hash),
                MaskRule::new("visits.*", MaskAction::Null),
            ],
            ..MaskConfig::default()
        };
        let masker = Masker::new(&config, Some(KEY)).unwrap();
        let cols = [
            col("email_opt_in", None),
            col("ssn", Some("public.patients")),
            col("ssn", Some("staff")),
            col("reason", Some("visits")),
        ];
        let plan = masker.plan(&cols, &[]);
        assert_eq!(plan.mask_value(0, b"t"), MaskedValue::Original(b"t"));
        let a = text(&plan.mask_value(1, b"123-45-6789")).unwrap();
        assert!(a.starts_with("h:"));
        assert_eq!(a, text(&plan.mask_value(1, b"123-45-6789")).unwrap(), "tokens join");
        assert_eq!(text(&plan.mask_value(2, b"123-45-6789")).unwrap(), "***-**-6789");
        assert_eq!(plan.mask_value(3, b"flu"), MaskedValue::Null);
    }

    #[test]
    fn overrides_from_policy_win() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let plan = masker.plan(&[col("ssn", None)], &[MaskRule::new("ssn", MaskAction::Null)]);
        assert_eq!(plan.mask_value(0, b"123-45-6789"), MaskedValue::Null);
    }

    #[test]
    fn hash_needs_a_long_enough_key() {
        let config = MaskConfig {
            rules: vec![MaskRule::new("ssn", MaskAction::Hash)],
            ..MaskConfig::default()
        };
        assert!(matches!(
            Masker::new(&config, None),
            Err(MaskConfigError::HashKeyMissing)
        ));
        assert!(matches!(
            Masker::new(&config, Some(b"short")),
            Err(MaskConfigError::HashKeyTooShort(5))
        ));
    }

    #[test]
    fn hash_key_file_is_read_and_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"0123456789abcdef0123\n").unwrap();
        let config = MaskConfig {
            rules: vec![MaskRule::new("ssn", MaskAction::Hash)],
            hash_key_file: Some(path),
            ..MaskConfig::default()
        };
        let from_file = Masker::from_config(&config).unwrap();
        let direct = Masker::new(&config, Some(b"0123456789abcdef0123")).unwrap();
        let v = |m: &Masker| {
            m.plan(&[col("ssn", None)], &[])
                .mask_value(0, b"x")
                .as_bytes()
                .map(<[u8]>::to_vec)
        };
        assert_eq!(v(&from_file), v(&direct));
    }

    #[test]
    fn non_text_types_are_not_scanned() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let cols = [
            ColumnDesc {
                name: "amount",
                table: None,
                type_oid: 20, // int8
                binary: false,
            },
            ColumnDesc {
                name: "dob",
                table: None,
                type_oid: 1082, // date
                binary: true,
            },
        ];
        let plan = masker.plan(&cols, &[]);
        assert_eq!(plan.column_plan(0), Some(ColumnPlan::Keep));
        assert_eq!(plan.column_plan(1), Some(ColumnPlan::Mask(MaskMode::Redact)));
    }

    #[test]
    fn binary_arrays_with_findings_are_withheld() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let cols = [ColumnDesc {
            name: "aliases",
            table: None,
            type_oid: 1009,
            binary: true,
        }];
        let plan = masker.plan(&cols, &[]);
        assert_eq!(plan.mask_value(0, b"\0\0\0\x01...123-45-6789"), MaskedValue::Null);
        assert_eq!(
            plan.mask_value(0, b"\0\0\0\x01...abc"),
            MaskedValue::Original(b"\0\0\0\x01...abc")
        );
    }

    /// Property-style: PHI planted in random text never survives a scan,
    /// the text around it does, and clean values come back borrowed.
    #[test]
    fn scanned_values_keep_no_detectable_phi() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let plan = masker.plan(&[col("notes", None)], &[]);
        let phi = [
            "123-45-6789",
            "(555) 234-5678",
            "jane.doe@example.org",
            "4111 1111 1111 1111",
            "10.1.2.3",
        ];
        let filler = [
            "visit ",
            "pain: 3/10, ",
            "née ",
            "room 12 ",
            "été; ",
            "follow-up in 2 weeks. ",
        ];
        let mut seed = 0x853c_49e6_748f_ea9bu64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        for _ in 0..2000 {
            let mut text = String::new();
            let mut planted = Vec::new();
            for _ in 0..(next() % 6) {
                text.push_str(filler[next() % filler.len()]);
                if next() % 3 == 0 {
                    let p = phi[next() % phi.len()];
                    planted.push(p);
                    text.push_str(p);
                    text.push(' ');
                }
            }
            let masked = plan.mask_value(0, text.as_bytes());
            let out = String::from_utf8(masked.as_bytes().unwrap().to_vec()).unwrap();
            for p in &planted {
                assert!(!out.contains(p), "{p} survived in {out:?}");
            }
            if planted.is_empty() {
                assert_eq!(masked, MaskedValue::Original(text.as_bytes()), "{text:?}");
            }
        }
    }

    #[test]
    fn out_of_range_column_is_withheld() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let plan = masker.plan(&[col("id", None)], &[]);
        assert_eq!(plan.mask_value(7, b"x"), MaskedValue::Null);
    }

    #[test]
    fn free_text_masks_constraint_error_details() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let msg = "Key (ssn)=(123-45-6789) already exists.";
        assert_eq!(masker.mask_free_text(msg), "Key (ssn)=(***) already exists.");
        assert!(matches!(
            masker.mask_free_text("relation \"x\" does not exist"),
            Cow::Borrowed(_)
        ));
        // Dates only when configured.
        assert_eq!(masker.mask_free_text("born 1980-04-23"), "born 1980-04-23");
        let dated = Masker::new(
            &MaskConfig {
                free_text_dates: true,
                ..MaskConfig::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(dated.mask_free_text("born 1980-04-23"), "born ***");
    }

    #[test]
    fn mrn_pattern_is_configurable_and_validated() {
        let bad = MaskConfig {
            mrn_pattern: Some("(".into()),
            ..MaskConfig::default()
        };
        assert!(matches!(Masker::new(&bad, None), Err(MaskConfigError::MrnPattern(_))));
        let good = MaskConfig {
            mrn_pattern: Some(r"\bMRN\d{7}\b".into()),
            ..MaskConfig::default()
        };
        let masker = Masker::new(&good, None).unwrap();
        assert_eq!(masker.mask_free_text("chart MRN0012345 ok"), "chart *** ok");
    }
}
