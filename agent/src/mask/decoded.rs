//! PHI hidden in an encoding the detectors cannot read as it is: hex
//! (`\x3132…` bytea output, `encode(…, 'hex')`), base64 (`encode(…,
//! 'base64')`, which PostgreSQL wraps at 76 characters), and quoted strings
//! with escapes (JSON `\u0040`, the `\"` and `""` of array and record
//! texts). Each candidate run is decoded and handed to the plain detectors;
//! a hit masks the whole run (for a quoted string, its contents, so the
//! JSON or array around it stays well-formed).
//!
//! Record `(a,b)`, array `{a,b}` and JSON texts without escapes need no
//! decoding: their separators and quotes are not word characters, so each
//! element is already scanned on its own.
use std::ops::Range;

use base64::Engine as _;

/// Shortest run worth decoding: 12 base64 characters hold 9 bytes, 16 hex
/// digits 8 — shorter than any value the detectors recognise.
pub const MIN_ENCODED: usize = 12;

/// Longest run decoded: bounded work per value.
const MAX_RUN: usize = 64 * 1024;

/// Adds to `out` the ranges of `text` whose decoded form `hit` accepts.
pub fn find(text: &[u8], hit: impl Fn(&[u8]) -> bool, out: &mut Vec<Range<usize>>) {
    if text.len() < MIN_ENCODED {
        return;
    }
    hex_runs(text, &hit, out);
    base64_runs(text, &hit, out);
    escaped_strings(text, &hit, out);
}

fn hex_runs(b: &[u8], hit: &impl Fn(&[u8]) -> bool, out: &mut Vec<Range<usize>>) {
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_hexdigit() || (i > 0 && b[i - 1].is_ascii_alphanumeric() && !after_hex_prefix(b, i)) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        let run = &b[start..i];
        if run.len() >= 16
            && run.len().is_multiple_of(2)
            && run.len() <= MAX_RUN
            && !b.get(i).is_some_and(u8::is_ascii_alphanumeric)
        {
            let decoded: Vec<u8> = run
                .chunks(2)
                .filter_map(|pair| Some(hex_value(pair[0])? << 4 | hex_value(pair[1])?))
                .collect();
            if hit(&decoded) {
                out.push(start..i);
            }
        }
    }
}

/// `\x` right before `i` (bytea hex output).
fn after_hex_prefix(b: &[u8], i: usize) -> bool {
    i >= 2 && b[i - 1] == b'x' && b[i - 2] == b'\\'
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn is_base64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/'
}

fn base64_runs(b: &[u8], hit: &impl Fn(&[u8]) -> bool, out: &mut Vec<Range<usize>>) {
    let mut i = 0;
    while i < b.len() {
        if !is_base64(b[i]) || (i > 0 && is_base64(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        let mut chars = Vec::new();
        // A run may continue on the next line (76-column wrapping).
        while i < b.len() && chars.len() <= MAX_RUN {
            if is_base64(b[i]) {
                chars.push(b[i]);
                i += 1;
            } else if b[i] == b'\n' && b.get(i + 1).is_some_and(|c| is_base64(*c)) {
                i += 1;
            } else {
                break;
            }
        }
        while i < b.len() && b[i] == b'=' {
            i += 1;
        }
        if chars.len() < MIN_ENCODED {
            continue;
        }
        // One character past a whole quantum carries no full byte.
        let usable = if chars.len() % 4 == 1 {
            chars.len() - 1
        } else {
            chars.len()
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(&chars[..usable]) else {
            continue;
        };
        if hit(&decoded) {
            out.push(start..i);
        }
    }
}

fn escaped_strings(b: &[u8], hit: &impl Fn(&[u8]) -> bool, out: &mut Vec<Range<usize>>) {
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        let mut escaped = false;
        let mut value = Vec::new();
        while j < b.len() {
            match b[j] {
                b'\\' if j + 1 < b.len() => {
                    escaped = true;
                    j += 1;
                    match b[j] {
                        b'u' if j + 4 < b.len() => {
                            let code = std::str::from_utf8(&b[j + 1..j + 5])
                                .ok()
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32);
                            match code {
                                Some(c) => {
                                    let mut buf = [0u8; 4];
                                    value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                                    j += 5;
                                }
                                None => {
                                    value.push(b'u');
                                    j += 1;
                                }
                            }
                        }
                        b'n' => {
                            value.push(b'\n');
                            j += 1;
                        }
                        b't' => {
                            value.push(b'\t');
                            j += 1;
                        }
                        c => {
                            value.push(c);
                            j += 1;
                        }
                    }
                }
                b'"' if b.get(j + 1) == Some(&b'"') && j > start => {
                    escaped = true;
                    value.push(b'"');
                    j += 2;
                }
                b'"' => break,
                c => {
                    value.push(c);
                    j += 1;
                }
            }
        }
        if escaped && hit(&value) {
            out.push(start..j.min(b.len()));
        }
        i = j + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssn_like(v: &[u8]) -> bool {
        String::from_utf8_lossy(v).contains("123-45-6789")
    }

    fn ranges(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        find(text.as_bytes(), ssn_like, &mut out);
        out.into_iter().map(|r| text[r].to_string()).collect()
    }

    #[test]
    fn hex_and_base64_are_decoded() {
        assert_eq!(ranges("\\x3132332d34352d36373839"), ["3132332d34352d36373839"]);
        assert_eq!(ranges("v=3132332D34352D36373839;"), ["3132332D34352D36373839"]);
        assert_eq!(ranges("MTIzLTQ1LTY3ODk="), ["MTIzLTQ1LTY3ODk="]);
        assert_eq!(ranges("x MTIzLTQ1LTY3ODk y"), ["MTIzLTQ1LTY3ODk"]);
        // Wrapped over lines, as encode(..., 'base64') does past 76 chars.
        let long = base64::engine::general_purpose::STANDARD.encode(format!("{}123-45-6789", "x".repeat(70)));
        let wrapped = format!("{}\n{}", &long[..76], &long[76..]);
        assert_eq!(ranges(&wrapped).len(), 1);
        assert!(ranges("deadbeefdeadbeef Patient12345678 plain words here").is_empty());
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        assert_eq!(
            ranges(r#"{"s": "\u0031\u0032\u0033-45-6789"}"#),
            [r#"\u0031\u0032\u0033-45-6789"#]
        );
        assert_eq!(ranges(r#"{"a \"123-45-6789\""}"#), [r#"a \"123-45-6789\""#]);
        assert!(ranges(r#"{"a": "b"}"#).is_empty());
    }
}
