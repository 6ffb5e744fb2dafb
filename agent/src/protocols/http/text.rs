//! Detector masking of text bodies (`text/*`, XML, form data) as they
//! stream: line by line, so a value is never split between two scans
//! unless a line is longer than [`MAX_LINE`].
use crate::mask::Masker;

/// A line longer than this is scanned in pieces.
const MAX_LINE: usize = 64 * 1024;

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

    /// Masks the complete lines of what has come so far into `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.carry.extend_from_slice(input);
        let end = match self.carry.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if self.carry.len() > MAX_LINE => self.carry.len(),
            None => return,
        };
        let rest = self.carry.split_off(end);
        let lines = std::mem::replace(&mut self.carry, rest);
        self.scan_into(&lines, out);
    }

    /// The end of the body: the last line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.carry);
        self.scan_into(&rest, out);
    }

    fn scan_into(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        // Invalid UTF-8 is scanned as U+FFFD: nothing unscanned passes.
        let text = String::from_utf8_lossy(bytes);
        let masked = self.masker.mask_free_text(&text);
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

    #[test]
    fn values_split_between_chunks_are_found() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let mut t = TextMasker::new(masker);
        let mut out = Vec::new();
        for piece in ["log: ssn 123-4", "5-6789 seen\nnext line 078-05-", "1120\n", "tail"] {
            t.feed(piece.as_bytes(), &mut out);
        }
        t.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, "log: ssn *** seen\nnext line ***\ntail");
        assert_eq!(t.masked(), 2);
    }
}
