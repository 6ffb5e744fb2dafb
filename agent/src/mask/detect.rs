//! Value detectors: fast hand-written scanners that find PHI-shaped
//! substrings (SSN, phone, email, card, IPv4, ZIP, date) plus the
//! site-specific MRN pattern from config.
//!
//! Scanners work on bytes and only start and end matches on ASCII bytes, so
//! every range they return is also a valid `str` char boundary.
use std::ops::Range;

use serde::Deserialize;

/// What a detector looks for; also the config name of the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// US Social Security number, `123-45-6789` or `123 45 6789`.
    Ssn,
    /// Medical record number, by the configured `mrn_pattern`.
    Mrn,
    /// NANP phone number with separators: `(555) 234-5678`, `555-234-5678`, `+1 555.234.5678`.
    Phone,
    /// E-mail address.
    Email,
    /// Calendar date: `1980-04-23`, `1980/04/23`, `04/23/1980`, `4-23-1980`.
    Date,
    /// Payment card number, 13–19 digits (spaces or dashes allowed), Luhn-valid.
    Card,
    /// IPv4 address.
    Ipv4,
    /// US ZIP code, `12345` or `12345-6789`.
    Zip,
}

/// One configured detector.
#[derive(Clone, Debug)]
pub enum Detector {
    Ssn,
    Mrn(regex::bytes::Regex),
    Phone,
    Email,
    Date,
    Card,
    Ipv4,
    Zip,
}

impl Detector {
    pub fn kind(&self) -> DetectorKind {
        match self {
            Detector::Ssn => DetectorKind::Ssn,
            Detector::Mrn(_) => DetectorKind::Mrn,
            Detector::Phone => DetectorKind::Phone,
            Detector::Email => DetectorKind::Email,
            Detector::Date => DetectorKind::Date,
            Detector::Card => DetectorKind::Card,
            Detector::Ipv4 => DetectorKind::Ipv4,
            Detector::Zip => DetectorKind::Zip,
        }
    }

    /// Every match in `text`, left to right, non-overlapping.
    pub fn find<'t>(&'t self, text: &'t [u8]) -> Matches<'t> {
        let scanner: Option<Matcher> = match self {
            Detector::Mrn(re) => return Matches::Regex(re.find_iter(text)),
            Detector::Ssn => Some(match_ssn),
            Detector::Phone => Some(match_phone),
            Detector::Email => return Matches::Email(EmailScan { text, pos: 0 }),
            Detector::Date => Some(match_date),
            Detector::Card => Some(match_card),
            Detector::Ipv4 => Some(match_ipv4),
            Detector::Zip => Some(match_zip),
        };
        match scanner {
            Some(matcher) => Matches::Scan(Scan {
                text,
                pos: 0,
                matcher,
                digit_bounded: self.digit_bounded(),
            }),
            None => Matches::Empty,
        }
    }

    /// Convenience over [`Detector::find`] for `&str`.
    pub fn find_str<'t>(&'t self, text: &'t str) -> Matches<'t> {
        self.find(text.as_bytes())
    }

    /// Numbers (SSN, phone, card) end where the digits end, not at a word
    /// boundary: a derived value glued to letters (`'a' || ssn`, the error
    /// text `"123-45-6789x"`) still holds the number.
    fn digit_bounded(&self) -> bool {
        matches!(self, Detector::Ssn | Detector::Phone | Detector::Card)
    }

    /// Whether the detector can only match text that contains an ASCII digit
    /// (lets the caller skip digit-free values without scanning).
    fn needs_digit(&self) -> bool {
        !matches!(self, Detector::Email | Detector::Mrn(_))
    }
}

/// Tries to match at `start`; returns the end of the match.
type Matcher = fn(&[u8], usize) -> Option<usize>;

/// Iterator over one detector's matches.
pub enum Matches<'t> {
    Empty,
    Scan(Scan<'t>),
    Email(EmailScan<'t>),
    Regex(regex::bytes::Matches<'t, 't>),
}

impl Iterator for Matches<'_> {
    type Item = Range<usize>;
    fn next(&mut self) -> Option<Range<usize>> {
        match self {
            Matches::Empty => None,
            Matches::Scan(scan) => scan.next(),
            Matches::Email(scan) => scan.next(),
            Matches::Regex(it) => it.next().map(|m| m.range()),
        }
    }
}

/// Walks candidate start positions (ASCII bytes after a word boundary) and
/// asks the matcher.
pub struct Scan<'t> {
    text: &'t [u8],
    pos: usize,
    matcher: Matcher,
    /// Starts may follow a letter (not a digit): see [`Detector::digit_bounded`].
    digit_bounded: bool,
}

