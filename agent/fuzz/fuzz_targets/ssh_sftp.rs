//! Any byte stream as an SFTP client's and a server's packets, cut at
//! random points: framing, request and reply decoding never panic, and a
//! framed packet is exactly its length prefix plus four bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopgate::protocols::ssh::sftp::{Framer, operation, reply};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut framer = Framer::default();
    for chunk in data.chunks(cut) {
        framer.push(chunk);
        loop {
            match framer.next_packet() {
                Ok(Some(packet)) => {
                    let len = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) as usize;
                    assert_eq!(packet.len(), len + 4);
                    let _ = operation(&packet);
                    let _ = reply(&packet);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
