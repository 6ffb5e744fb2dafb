//! Any byte stream as an SFTP client's and a server's packets, cut at
//! random points: framing, request and reply decoding never panic, a
//! framed packet is exactly its length prefix plus four bytes, every
//! path a request names resolves to one absolute, normal path, and the
//! reply scanner (which skips data bodies) reads the replies the framer
//! and `reply` read (a data reply from its head on), and says a packet boundary exactly where the framer
//! ends a packet (loopgate puts its own packets there).
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopgate::protocols::ssh::{
    sftp::{Framer, ReplyScanner, Request, reply, request},
    sftp_path::resolve,
};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut framer = Framer::default();
    let mut scanner = ReplyScanner::default();
    let (mut framed, mut scanned) = (Vec::new(), Vec::new());
    let (mut ends, mut end) = (Vec::new(), 0);
    let mut scanning = true;
    for chunk in data.chunks(cut) {
        scanning = scanning && scanner.push(chunk, &mut scanned).is_ok();
        framer.push(chunk);
        loop {
            match framer.next_packet() {
                Ok(Some(packet)) => {
                    let len = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) as usize;
                    assert_eq!(packet.len(), len + 4);
                    end += packet.len();
                    ends.push(end);
                    if let Ok(Request::Path(op)) = request(&packet) {
                        for path in std::iter::once(&op.path).chain(op.to.as_ref()) {
                            let normal = resolve(Some("/home/u"), path).expect("a working directory is known");
                            assert!(normal.starts_with('/'));
                            assert!(!normal.contains("//") && !normal.contains("/./") && !normal.contains("/../"));
                            assert!(!normal.ends_with("/.") && !normal.ends_with("/.."));
                        }
                    }
                    framed.extend(reply(&packet));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    if scanning {
        // The scanner reports a reply it does not keep whole (DATA, ATTRS)
        // once its head is in, the framer once the packet is: they agree
        // but for a last packet the stream cut short.
        if framer.buffered().is_empty() {
            assert_eq!(framed, scanned);
        } else {
            assert!(scanned.starts_with(&framed) && scanned.len() <= framed.len() + 1);
        }
        // Stepped as the relay steps it: every boundary it reports is
        // the end of a framed packet.
        let mut stepped = ReplyScanner::default();
        let mut at = 0;
        while at < data.len() {
            let n = match stepped.to_boundary() {
                0 => 1,
                n => n,
            }
            .min(data.len() - at);
            if stepped.push(&data[at..at + n], &mut Vec::new()).is_err() {
                return;
            }
            at += n;
            if stepped.to_boundary() == 0 && at <= end {
                assert!(ends.contains(&at), "a boundary at {at}, packets end at {ends:?}");
            }
        }
    }
});