impl Iterator for Scan<'_> {
    type Item = Range<usize>;
    fn next(&mut self) -> Option<Range<usize>> {
        let b = self.text;
        while self.pos < b.len() {
            let start = self.pos;
            self.pos += 1;
            let c = b[start];
            if !(c.is_ascii_alphanumeric() || c == b'(' || c == b'+') {
                continue;
            }
            let glued = if self.digit_bounded {
                b[start].is_ascii_digit() && start > 0 && b[start - 1].is_ascii_digit()
            } else {
                false
            };
            if glued || (!self.digit_bounded && start > 0 && is_word(b[start - 1])) {
                continue;
            }
            if let Some(end) = (self.matcher)(b, start) {
                self.pos = end.max(start + 1);
                return Some(start..end);
            }
        }
        None
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn digit(b: &[u8], i: usize) -> Option<u8> {
    b.get(i).filter(|c| c.is_ascii_digit()).map(|c| c - b'0')
}

/// Reads exactly `n` digits at `i` as a number.
fn digits(b: &[u8], i: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for k in 0..n {
        v = v * 10 + u32::from(digit(b, i + k)?);
    }
    Some(v)
}

/// Reads 1..=max digits at `i`; returns (value, count).
fn digits_upto(b: &[u8], i: usize, max: usize) -> Option<(u32, usize)> {
    let mut v = 0u32;
    let mut n = 0;
    while n < max {
        match digit(b, i + n) {
            Some(d) => v = v * 10 + u32::from(d),
            None => break,
        }
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// The match must not run on into more of a word or number.
fn ends_cleanly(b: &[u8], end: usize) -> bool {
    match b.get(end) {
        None => true,
        Some(&c) if is_word(c) => false,
        // "123-45-6789-1" or "10.0.0.1.5" are something else.
        Some(b'-' | b'.' | b'/') => digit(b, end + 1).is_none(),
        Some(_) => true,
    }
}

/// [`ends_cleanly`] for numbers: a letter after the digits ends them.
fn number_ends(b: &[u8], end: usize) -> bool {
    match b.get(end) {
        None => true,
        Some(c) if c.is_ascii_digit() => false,
        Some(b'-' | b'.' | b'/') => digit(b, end + 1).is_none(),
        Some(_) => true,
    }
}

fn starts_cleanly(b: &[u8], start: usize) -> bool {
    // "1-123-45-6789" or "v1.2.3.4.5": preceded by a digit and separator.
    !(start >= 2 && matches!(b[start - 1], b'-' | b'.' | b'/') && b[start - 2].is_ascii_digit())
}

fn match_ssn(b: &[u8], s: usize) -> Option<usize> {
    if !starts_cleanly(b, s) {
        return None;
    }
    let area = digits(b, s, 3)?;
    let sep = *b.get(s + 3)?;
    if sep != b'-' && sep != b' ' {
        return None;
    }
    let group = digits(b, s + 4, 2)?;
    if *b.get(s + 6)? != sep {
        return None;
    }
    let serial = digits(b, s + 7, 4)?;
    let end = s + 11;
    let valid = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    (valid && number_ends(b, end)).then_some(end)
}

fn is_phone_sep(c: u8) -> bool {
    matches!(c, b'-' | b'.' | b' ')
}

/// The 10-digit NANP part: area code, exchange, line.
fn match_nanp(b: &[u8], mut p: usize) -> Option<usize> {
    let area;
    if b.get(p) == Some(&b'(') {
        area = digits(b, p + 1, 3)?;
        if b.get(p + 4) != Some(&b')') {
            return None;
        }
        p += 5;
        if b.get(p) == Some(&b' ') {
            p += 1;
        }
    } else {
        area = digits(b, p, 3)?;
        p += 3;
        if !is_phone_sep(*b.get(p)?) {
            return None;
        }
        p += 1;
    }
    let exchange = digits(b, p, 3)?;
    p += 3;
    if !is_phone_sep(*b.get(p)?) {
        return None;
    }
    p += 1;
    digits(b, p, 4)?;
    p += 4;
    let nanp = (200..1000).contains(&area) && (200..1000).contains(&exchange);
    (nanp && number_ends(b, p)).then_some(p)
}

fn match_phone(b: &[u8], s: usize) -> Option<usize> {
    if !starts_cleanly(b, s) {
        return None;
    }
    if let Some(end) = match_nanp(b, s) {
        return Some(end);
    }
    // Country code: "+1 ", "+1-", "1-", "1 " before the 10 digits.
    let mut p = s;
    if b.get(p) == Some(&b'+') {
        p += 1;
    }
    if b.get(p) != Some(&b'1') {
        return None;
    }
    p += 1;
    if is_phone_sep(*b.get(p)?) {
        p += 1;
    } else if b[s] != b'+' {
        return None;
    }
    match_nanp(b, p)
}

fn is_email_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// Longest local part (RFC 5321) looked at left of an `@`.
const EMAIL_LOCAL_MAX: usize = 64;

/// Anchors on each `@` and expands both ways, so the work per `@` is
/// bounded on the left and stops at the next `@` on the right: linear even
/// for adversarial values like `a.a.a.a...@`.
pub struct EmailScan<'t> {
    text: &'t [u8],
    pos: usize,
}

impl Iterator for EmailScan<'_> {
    type Item = Range<usize>;
    fn next(&mut self) -> Option<Range<usize>> {
        let b = self.text;
        while self.pos < b.len() {
            let at = self.pos + b[self.pos..].iter().position(|&c| c == b'@')?;
            self.pos = at + 1;
            let mut start = at;
            while start > 0 && at - start < EMAIL_LOCAL_MAX && is_email_local(b[start - 1]) {
                start -= 1;
            }
            // Local part starts on a letter or digit. One longer than the
            // limit is still masked (its last 64 characters and the domain).
            while start < at && !b[start].is_ascii_alphanumeric() {
                start += 1;
            }
            if start == at {
                continue;
            }
            if let Some(end) = email_domain_end(b, at + 1) {
                self.pos = end;
                return Some(start..end);
            }
        }
        None
    }
}

/// Domain after the `@`: labels of `[A-Za-z0-9-]` separated by dots, the
/// last one alphabetic and at least 2 long.
fn email_domain_end(b: &[u8], domain_start: usize) -> Option<usize> {
    let mut p = domain_start;
    let mut last_label_start = p;
    let mut dots = 0;
    while p < b.len() {
        let c = b[p];
        if c.is_ascii_alphanumeric() || c == b'-' {
            p += 1;
        } else if c == b'.' && p > last_label_start && b.get(p + 1).is_some_and(u8::is_ascii_alphanumeric) {
            dots += 1;
            p += 1;
            last_label_start = p;
        } else {
            break;
        }
    }
    let tld = &b[last_label_start..p];
    let ok = p > domain_start && dots > 0 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic);
    ok.then_some(p)
}

fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn match_card(b: &[u8], s: usize) -> Option<usize> {
    if !starts_cleanly(b, s) || !b[s].is_ascii_digit() {
        return None;
    }
    let mut seen = [0u8; 19];
    let mut n = 0usize;
    let mut p = s;
    let mut sep: Option<u8> = None;
    loop {
        match b.get(p) {
            Some(c) if c.is_ascii_digit() => {
                if n == seen.len() {
                    return None; // longer than any card number
                }
                seen[n] = c - b'0';
                n += 1;
                p += 1;
            }
            // One consistent separator kind, single, between digits.
            Some(&c) if (c == b' ' || c == b'-') && sep.is_none_or(|x| x == c) && digit(b, p + 1).is_some() => {
                sep = Some(c);
                p += 1;
            }
            _ => break,
        }
    }
    let ok = (13..=19).contains(&n) && number_ends(b, p) && luhn_valid(&seen[..n]);
    ok.then_some(p)
}

fn match_ipv4(b: &[u8], s: usize) -> Option<usize> {
    if s > 0 && b[s - 1] == b'.' {
        return None;
    }
    let mut p = s;
    for octet in 0..4 {
        if octet > 0 {
            if b.get(p) != Some(&b'.') {
                return None;
            }
            p += 1;
        }
        let (v, n) = digits_upto(b, p, 3)?;
        if v > 255 {
            return None;
        }
        p += n;
    }
    ends_cleanly(b, p).then_some(p)
}

fn match_zip(b: &[u8], s: usize) -> Option<usize> {
    if !starts_cleanly(b, s) || (s > 0 && matches!(b[s - 1], b'.' | b':' | b'-' | b'/' | b'$')) {
        return None;
    }
    digits(b, s, 5)?;
    let mut end = s + 5;
    if b.get(end) == Some(&b'-') && digits(b, end + 1, 4).is_some() {
        end += 5;
    }
    ends_cleanly(b, end).then_some(end)
}

