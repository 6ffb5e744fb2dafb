//! Any bytes, in any chunking, through the streaming JSON masker of each
//! API: never panics; what it passes whole is valid JSON again whenever
//! the input was, with as many documents; and a FHIR Patient's name never
//! comes out as it went in.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopgate::{
    mask::{MaskConfig, Masker},
    protocols::http::{
        config::Api,
        json::{JsonMasker, JsonRules},
    },
};

fn documents(bytes: &[u8]) -> Option<Vec<serde_json::Value>> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    let api = [Api::Fhir, Api::Kubernetes, Api::Json][usize::from(selector % 3)];
    let chunk = usize::from(selector / 3).max(1);
    let masker = Masker::new(&MaskConfig::default(), None).expect("default masker");
    let mut m = JsonMasker::new(
        masker,
        JsonRules {
            api,
            secrets_response: selector & 0x80 != 0,
        },
    );
    let mut out = Vec::new();
    let result = input
        .chunks(chunk)
        .try_for_each(|piece| m.feed(piece, &mut out))
        .and_then(|()| m.finish(&mut out));
    if result.is_err() {
        return;
    }
    let Some(before) = documents(input) else { return };
    let after = documents(&out)
        .unwrap_or_else(|| panic!("valid JSON in, invalid out: {}", String::from_utf8_lossy(&out)));
    assert_eq!(before.len(), after.len());
    if api == Api::Fhir {
        for (b, a) in before.iter().zip(&after) {
            if b["resourceType"] == "Patient" && b["name"].is_string() && b["name"] != "***" {
                assert_ne!(b["name"], a["name"]);
            }
        }
    }
});
