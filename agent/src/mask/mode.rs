//! How a value is masked: the four modes and the keyed-hash token.
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How a masked value (or a detected substring) is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskMode {
    /// Replace with the fixed `redact_token` (default `***`).
    Redact,
    /// Keep the last 4 characters and punctuation, star the rest
    /// (`123-45-6789` → `***-**-6789`). Values of 4 characters or fewer are
    /// fully starred.
    Partial,
    /// `h:` + the first 16 hex digits of HMAC-SHA256(key, value): the same
    /// value always gives the same token, so masked columns still join.
    Hash,
    /// SQL NULL for a whole column value; inside free text it acts as `Redact`.
    Null,
}

/// Produces replacement bytes for a mode. Built once from config; holds the
/// keyed HMAC state so each hash costs two SHA-256 compressions, not a key
/// schedule.
#[derive(Clone)]
pub struct Replacer {
    redact_token: String,
    hmac: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Replacer {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replacer")
            .field("redact_token", &self.redact_token)
            .field("has_hash_key", &self.hmac.is_some())
            .finish()
    }
}

/// Number of hex digits of the HMAC kept in a hash token (64 bits).
pub const HASH_TOKEN_HEX_DIGITS: usize = 16;

impl Replacer {
    /// `hash_key` is `None` when no rule may use `Hash`; a `Hash` request then
    /// falls back to `Redact` (fail closed: never the clear value).
    pub fn new(redact_token: &str, hash_key: Option<&[u8]>) -> Self {
        Replacer {
            redact_token: redact_token.to_string(),
            hmac: hash_key.and_then(|k| Hmac::<Sha256>::new_from_slice(k).ok()),
        }
    }

    pub fn redact_token(&self) -> &str {
        &self.redact_token
    }

    pub fn has_hash_key(&self) -> bool {
        self.hmac.is_some()
    }

    /// Appends the replacement for `value` under `mode` to `out`.
    pub fn replace_into(&self, mode: MaskMode, value: &[u8], out: &mut Vec<u8>) {
        match mode {
            MaskMode::Redact | MaskMode::Null => out.extend_from_slice(self.redact_token.as_bytes()),
            MaskMode::Partial => partial_into(value, out),
            MaskMode::Hash => match &self.hmac {
                Some(mac) => {
                    let mut mac = mac.clone();
                    mac.update(value);
                    let digest = mac.finalize().into_bytes();
                    out.extend_from_slice(b"h:");
                    hex_into(&digest[..HASH_TOKEN_HEX_DIGITS / 2], out);
                }
                None => out.extend_from_slice(self.redact_token.as_bytes()),
            },
        }
    }

    pub fn replace(&self, mode: MaskMode, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len().max(18));
        self.replace_into(mode, value, &mut out);
        out
    }
}

fn hex_into(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
}

/// Stars every character except the last four and ASCII punctuation/space,
/// which show the value's shape without its content. Invalid UTF-8 is
/// handled per byte.
fn partial_into(value: &[u8], out: &mut Vec<u8>) {
    const KEEP: usize = 4;
    match std::str::from_utf8(value) {
        Ok(text) => {
            let count = text.chars().count();
            for (i, c) in text.chars().enumerate() {
                if count > KEEP && i >= count - KEEP {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                } else if c.is_ascii_punctuation() || c == ' ' {
                    out.push(c as u8);
                } else {
                    out.push(b'*');
                }
            }
        }
        Err(_) => {
            let count = value.len();
            for (i, &b) in value.iter().enumerate() {
                if count > KEEP && i >= count - KEEP {
                    out.push(b);
                } else {
                    out.push(b'*');
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Replacer, mode: MaskMode, v: &str) -> String {
        String::from_utf8(r.replace(mode, v.as_bytes())).unwrap()
    }

    #[test]
    fn redact_and_null_use_the_token() {
        let r = Replacer::new("[x]", None);
        assert_eq!(text(&r, MaskMode::Redact, "123-45-6789"), "[x]");
        assert_eq!(text(&r, MaskMode::Null, "123-45-6789"), "[x]");
    }

    #[test]
    fn partial_keeps_last_four_and_punctuation() {
        let r = Replacer::new("***", None);
        assert_eq!(text(&r, MaskMode::Partial, "123-45-6789"), "***-**-6789");
        assert_eq!(text(&r, MaskMode::Partial, "(555) 234-5678"), "(***) ***-5678");
        assert_eq!(text(&r, MaskMode::Partial, "José Ñúñez"), "**** *úñez");
        assert_eq!(text(&r, MaskMode::Partial, "1234"), "****");
        assert_eq!(
            r.replace(MaskMode::Partial, &[0xff, 1, 2, 3, 4, 5]),
            vec![b'*', b'*', 2, 3, 4, 5]
        );
    }

    #[test]
    fn hash_is_stable_keyed_and_prefixed() {
        let a = Replacer::new("***", Some(b"0123456789abcdef0123456789abcdef"));
        let b = Replacer::new("***", Some(b"another key, another token space"));
        let t1 = text(&a, MaskMode::Hash, "123-45-6789");
        assert_eq!(t1, text(&a, MaskMode::Hash, "123-45-6789"));
        assert_ne!(t1, text(&a, MaskMode::Hash, "123-45-6780"));
        assert_ne!(t1, text(&b, MaskMode::Hash, "123-45-6789"));
        assert!(t1.starts_with("h:") && t1.len() == 2 + HASH_TOKEN_HEX_DIGITS);
        assert!(t1[2..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn hash_without_key_redacts() {
        let r = Replacer::new("***", None);
        assert_eq!(text(&r, MaskMode::Hash, "123-45-6789"), "***");
        let keyed = Replacer::new("***", Some(b"secret-key-material-123"));
        assert!(!format!("{keyed:?}").contains("secret"));
    }
}
