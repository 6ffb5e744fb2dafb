//! Any text through the PHI detectors: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopgate::mask::{MaskConfig, Masker};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let masker = Masker::new(&MaskConfig::default(), None).expect("default masker");
        let _ = masker.mask_free_text(text);
    }
});
