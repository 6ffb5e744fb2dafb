//! The Kubernetes channel protocols of exec and attach over WebSocket
//! (`channel.k8s.io` up to `v5.channel.k8s.io`): each binary message's
//! first byte names its channel — 0 stdin, 1 stdout, 2 stderr, 3 the
//! error/status channel (JSON from v4), 4 terminal resize (JSON), and in
//! v5 255 "close channel N". Output channels go through a line masker
//! each and are re-framed as messages of their own; stdin and resizes pass
//! to the server as the client framed them. The recording's input is the
//! lines typed, read back from stdin and their echo (`audit::typed`): raw
//! keystrokes, a password among them, are never recorded.
use std::time::Instant;

use super::websocket::{Frame, Opcode, encode};
use crate::{
    audit::{
        cast::Recorder,
        typed::{Line, TypedLines},
    },
    mask::{Masker, stream::StreamMasker},
};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// The status message (and a resize message) is assembled whole; bound.
const MAX_MESSAGE: usize = 64 * 1024;

/// The subprotocols whose messages are binary, channel byte first. The
/// base64 variants (text frames) are not relayed.
pub fn is_binary_channel_protocol(name: &str) -> bool {
    matches!(
        name,
        "channel.k8s.io" | "v2.channel.k8s.io" | "v3.channel.k8s.io" | "v4.channel.k8s.io" | "v5.channel.k8s.io"
    )
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("a text frame (only binary channel messages are relayed)")]
    Text,
    #[error("a message without a channel byte")]
    NoChannel,
    #[error("the {0} wrote on channel {1}")]
    Channel(&'static str, u8),
    #[error("a status or resize message over {MAX_MESSAGE} bytes")]
    TooLong,
}

/// One exec/attach stream pair: what each side's frames become.
pub struct Channels {
    masker: Masker,
    stdout: StreamMasker,
    stderr: StreamMasker,
    /// stdin read back into lines for the recording (the server gets it
    /// as sent).
    typed: TypedLines,
    pub recorder: Option<Recorder>,
    /// The channel of each side's fragmented message in progress.
    server_channel: Option<u8>,
    client_channel: Option<u8>,
    status: Vec<u8>,
    resize: Vec<u8>,
    /// `exit:N` from the status channel, or `failure` for another status.
    pub exit: Option<String>,
    /// Payload bytes written to each side.
    pub to_client: u64,
    pub to_server: u64,
}

impl Channels {
    pub fn new(masker: Masker, recorder: Option<Recorder>) -> Channels {
        Channels {
            stdout: StreamMasker::new(masker.clone()),
            stderr: StreamMasker::new(masker.clone()),
            typed: TypedLines::default(),
            masker,
            recorder,
            server_channel: None,
            client_channel: None,
            status: Vec::new(),
            resize: Vec::new(),
            exit: None,
            to_client: 0,
            to_server: 0,
        }
    }

    /// Values masked in the output so far.
    pub fn masked(&self) -> u64 {
        self.stdout.masked + self.stderr.masked
    }

    /// A partial line waits in a masker.
    pub fn has_pending(&self) -> bool {
        self.stdout.has_pending() || self.stderr.has_pending() || self.typed.has_pending()
    }

    /// A server frame: what goes to the client is appended to `out`.
    pub fn server_frame(&mut self, frame: Frame, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let (channel, data, first) = match frame.opcode {
            Opcode::Ping | Opcode::Pong => {
                out.extend(encode(true, frame.opcode, None, &frame.payload));
                return Ok(());
            }
            Opcode::Close => {
                self.flush(out);
                out.extend(encode(true, Opcode::Close, None, &frame.payload));
                return Ok(());
            }
            Opcode::Text => return Err(ChannelError::Text),
            Opcode::Binary => {
                let (&channel, data) = frame.payload.split_first().ok_or(ChannelError::NoChannel)?;
                (channel, data, true)
            }
            Opcode::Continuation => (
                self.server_channel.ok_or(ChannelError::NoChannel)?,
                &frame.payload[..],
                false,
            ),
        };
        self.server_channel = (!frame.fin).then_some(channel);
        match channel {
            STDOUT | STDERR if data.is_empty() && first => {
                // The server's "stream open" message: passed as it is.
                self.message(channel, &[], out);
            }
            STDOUT => {
                let lines = self.typed.output(data);
                self.record_lines(lines);
                let masked = self.stdout.push(data);
                self.output(STDOUT, &masked, out);
            }
            STDERR => {
                let masked = self.stderr.push(data);
                self.output(STDERR, &masked, out);
            }
            ERROR => {
                if self.status.len() + data.len() > MAX_MESSAGE {
                    return Err(ChannelError::TooLong);
                }
                self.status.extend_from_slice(data);
                if frame.fin {
                    self.flush(out);
                    let status = std::mem::take(&mut self.status);
                    self.exit = exit_of(&status);
                    let masked = self.masker.mask_free_bytes(&status).into_owned();
                    self.message(ERROR, &masked, out);
                }
            }
            CLOSE => {
                self.flush(out);
                self.message(CLOSE, data, out);
            }
            other => return Err(ChannelError::Channel("server", other)),
        }
        Ok(())
    }

