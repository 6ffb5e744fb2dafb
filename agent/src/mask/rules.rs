//! Column rules: which columns are masked and how, by column name or by
//! `table.column`, with case-insensitive `*`/`?` globs.
use serde::{Deserialize, Serialize};

use super::MaskMode;

/// What a rule does with a matching column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskAction {
    Redact,
    Partial,
    Hash,
    Null,
    /// Run the value detectors over the value (mask only what they find).
    Scan,
    /// Leave the column as it is (an exception to a broader rule below it).
    Keep,
}

impl MaskAction {
    pub fn mode(self) -> Option<MaskMode> {
        match self {
            MaskAction::Redact => Some(MaskMode::Redact),
            MaskAction::Partial => Some(MaskMode::Partial),
            MaskAction::Hash => Some(MaskMode::Hash),
            MaskAction::Null => Some(MaskMode::Null),
            MaskAction::Scan | MaskAction::Keep => None,
        }
    }
}

/// One masking rule as written in config:
/// `{ column = "*ssn*", mode = "partial" }` or
/// `{ column = "patients.notes", mode = "scan" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// `COLUMN` or `TABLE.COLUMN` glob, case-insensitive; `*` matches any run
    /// of characters, `?` one character. The table part matches the
    /// result's table name with or without its schema (`patients.ssn` matches
    /// a column of `public.patients`).
    pub column: String,
    /// What to do with a matching column.
    pub mode: MaskAction,
}

impl MaskRule {
    pub fn new(column: &str, mode: MaskAction) -> Self {
        MaskRule {
            column: column.to_string(),
            mode,
        }
    }
}

/// The built-in rules used when `builtin_rules = true` (the default), after
/// the configured ones. Patterns stay on word edges (`ssn`, `ssn_*`,
/// `*_ssn`) so names like `classname` are not caught.
pub fn builtin_rules() -> Vec<MaskRule> {
    let mut rules = Vec::new();
    let mut word = |word: &str, mode: MaskAction| {
        for pattern in [
            word.to_string(),
            format!("{word}_*"),
            format!("*_{word}"),
            format!("*_{word}_*"),
        ] {
            rules.push(MaskRule::new(&pattern, mode));
        }
    };
    word("ssn", MaskAction::Partial);
    word("mrn", MaskAction::Redact);
    word("dob", MaskAction::Redact);
    for (pattern, mode) in [
        ("*social_security*", MaskAction::Partial),
        ("*medical_record*", MaskAction::Redact),
        ("*phone*", MaskAction::Partial),
        ("*email*", MaskAction::Redact),
        ("*e_mail*", MaskAction::Redact),
        ("*birth_date*", MaskAction::Redact),
        ("*birthdate*", MaskAction::Redact),
        ("*date_of_birth*", MaskAction::Redact),
    ] {
        rules.push(MaskRule::new(pattern, mode));
    }
    rules
}

/// A rule ready to match: lower-cased patterns split into table and column.
#[derive(Clone, Debug)]
pub(crate) struct CompiledRule {
    pub(crate) source: std::sync::Arc<str>,
    table: Option<String>,
    column: String,
    pub(crate) action: MaskAction,
}

impl CompiledRule {
    pub(crate) fn new(rule: &MaskRule) -> Self {
        let pattern = rule.column.trim().to_lowercase();
        let (table, column) = match pattern.rsplit_once('.') {
            Some((t, c)) => (Some(t.to_string()), c.to_string()),
            None => (None, pattern),
        };
        CompiledRule {
            source: rule.column.as_str().into(),
            table,
            column,
            action: rule.mode,
        }
    }

    /// `column` and `table` must already be lower-case.
    pub(crate) fn matches(&self, column: &str, table: Option<&str>) -> bool {
        if !glob_match(&self.column, column) {
            return false;
        }
        match (&self.table, table) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(pattern), Some(table)) => {
                let unqualified = table.rsplit_once('.').map_or(table, |(_, t)| t);
                glob_match(pattern, table) || glob_match(pattern, unqualified)
            }
        }
    }
}

/// `*` and `?` glob, case-sensitive (callers lower-case both sides).
/// Works on bytes when both sides are ASCII (the common case: no
/// allocation), on chars otherwise so `?` is one character.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        glob_slices(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
    } else {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        glob_slices(&p, &t, '*', '?')
    }
}

/// Greedy matcher with one backtrack point: linear in practice.
fn glob_slices<T: PartialEq + Copy>(p: &[T], t: &[T], star_sym: T, any: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] != star_sym && (p[pi] == any || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star_sym {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == star_sym {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_basics() {
        assert!(glob_match("*ssn*", "patient_ssn"));
        assert!(glob_match("ssn", "ssn"));
        assert!(!glob_match("ssn", "ssn2"));
        assert!(glob_match("s?n", "ssn"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("*phone*", "home_phone_number"));
        assert!(glob_match("pa?ient*", "paéient_x"));
        assert!(glob_match("*é*", "café"));
        assert!(!glob_match("*é*", "cafe"));
    }

    #[test]
    fn table_column_rules_match_with_or_without_schema() {
        let rule = CompiledRule::new(&MaskRule::new("Patients.Notes", MaskAction::Scan));
        assert!(rule.matches("notes", Some("public.patients")));
        assert!(rule.matches("notes", Some("patients")));
        assert!(!rule.matches("notes", Some("visits")));
        assert!(!rule.matches("notes", None));
        let qualified = CompiledRule::new(&MaskRule::new("public.patients.ssn", MaskAction::Hash));
        assert!(qualified.matches("ssn", Some("public.patients")));
        assert!(!qualified.matches("ssn", Some("other.patients")));
    }

    #[test]
    fn builtin_rules_catch_phi_names_but_not_lookalikes() {
        let rules: Vec<CompiledRule> = builtin_rules().iter().map(CompiledRule::new).collect();
        let hit = |name: &str| rules.iter().any(|r| r.matches(name, None));
        for name in [
            "ssn",
            "patient_ssn",
            "ssn_last4",
            "mrn",
            "home_phone",
            "email",
            "contact_email",
            "dob",
            "birth_date",
            "date_of_birth",
            "birthdate",
        ] {
            assert!(hit(name), "{name} should be masked");
        }
        for name in ["classname", "id", "created_at", "dobbin", "name"] {
            assert!(!hit(name), "{name} should not be masked");
        }
    }
}
