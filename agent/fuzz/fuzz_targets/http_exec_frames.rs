//! Any bytes, in any chunking, as either side of a Kubernetes exec over
//! WebSocket: the frame decoder and the channel relay never panic; what
//! they write to the other side is always valid framing again (server →
//! client unmasked, whole binary messages with a channel byte; client →
//! server masked with the client's key, the payloads unchanged).
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopgate::{
    mask::{MaskConfig, Masker},
    protocols::http::exec::{
        channels::Channels,
        websocket::{Decoder, Opcode},
    },
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    let from_client = selector & 1 == 1;
    let chunk = usize::from(selector >> 1).max(1);
    let masker = Masker::new(&MaskConfig::default(), None).expect("default masker");
    let mut channels = Channels::new(masker, None);
    let mut decoder = Decoder::new(from_client);
    let mut out = Vec::new();
    let mut payloads = Vec::new();
    'feed: for piece in input.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let payload = frame.payload.clone();
                    let passed = if from_client {
                        channels.client_frame(frame, &mut out)
                    } else {
                        channels.server_frame(frame, &mut out)
                    };
                    if passed.is_err() {
                        break 'feed;
                    }
                    payloads.push(payload);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    if !from_client {
        channels.flush(&mut out);
    }
    let mut again = Decoder::new(from_client);
    again.push(&out);
    let mut written = Vec::new();
    while let Some(frame) = again.next_frame().expect("loopgate wrote a malformed frame") {
        if from_client {
            assert!(frame.mask.is_some());
        } else {
            assert!(frame.mask.is_none() && frame.fin);
            if frame.opcode == Opcode::Binary {
                assert!(!frame.payload.is_empty(), "a message without its channel");
            }
        }
        written.push(frame.payload);
    }
    if from_client {
        assert_eq!(written, payloads, "client frames changed on the way");
    }
});