    /// A client frame: passed to the server (appended to `out`) with the
    /// client's own framing and masking key; stdin and resizes recorded.
    pub fn client_frame(&mut self, frame: Frame, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let wire = encode(frame.fin, frame.opcode, frame.mask, &frame.payload);
        let (channel, data) = match frame.opcode {
            Opcode::Ping | Opcode::Pong | Opcode::Close => {
                out.extend(wire);
                return Ok(());
            }
            Opcode::Text => return Err(ChannelError::Text),
            Opcode::Binary => {
                let (&channel, data) = frame.payload.split_first().ok_or(ChannelError::NoChannel)?;
                (channel, data)
            }
            Opcode::Continuation => (self.client_channel.ok_or(ChannelError::NoChannel)?, &frame.payload[..]),
        };
        self.client_channel = (!frame.fin).then_some(channel);
        match channel {
            STDIN => self.typed.input(data),
            RESIZE => {
                if self.resize.len() + data.len() > MAX_MESSAGE {
                    return Err(ChannelError::TooLong);
                }
                self.resize.extend_from_slice(data);
                if frame.fin {
                    let size = std::mem::take(&mut self.resize);
                    if let (Some((cols, rows)), Some(r)) = (size_of(&size), &mut self.recorder) {
                        r.resize(cols, rows);
                    }
                }
            }
            CLOSE => {}
            other => return Err(ChannelError::Channel("client", other)),
        }
        self.to_server += data.len() as u64;
        out.extend(wire);
        Ok(())
    }

    /// Sends what the maskers hold back (output paused, a stream closed,
    /// the status arrived).
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let stdout = self.stdout.flush();
        self.output(STDOUT, &stdout, out);
        let stderr = self.stderr.flush();
        self.output(STDERR, &stderr, out);
        let lines = self.typed.expired(Instant::now(), false);
        self.record_lines(lines);
    }

    /// The end of the stream: lines still waiting for their echo are
    /// recorded as unechoed.
    pub fn end(&mut self) {
        let lines = self.typed.expired(Instant::now(), true);
        self.record_lines(lines);
    }

    fn record_lines(&mut self, lines: Vec<Line>) {
        let Some(r) = &mut self.recorder else {
            return;
        };
        for line in lines {
            let text = self.masker.mask_free_text(&line.shown()).into_owned();
            r.input(format!("{text}\r").as_bytes());
        }
    }

    fn output(&mut self, channel: u8, masked: &[u8], out: &mut Vec<u8>) {
        if masked.is_empty() {
            return;
        }
        if let Some(r) = &mut self.recorder {
            r.output(masked);
        }
        self.message(channel, masked, out);
    }

    /// One whole binary message on `channel`, server → client.
    fn message(&mut self, channel: u8, data: &[u8], out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(data.len() + 1);
        payload.push(channel);
        payload.extend_from_slice(data);
        self.to_client += data.len() as u64;
        out.extend(encode(true, Opcode::Binary, None, &payload));
    }
}

/// `exit:N` of a v4+ status (`Success`, or `NonZeroExitCode` with its
/// `ExitCode` cause), `failure` of another one.
fn exit_of(status: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(status).ok()?;
    if v["status"] == "Success" {
        return Some("exit:0".into());
    }
    let code = v["details"]["causes"].as_array().and_then(|causes| {
        causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse::<i64>().ok())
    });
    Some(code.map_or_else(|| "failure".to_owned(), |c| format!("exit:{c}")))
}

/// Columns and rows of a resize message (`{"Width":80,"Height":24}`).
fn size_of(message: &[u8]) -> Option<(u32, u32)> {
    let v: serde_json::Value = serde_json::from_slice(message).ok()?;
    let dim = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
    Some((dim("Width")?, dim("Height")?))
}

