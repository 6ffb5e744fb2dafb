//! Any bytes as a request to the approvals API: parsing never panics, and
//! a parsed request respects the size limits.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loopgate::http;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if let Ok(request) = runtime().block_on(http::read_request(&mut input)) {
        assert!(request.body.len() <= http::MAX_BODY);
    }
});
