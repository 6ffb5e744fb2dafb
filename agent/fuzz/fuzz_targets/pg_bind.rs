//! Any bytes as a client's Bind body: decoding never panics, and what it
//! accepts is consistent (every value lies within the body).
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopgate::protocols::postgres::frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(bind) = frame::decode_bind(data) {
        let carried: usize = bind.parameters.iter().filter_map(|p| p.value).map(<[u8]>::len).sum();
        assert!(carried <= data.len());
    }
});