#[cfg(test)]
mod tests {
    use super::{super::websocket::Decoder, *};
    use crate::mask::MaskConfig;

    fn channels() -> Channels {
        Channels::new(Masker::new(&MaskConfig::default(), None).unwrap(), None)
    }

    fn binary(fin: bool, payload: &[u8]) -> Frame {
        Frame {
            fin,
            opcode: Opcode::Binary,
            mask: None,
            payload: payload.to_vec(),
        }
    }

    /// The messages (channel, data) in what was written to the client.
    fn messages(wire: &[u8]) -> Vec<(u8, String)> {
        let mut d = Decoder::new(false);
        d.push(wire);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            assert!(f.fin && f.mask.is_none());
            out.push((f.payload[0], String::from_utf8_lossy(&f.payload[1..]).into_owned()));
        }
        out
    }

    #[test]
    fn output_is_masked_across_frames_and_fragments_and_the_status_gives_the_exit() {
        let mut c = channels();
        let mut out = Vec::new();
        c.server_frame(binary(true, b"\x01"), &mut out).unwrap();
        c.server_frame(binary(true, b"\x01ssn 123-4"), &mut out).unwrap();
        c.server_frame(binary(false, b"\x015-6789\nnext"), &mut out).unwrap();
        let cont = Frame {
            fin: true,
            opcode: Opcode::Continuation,
            mask: None,
            payload: b" line\n".to_vec(),
        };
        c.server_frame(cont, &mut out).unwrap();
        c.server_frame(binary(true, b"\x02err 321-54-9876 no newline"), &mut out)
            .unwrap();
        let status = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        let mut msg = vec![ERROR];
        msg.extend_from_slice(status);
        c.server_frame(binary(true, &msg), &mut out).unwrap();
        let got = messages(&out);
        assert_eq!(got[0], (1, String::new()));
        assert_eq!(got[1], (1, "ssn ***\n".into()));
        assert_eq!(got[2], (1, "next line\n".into()));
        assert_eq!(got[3], (2, "err *** no newline".into()));
        assert_eq!(got[4].0, 3);
        assert_eq!(c.exit.as_deref(), Some("exit:3"));
        assert_eq!(c.masked(), 2);
        let all: String = got.iter().map(|(_, s)| s.as_str()).collect();
        assert!(!all.contains("123-45-6789") && !all.contains("321-54-9876"), "{all}");
    }

    #[test]
    fn client_frames_pass_with_their_mask_and_unknown_channels_are_refused() {
        let mut c = channels();
        let mut out = Vec::new();
        let stdin = Frame {
            fin: true,
            opcode: Opcode::Binary,
            mask: Some([9, 8, 7, 6]),
            payload: b"\x00hello\n".to_vec(),
        };
        c.client_frame(stdin.clone(), &mut out).unwrap();
        assert_eq!(out, encode(true, Opcode::Binary, Some([9, 8, 7, 6]), b"\x00hello\n"));
        assert_eq!(c.to_server, 6);
        let mut bad = stdin;
        bad.payload = b"\x07x".to_vec();
        assert_eq!(c.client_frame(bad, &mut out), Err(ChannelError::Channel("client", 7)));
        assert_eq!(
            c.server_frame(binary(true, b"\x09x"), &mut out),
            Err(ChannelError::Channel("server", 9))
        );
        let text = Frame {
            fin: true,
            opcode: Opcode::Text,
            mask: None,
            payload: b"1aGk=".to_vec(),
        };
        assert_eq!(c.server_frame(text, &mut out), Err(ChannelError::Text));
        assert_eq!(
            c.server_frame(binary(true, b""), &mut out),
            Err(ChannelError::NoChannel)
        );
    }

    #[test]
    fn statuses_and_sizes_are_read() {
        assert_eq!(exit_of(br#"{"status":"Success"}"#).as_deref(), Some("exit:0"));
        assert_eq!(
            exit_of(br#"{"status":"Failure","reason":"InternalError"}"#).as_deref(),
            Some("failure")
        );
        assert_eq!(exit_of(b"not json"), None);
        assert_eq!(size_of(br#"{"Width":120,"Height":40}"#), Some((120, 40)));
        assert_eq!(size_of(br#"{"Width":-1,"Height":40}"#), None);
    }
}
