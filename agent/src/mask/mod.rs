//! PHI masking, protocol-independent.
//!
//! A [`Masker`] is built once from [`MaskConfig`]. For each result the
//! protocol handler calls [`Masker::plan`] with the column descriptions; the
//! plan decides per column (rule mode, detector scan, or keep) once, and
//! [`ResultMasker::mask_value`] then masks each value without allocating
//! for untouched ones. [`Masker::mask_free_text`] covers error and notice
//! messages and recorded literals.
mod decoded;
mod detect;
mod masker;
mod mode;
mod rules;
pub mod stream;

use std::path::PathBuf;

pub use detect::{Detector, DetectorKind, DetectorSet, Matches};
pub use masker::{ColumnDesc, ColumnPlan, MIN_HASH_KEY_LEN, MaskConfigError, MaskedValue, Masker, ResultMasker};
pub use mode::{HASH_TOKEN_HEX_DIGITS, MaskMode, Replacer};
pub use rules::{MaskAction, MaskRule, builtin_rules};

pub(crate) use rules::CompiledRule;

use serde::Deserialize;

/// `[mask]` in the agent config.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskConfig {
    /// Column rules, tried in order before the built-in ones; the first
    /// match decides. Example: `{ column = "patients.ssn", mode = "hash" }`.
    pub rules: Vec<MaskRule>,
    /// Append the built-in rules (columns named like ssn, mrn, phone, email,
    /// dob, birth_date, date_of_birth). Default `true`.
    pub builtin_rules: bool,
    /// Run the detectors over text columns that no rule matched. Default `true`.
    pub scan_unmatched: bool,
    /// Detectors used for column scans and free text. Default
    /// `["ssn", "mrn", "phone", "email", "card", "ipv4"]`; `mrn` runs only
    /// when `mrn_pattern` is set. `zip` and `date` are off by default: they
    /// match too many ordinary numbers and timestamps.
    pub detectors: Vec<DetectorKind>,
    /// Regular expression (Rust `regex` syntax) matching this site's medical
    /// record numbers, e.g. `"\\bMRN[-: ]?\\d{6,10}\\b"`. Default: none.
    pub mrn_pattern: Option<String>,
    /// Mode applied to what detectors find. Default `redact`.
    pub detected_mode: MaskMode,
    /// Also detect dates in free text (messages, recorded literals).
    /// Default `false`.
    pub free_text_dates: bool,
    /// Token written by `redact`. Default `***`.
    pub redact_token: String,
    /// File holding the HMAC key for `hash` (at least 16 bytes; a trailing
    /// newline is ignored). Required when any rule or `detected_mode` uses
    /// `hash`. Never put the key itself in the config.
    pub hash_key_file: Option<PathBuf>,
}

impl Default for MaskConfig {
    fn default() -> Self {
        MaskConfig {
            rules: Vec::new(),
            builtin_rules: true,
            scan_unmatched: true,
            detectors: vec![
                DetectorKind::Ssn,
                DetectorKind::Mrn,
                DetectorKind::Phone,
                DetectorKind::Email,
                DetectorKind::Card,
                DetectorKind::Ipv4,
            ],
            mrn_pattern: None,
            detected_mode: MaskMode::Redact,
            free_text_dates: false,
            redact_token: "***".to_string(),
            hash_key_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_from_toml_with_defaults() {
        let config: MaskConfig = toml::from_str(
            r#"
            mrn_pattern = "MRN\\d+"
            detectors = ["ssn", "zip"]
            rules = [{ column = "patients.notes", mode = "scan" }, { column = "*ssn*", mode = "partial" }]
            "#,
        )
        .unwrap();
        assert_eq!(config.rules[1], MaskRule::new("*ssn*", MaskAction::Partial));
        assert_eq!(config.detectors, [DetectorKind::Ssn, DetectorKind::Zip]);
        assert!(config.builtin_rules);
        assert_eq!(config.redact_token, "***");
    }

    #[test]
    fn config_rejects_unknown_keys() {
        assert!(toml::from_str::<MaskConfig>("hash_key = \"inline\"").is_err());
        assert!(toml::from_str::<MaskConfig>("rules = [{ column = \"x\", mode = \"scan\", extra = 1 }]").is_err());
    }
}