fn valid_day_month(month: u32, day: u32) -> bool {
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

fn match_date(b: &[u8], s: usize) -> Option<usize> {
    if !starts_cleanly(b, s) {
        return None;
    }
    // Year first: YYYY-MM-DD or YYYY/MM/DD.
    if let Some(year) = digits(b, s, 4) {
        let sep = *b.get(s + 4)?;
        if sep != b'-' && sep != b'/' {
            return None;
        }
        let (month, mn) = digits_upto(b, s + 5, 2)?;
        let p = s + 5 + mn;
        if *b.get(p)? != sep {
            return None;
        }
        let (day, dn) = digits_upto(b, p + 1, 2)?;
        let end = p + 1 + dn;
        let ok = (1800..=2199).contains(&year) && valid_day_month(month, day) && ends_cleanly(b, end);
        return ok.then_some(end);
    }
    // US order: MM/DD/YYYY or M-D-YYYY.
    let (month, mn) = digits_upto(b, s, 2)?;
    let sep = *b.get(s + mn)?;
    if sep != b'-' && sep != b'/' {
        return None;
    }
    let (day, dn) = digits_upto(b, s + mn + 1, 2)?;
    let p = s + mn + 1 + dn;
    if *b.get(p)? != sep {
        return None;
    }
    let year = digits(b, p + 1, 4)?;
    let end = p + 5;
    let ok = (1800..=2199).contains(&year) && valid_day_month(month, day) && ends_cleanly(b, end);
    ok.then_some(end)
}

/// A set of detectors run together; overlapping matches are merged.
#[derive(Clone, Debug, Default)]
pub struct DetectorSet {
    detectors: Vec<Detector>,
    has_regex: bool,
    has_email: bool,
    has_digit_detector: bool,
}

impl DetectorSet {
    pub fn new(detectors: Vec<Detector>) -> Self {
        DetectorSet {
            has_regex: detectors.iter().any(|d| matches!(d, Detector::Mrn(_))),
            has_email: detectors.iter().any(|d| matches!(d, Detector::Email)),
            has_digit_detector: detectors.iter().any(Detector::needs_digit),
            detectors,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }

    pub fn kinds(&self) -> impl Iterator<Item = DetectorKind> + '_ {
        self.detectors.iter().map(Detector::kind)
    }

    /// Sorted, merged ranges of everything any detector found. Empty (and
    /// allocation-free) for text no detector can match.
    pub fn find_all(&self, text: &[u8]) -> Vec<Range<usize>> {
        if self.detectors.is_empty() || !self.may_match(text) {
            return Vec::new();
        }
        let mut found = self.find_plain(text);
        super::decoded::find(text, |decoded| !self.find_plain(decoded).is_empty(), &mut found);
        merge_ranges(found)
    }

    /// What the detectors find in `text` as it is (no decoding).
    fn find_plain(&self, text: &[u8]) -> Vec<Range<usize>> {
        let mut found: Vec<Range<usize>> = Vec::new();
        for detector in &self.detectors {
            found.extend(detector.find(text));
        }
        found
    }

    /// Cheap pre-check: most detectors need a digit, email needs an `@`,
    /// an MRN regex can match anything; encoded PHI (hex, base64, escapes)
    /// needs a run long enough to hold a value.
    fn may_match(&self, text: &[u8]) -> bool {
        if self.has_regex || text.len() >= super::decoded::MIN_ENCODED {
            return true;
        }
        text.iter()
            .any(|&c| (self.has_digit_detector && c.is_ascii_digit()) || (self.has_email && c == b'@'))
    }
}

fn merge_ranges(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(d: &Detector, text: &str) -> Vec<String> {
        d.find_str(text).map(|r| text[r].to_string()).collect()
    }

    #[test]
    fn ssn_finds_dashed_and_spaced_and_rejects_invalid_areas() {
        assert_eq!(
            found(&Detector::Ssn, "ssn 123-45-6789, other 123 45 6789"),
            ["123-45-6789", "123 45 6789"]
        );
        assert!(
            found(
                &Detector::Ssn,
                "000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000"
            )
            .is_empty()
        );
        assert!(found(&Detector::Ssn, "123-45-67890 1123-45-6789 123-45-6789-2 123-45 6789").is_empty());
        // Glued to letters, a number is still one: derived values and the
        // errors that quote them (`'a' || ssn`, `"123-45-6789x"`).
        assert_eq!(
            found(&Detector::Ssn, "x123-45-6789 \"123-45-6789x\" a_123-45-6789_b"),
            ["123-45-6789", "123-45-6789", "123-45-6789"]
        );
        assert_eq!(found(&Detector::Phone, "tel555-234-5678ext"), ["555-234-5678"]);
    }

    #[test]
    fn phone_finds_us_formats() {
        let text =
            "call (555) 234-5678 or 555-234-5678, 555.234.5678, +1 555 234 5678, 1-555-234-5678, +15552345678? no";
        assert_eq!(
            found(&Detector::Phone, text),
            [
                "(555) 234-5678",
                "555-234-5678",
                "555.234.5678",
                "+1 555 234 5678",
                "1-555-234-5678"
            ]
        );
        // Not NANP (exchange starting with 1), SSN shape, dates.
        assert!(found(&Detector::Phone, "555-123-4567 123-45-6789 2024-01-15").is_empty());
    }

    #[test]
    fn email_finds_addresses_without_trailing_punctuation() {
        assert_eq!(
            found(
                &Detector::Email,
                "to: Jane.Doe+x@mail.example.org. cc bob@host.io; not a@b or @x.com"
            ),
            ["Jane.Doe+x@mail.example.org", "bob@host.io"]
        );
        // Overlapping finds are merged by DetectorSet.
        assert_eq!(
            found(&Detector::Email, "a@b.org@c.org x@@y.org"),
            ["a@b.org", "b.org@c.org"]
        );
        let long_local = "x".repeat(100) + "@example.org";
        assert_eq!(found(&Detector::Email, &long_local), ["x".repeat(64) + "@example.org"]);
    }

    #[test]
    fn adversarial_values_scan_in_linear_time() {
        let set = DetectorSet::new(vec![
            Detector::Ssn,
            Detector::Phone,
            Detector::Email,
            Detector::Date,
            Detector::Card,
            Detector::Ipv4,
            Detector::Zip,
        ]);
        let started = std::time::Instant::now();
        for unit in ["a.", "1-", "1.", "@a", "1 ", "a@b."] {
            let text = unit.repeat(100_000) + "@x";
            let _ = set.find_all(text.as_bytes());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn card_requires_luhn() {
        assert_eq!(
            found(
                &Detector::Card,
                "visa 4111 1111 1111 1111 mc 5500-0000-0000-0004 amex 378282246310005"
            ),
            ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"]
        );
        assert!(found(&Detector::Card, "4111 1111 1111 1112 and 12345678901234567890123").is_empty());
    }

    #[test]
    fn ipv4_checks_octets_and_edges() {
        assert_eq!(
            found(&Detector::Ipv4, "from 10.0.0.5 and 192.168.1.255."),
            ["10.0.0.5", "192.168.1.255"]
        );
        assert!(found(&Detector::Ipv4, "256.1.1.1 1.2.3 1.2.3.4.5 v1.2.3.4").is_empty());
    }

    #[test]
    fn zip_and_date() {
        assert_eq!(
            found(&Detector::Zip, "Boston MA 02115 or 02115-1234, id 123456"),
            ["02115", "02115-1234"]
        );
        assert_eq!(
            found(
                &Detector::Date,
                "born 1980-04-23, seen 04/23/1980 and 4-3-1980; not 2024-13-01 or 99/99/2000"
            ),
            ["1980-04-23", "04/23/1980", "4-3-1980"]
        );
    }

    #[test]
    fn mrn_uses_configured_pattern() {
        let d = Detector::Mrn(regex::bytes::Regex::new(r"(?i)\bMRN[-: ]?\d{6,10}\b").unwrap());
        assert_eq!(found(&d, "patient mrn:00123456 seen"), ["mrn:00123456"]);
    }

    #[test]
    fn set_merges_overlaps_and_skips_digit_free_text() {
        let set = DetectorSet::new(vec![Detector::Ssn, Detector::Zip, Detector::Phone]);
        assert!(set.find_all(b"no digits here").is_empty());
        let text = "a 123-45-6789 b 02115";
        let ranges = set.find_all(text.as_bytes());
        let parts: Vec<&str> = ranges.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(parts, ["123-45-6789", "02115"]);
    }

    #[test]
    fn garbage_never_panics_and_ranges_are_char_boundaries() {
        let all = DetectorSet::new(vec![
            Detector::Ssn,
            Detector::Phone,
            Detector::Email,
            Detector::Date,
            Detector::Card,
            Detector::Ipv4,
            Detector::Zip,
        ]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = "0123456789-. /()+@a_é\u{1F600}x\n";
        let chars: Vec<char> = alphabet.chars().collect();
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(chars[(seed % chars.len() as u64) as usize]);
            }
            for r in all.find_all(s.as_bytes()) {
                assert!(s.is_char_boundary(r.start) && s.is_char_boundary(r.end) && r.start < r.end);
            }
        }
    }
}
