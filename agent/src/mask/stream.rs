//! Masking of a remote command's output as it streams: the value detectors
//! run on whole lines, so a value split across SSH data packets is still
//! found (SSH data packets, Kubernetes exec frames). A line is held back until its newline arrives, up to a bound
//! ([`MAX_LINE`]); the relay flushes a partial line when output pauses
//! (a shell prompt), which is where a value typed slowly could be split.
use crate::mask::Masker;

/// The longest run without a newline that is held back; beyond it the
/// run is masked and sent as it is.
pub const MAX_LINE: usize = 64 * 1024;

/// One output stream (stdout or stderr) of one channel.
pub struct StreamMasker {
    masker: Masker,
    pending: Vec<u8>,
    /// Values masked so far.
    pub masked: u64,
}

impl StreamMasker {
    pub fn new(masker: Masker) -> Self {
        StreamMasker {
            masker,
            pending: Vec::new(),
            masked: 0,
        }
    }

    /// Takes `chunk` and returns what may be sent now, masked: every
    /// complete line, or everything when the held-back run grows past
    /// [`MAX_LINE`].
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let cut = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if self.pending.len() > MAX_LINE => self.pending.len(),
            None => return Vec::new(),
        };
        let rest = self.pending.split_off(cut);
        let ready = std::mem::replace(&mut self.pending, rest);
        self.mask(&ready)
    }

    /// Whether a partial line is held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Everything held back, masked (output paused or ended).
    pub fn flush(&mut self) -> Vec<u8> {
        let ready = std::mem::take(&mut self.pending);
        self.mask(&ready)
    }

    fn mask(&mut self, bytes: &[u8]) -> Vec<u8> {
        let masked = self.masker.mask_free_bytes(bytes);
        if let std::borrow::Cow::Owned(_) = masked {
            self.masked += 1;
        }
        masked.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskConfig;

    fn stream() -> StreamMasker {
        StreamMasker::new(Masker::new(&MaskConfig::default(), None).unwrap())
    }

    #[test]
    fn a_value_split_across_chunks_is_masked() {
        let mut s = stream();
        let mut out = s.push(b"id,ssn\n1,123-4");
        assert_eq!(out, b"id,ssn\n");
        out.extend(s.push(b"5-6789\n2,none"));
        assert!(s.has_pending());
        out.extend(s.flush());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("123-45-6789"), "{text}");
        assert!(text.starts_with("id,ssn\n1,") && text.ends_with("\n2,none"), "{text}");
        assert_eq!(s.masked, 1);
    }

    #[test]
    fn clean_and_binary_output_pass_unchanged_and_runs_are_bounded() {
        let mut s = stream();
        let binary: Vec<u8> = (0..=255u8).filter(|b| !b.is_ascii_digit()).chain([b'\n']).collect();
        assert_eq!(s.push(&binary), binary);
        let long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(s.push(&long).len(), MAX_LINE + 1);
        assert!(!s.has_pending());
        assert_eq!(s.masked, 0);
    }
}
