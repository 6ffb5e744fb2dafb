//! Detector masking of text bodies (`text/*`, XML, form data) as they
//! stream: line by line, so a value is never split between two scans. A
//! line longer than [`MAX_LINE`] is scanned in pieces cut where no value
//! the detectors find crosses the cut, never inside a UTF-8 character,
//! and at a delimiter when one is near; the last [`OVERLAP`] bytes before
//! the cut point are carried into the next piece, so a value arriving
//! across it is seen whole.
use crate::mask::Masker;

use super::url;

/// A line longer than this is scanned in pieces.
const MAX_LINE: usize = 64 * 1024;
/// What a piece holds back for the next: longer than any value the
/// detectors find (a value longer still is masked as far as it was seen).
const OVERLAP: usize = 4 * 1024;
/// How far back from the cut point a delimiter is looked for, so an
/// encoded run (`a%40b.org`) is not split.
const DELIMITER_REACH: usize = 1024;

pub struct TextMasker {
    masker: Masker,
    carry: Vec<u8>,
    masked: u64,
}

impl TextMasker {
    pub fn new(masker: Masker) -> TextMasker {
        TextMasker {
            masker,
            carry: Vec::new(),
            masked: 0,
        }
    }

    pub fn masked(&self) -> u64 {
        self.masked
    }

    /// Masks the complete lines of what has come so far into `out`, and
    /// the safe part of a line longer than [`MAX_LINE`].
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let seen = self.carry.len();
        self.carry.extend_from_slice(input);
        // What is carried has no newline: only the new bytes are searched.
        if let Some(i) = self.carry[seen..].iter().rposition(|&b| b == b'\n').map(|i| i + seen) {
            let rest = self.carry.split_off(i + 1);
            let lines = std::mem::replace(&mut self.carry, rest);
            self.scan_into(&lines, out);
        }
        while self.carry.len() > MAX_LINE {
            let cut = self.safe_cut();
            let rest = self.carry.split_off(cut);
            let head = std::mem::replace(&mut self.carry, rest);
            self.scan_into(&head, out);
        }
    }

    /// The end of the body: the last line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.carry);
        self.scan_into(&rest, out);
    }

    /// Where a long line may be cut: `OVERLAP` before its end, moved back
    /// to the start of a detected value that crosses it, to a delimiter
    /// if one is near, and to a character boundary. Never 0.
    fn safe_cut(&self) -> usize {
        let carry = &self.carry;
        let ranges = self.masker.free_text_ranges(carry);
        // Back to the start of every detected value the cut is inside
        // (values overlap: until none holds it).
        let outside = |mut cut: usize| {
            while let Some(r) = ranges.iter().find(|r| r.start < cut && cut < r.end) {
                cut = r.start;
            }
            cut
        };
        let mut cut = outside(carry.len() - OVERLAP);
        let floor = cut.saturating_sub(DELIMITER_REACH);
        if let Some(i) = carry[floor..cut].iter().rposition(|b| b" \t\r&;,<>\"'".contains(b)) {
            // A delimiter may be inside a value (`123 45 6789`).
            cut = outside(floor + i + 1);
        }
        while cut > 0 && carry[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        if cut == 0 {
            // One detected value longer than the whole piece: masked as
            // one (what was seen of it), the rest scanned after it.
            return carry.len() - OVERLAP;
        }
        cut
    }

    fn scan_into(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        // Invalid UTF-8 is scanned as U+FFFD: nothing unscanned passes.
        let text = String::from_utf8_lossy(bytes);
        let masked = url::mask_text(&self.masker, &text);
        if let std::borrow::Cow::Owned(_) = &masked {
            self.masked += 1;
        }
        out.extend_from_slice(masked.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskConfig;

    fn masker() -> Masker {
        Masker::new(&MaskConfig::default(), None).unwrap()
    }

    #[test]
    fn values_split_between_chunks_are_found() {
        let mut t = TextMasker::new(masker());
        let mut out = Vec::new();
        for piece in ["log: ssn 123-4", "5-6789 seen\nnext line 078-05-", "1120\n", "tail"] {
            t.feed(piece.as_bytes(), &mut out);
        }
        t.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, "log: ssn *** seen\nnext line ***\ntail");
        assert_eq!(t.masked(), 2);
    }

    /// A line far longer than MAX_LINE, with multi-byte characters and
    /// values at every offset around the cuts, fed in every chunking:
    /// every value masked, the text otherwise intact and valid UTF-8.
    #[test]
    fn long_lines_are_cut_where_no_value_or_character_crosses() {
        let mut line = String::new();
        let mut values = 0;
        while line.len() < 5 * MAX_LINE {
            line.push_str(&"é✓x".repeat(7 + values % 13));
            // The last is glued to what follows, so a cut after it looks
            // back for a delimiter and finds the ones inside it.
            line.push_str([" 123-45-6789 ", " jane%40example.org ", " 123 45 6789"][values % 3]);
            values += 1;
        }
        let want = line
            .replace("123-45-6789", "***")
            .replace("jane%40example.org", "***")
            .replace("123 45 6789", "***");
        for chunk in [1, 7, 4096, MAX_LINE - 1, MAX_LINE + 3, line.len()] {
            let want = &want;
            let mut t = TextMasker::new(masker());
            let mut out = Vec::new();
            for piece in line.as_bytes().chunks(chunk) {
                t.feed(piece, &mut out);
                assert!(t.carry.len() <= MAX_LINE + chunk, "held {}", t.carry.len());
            }
            t.finish(&mut out);
            let out = String::from_utf8(out).expect("valid UTF-8");
            assert!(!out.contains('\u{fffd}'), "a character was split (chunk {chunk})");
            assert!(
                out == *want,
                "chunk {chunk}: {} bytes differ",
                out.len().abs_diff(want.len())
            );
        }
    }

    #[test]
    fn form_bodies_are_scanned_decoded() {
        let mut t = TextMasker::new(masker());
        let mut out = Vec::new();
        t.feed(b"name=x&ssn=123%2D45%2D6789&n=1", &mut out);
        t.finish(&mut out);
        assert_eq!(out, b"name=x&ssn=***&n=1");
    }
}
