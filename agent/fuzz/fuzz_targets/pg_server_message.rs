//! Any bytes as one server message: decoding never panics.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use loopgate::protocols::postgres::frame;
use pgwire::messages::DecodeContext;

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode(BytesMut::from(data), &DecodeContext::default());
});
