//! Random extended-protocol sessions (Parse, Bind, Describe, Execute with
//! row limits, Close, Sync, Query, pipelined) through loopgate's real
//! frontend and backend against a model server: no DataRow that reaches
//! the client holds a raw PHI value.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loopgate::protocols::postgres::harness::Harness;

/// One session setup per process; each input is a fresh connection.
struct Shared(Harness);
// The harness runs each input to completion on its own current-thread
// runtime; libFuzzer calls from one thread.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

static HARNESS: OnceLock<Shared> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = &HARNESS.get_or_init(|| Shared(Harness::new())).0;
    if let Err(e) = harness.run(data) {
        panic!("{e}");
    }
});
