//! Kubernetes exec, attach and port-forward after the upgrade: what the
//! relay does with the two upgraded streams.
//!
//! - exec / attach over WebSocket with a binary channel protocol
//!   (`channels`, framed by `websocket`): every frame parsed, stdout,
//!   stderr and the status masked and re-framed, the session recorded as
//!   asciicast (masked output, stdin, resizes) like an SSH exec. A
//!   malformed frame ends the stream (a Close 1002 to the client) and its
//!   result says so.
//! - port-forward: relayed byte for byte and counted per direction, not
//!   masked (the forwarded bytes are another protocol's; like an SSH
//!   transfer they are governed by the decision on the request).
//! - exec / attach over SPDY: refused before the decision (not parsed
//!   yet, so it could not be masked); kubectl's SPDY retry of a refused
//!   WebSocket exec gets that refusal's answer (`fallback`).
pub mod channels;
pub mod fallback;
pub mod websocket;

use std::{
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::Notify,
};

use self::{
    channels::{ChannelError, Channels},
    websocket::{Decoder, Frame, FrameError, Opcode, close_payload, encode},
};
use crate::{
    audit::{
        Outcome,
        cast::{Header, Recorder, Recordings},
        recording::RecordingRef,
    },
    enforce::Admitted,
    mask::Masker,
    policy::{HttpRequest, KubernetesRequest},
    session::Session,
};

/// How long a partial output line waits for its end before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(25);
/// How long the server may take to close once the client has.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;

/// What an admitted upgrade carries, as the relay treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streams {
    /// exec / attach: parsed, masked, recorded.
    Channels,
    /// port-forward: counted, not masked.
    Bytes,
}

/// The rule id of an upgrade refused because the relay cannot carry it.
pub const UNRELAYABLE_RULE: &str = "loopgate.upgrade_not_relayed";

/// Why an upgrade request (or CONNECT) cannot be relayed, before it is
/// decided: only Kubernetes' streaming subresources over HTTP/1.1, and
/// exec/attach over WebSocket only. Any other upgrade (h2c, a WebSocket to
/// a FHIR server) would carry requests and PHI past the decision, the
/// record and the masker; exec over SPDY is not parsed, so not masked.
pub fn unrelayable<B>(req: &http::Request<B>, kubernetes: Option<&KubernetesRequest>) -> Option<&'static str> {
    let upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|p| p.trim().to_ascii_lowercase());
    let verb = kubernetes.map_or("", |k| k.verb.as_str());
    let websocket = upgrade.as_deref() == Some("websocket");
    let spdy = upgrade.as_deref().is_some_and(|p| p.starts_with("spdy/"));
    if req.method() == http::Method::CONNECT
        || req.version() != http::Version::HTTP_11
        || !matches!(verb, "exec" | "attach" | "portforward")
        || !(websocket || spdy)
    {
        return Some(
            "only Kubernetes exec, attach and port-forward are relayed as an upgrade \
             (HTTP/1.1, WebSocket or SPDY); nothing was sent",
        );
    }
    if verb != "portforward" && !websocket {
        return Some(
            "exec and attach are relayed over WebSocket only (kubectl 1.30 or later), \
             where their output is masked and recorded; nothing was sent",
        );
    }
    None
}

impl Streams {
    /// The treatment of an upgraded request of `verb` (one `unrelayable`
    /// passed).
    pub fn of(verb: &str) -> Streams {
        match verb {
            "portforward" => Streams::Bytes,
            _ => Streams::Channels,
        }
    }

    /// Whether the server's answer is one the relay can read: for
    /// exec/attach, a binary channel subprotocol and no extension.
    pub fn accepts(self, headers: &http::HeaderMap) -> bool {
        if self == Streams::Bytes {
            return true;
        }
        let protocol = headers
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        channels::is_binary_channel_protocol(protocol.trim())
            && !headers.contains_key(http::header::SEC_WEBSOCKET_EXTENSIONS)
    }
}

/// How a relayed upgrade ended, for its `command_result`.
#[derive(Debug, Default)]
pub struct Ended {
    pub status: &'static str,
    /// `exit:N`, `malformed: ...` or the 101.
    pub code: Option<String>,
    pub to_client: u64,
    pub to_server: u64,
    pub masked: Option<u64>,
    pub recording: Option<RecordingRef>,
}

impl Ended {
    pub fn failed(reason: String) -> Ended {
        tracing::info!(error = %reason, "upgrade ended early");
        Ended {
            status: "error",
            code: Some("101".into()),
            ..Ended::default()
        }
    }
}

/// Records the relay's end as the request's result, the recording (if
/// any) named in its parameters.
pub async fn finish(session: &Session, admitted: &Admitted, ended: Ended) {
    session.add_to_client(ended.to_client as usize);
    session.add_to_server(ended.to_server as usize);
    let outcome = Outcome {
        status: Some(ended.status.to_owned()),
        bytes_to_client: Some(ended.to_client),
        bytes_to_server: Some(ended.to_server),
        error_code: ended.code.or_else(|| Some("101".into())),
        masked_count: ended.masked,
        ..Outcome::default()
    };
    let mut result = admitted.result(session, outcome);
    if let (Some(r), Some(command)) = (ended.recording, result.command.as_mut()) {
        command.parameters = r.to_parameters();
    }
    if let Err(e) = session.audit.append(result).await {
        tracing::error!(session = %session.id, error = %e, "could not record a command's result");
    }
}

/// Recording file numbers: unique in this agent's life (a session may run
/// several execs; the session id makes them unique across restarts).
static NEXT_RECORDING: AtomicU32 = AtomicU32::new(1);

/// Starts the recording of an exec/attach when the target records.
pub fn start_recording(recordings: Option<&Recordings>, session: &Session, title: &str) -> Option<Recorder> {
    let settings = recordings?;
    let header = Header {
        cols: 80,
        rows: 24,
        term: None,
        title,
    };
    let number = NEXT_RECORDING.fetch_add(1, Ordering::Relaxed);
    match Recorder::create(&settings.audit_dir, session.id, number, settings.max_bytes, &header) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(session = %session.id, error = %e, "cannot start an exec recording");
            None
        }
    }
}

/// A recording's title: what ran where, the command's words through the
/// detectors (the recorded request text keeps only parameter names).
pub fn title(masker: &Masker, action: &HttpRequest) -> String {
    let k = action.kubernetes.as_ref();
    let words = k.map_or(&[][..], |k| k.command.as_slice());
    let container = k.and_then(|k| k.container.as_deref());
    let mut t = format!(
        "kubectl {} {}/{}",
        k.map_or("exec", |k| k.verb.as_str()),
        k.and_then(|k| k.namespace.as_deref()).unwrap_or("-"),
        k.and_then(|k| k.name.as_deref()).unwrap_or("-"),
    );
    if let Some(c) = container {
        t.push_str(&format!(" -c {c}"));
    }
    if !words.is_empty() {
        t.push_str(" -- ");
        t.push_str(&words.join(" "));
    }
    masker.mask_free_text(&t).into_owned()
}

/// Ends the client's side with a WebSocket Close of `code` and `reason`.
async fn close_client<C: AsyncWrite + Unpin>(client: &mut C, code: u16, reason: &str) {
    let close = encode(true, Opcode::Close, None, &close_payload(code, reason));
    let _ = client.write_all(&close).await;
    let _ = client.shutdown().await;
}

/// The status of an exec whose recording could not be written.
const RECORDING_FAILED: &str = "recording_failed";

/// Relays an upgraded stream pair as `streams` says, until both are done.
pub async fn relay<C, S>(client: C, server: S, streams: Streams, masker: Masker, recorder: Option<Recorder>) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    match streams {
        Streams::Bytes => relay_bytes(client, server).await,
        Streams::Channels => relay_channels(client, server, Channels::new(masker, recorder)).await,
    }
}

/// Copies both ways until both sides have ended, counting what passed
/// (also when a side ends abruptly, e.g. TLS without close_notify). The
/// directions run apart: one side's full window never stalls the other
/// (a client that writes without reading while the server writes back).
async fn relay_bytes<C, S>(client: C, server: S) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let (mut to_server, mut to_client) = (0u64, 0u64);
    let clean = {
        let up = pump(client_read, server_write, &mut to_server);
        let down = pump(server_read, client_write, &mut to_client);
        tokio::pin!(up, down);
        // A direction that fails ends the relay; one that ends cleanly
        // waits for the other.
        tokio::select! {
            ok = &mut up => ok && down.await,
            ok = &mut down => ok && up.await,
        }
    };
    Ended {
        status: if clean { "ok" } else { "closed" },
        to_client,
        to_server,
        ..Ended::default()
    }
}

/// Copies `from` to `to` until `from` ends (then shuts `to` down),
/// counting into `copied`; whether it ended cleanly.
async fn pump<R, W>(mut from: R, mut to: W, copied: &mut u64) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return true;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return false;
                }
                *copied += n as u64;
            }
            Err(_) => return false,
        }
    }
}

/// Which side sent a malformed frame, and what was wrong.
enum Broken {
    Frame(&'static str, FrameError),
    Channel(ChannelError),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Frame(side, e) => write!(f, "malformed: {side}: {e}"),
            Broken::Channel(e) => write!(f, "malformed: {e}"),
        }
    }
}

/// How one direction of an exec stream ended.
enum Direction {
    /// Its reader ended (EOF or a reset) and the other side was told.
    Ended,
    /// A write to the other side failed.
    WriteFailed,
    Broken(Broken),
    /// The recording could not hold what this direction carried: it was
    /// not relayed.
    RecordingFailed,
}

/// The stream state both directions share. Held only between awaits.
fn lock(ch: &Mutex<Channels>) -> MutexGuard<'_, Channels> {
    ch.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parses and re-frames both directions, each in its own loop: a side
/// that does not read (a server whose output window is full while
/// `kubectl exec -i pod -- cat < big` keeps writing stdin) stalls only the
/// direction writing to it. Ends when the server's side ends (or the
/// client's, after a grace for the server to close), at the first
/// malformed frame, or when the recording fails.
async fn relay_channels<C, S>(client: C, server: S, ch: Channels) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let ch = Mutex::new(ch);
    // stdin the server has not echoed yet waits in `ch` too: the output
    // direction's flush timer is armed for it.
    let input_waits = Notify::new();
    let end = {
        let up = client_to_server(&mut client_read, &mut server_write, &ch, &input_waits);
        let down = server_to_client(&mut server_read, &mut client_write, &ch, &input_waits);
        tokio::pin!(up, down);
        tokio::select! {
            d = &mut down => d,
            u = &mut up => match u {
                Direction::Ended => tokio::time::timeout(CLOSE_GRACE, &mut down)
                    .await
                    .unwrap_or(Direction::Ended),
                other => other,
            },
        }
    };
    let mut ch = ch.into_inner().unwrap_or_else(|p| p.into_inner());
    let recording_failed = matches!(end, Direction::RecordingFailed);
    let broken = match end {
        Direction::RecordingFailed => {
            close_client(
                &mut client_write,
                1011,
                "loopgate: the session recording cannot be written",
            )
            .await;
            let _ = server_write.shutdown().await;
            None
        }
        Direction::Broken(b) => {
            tracing::warn!(error = %b, "exec stream ended at a malformed frame");
            close_client(&mut client_write, 1002, "loopgate: malformed stream").await;
            Some(b)
        }
        Direction::Ended | Direction::WriteFailed => None,
    };
    let status = match (&broken, ch.exit.as_deref()) {
        _ if recording_failed => RECORDING_FAILED,
        (Some(_), _) => "error",
        (None, Some("exit:0")) => "ok",
        (None, Some(_)) => "failed",
        (None, None) => "closed",
    };
    let code = broken.as_ref().map(Broken::to_string).or_else(|| ch.exit.clone());
    ch.end();
    let recording = ch.recorder.take().and_then(Recorder::finish);
    Ended {
        status,
        code,
        to_client: ch.to_client,
        to_server: ch.to_server,
        masked: Some(ch.masked()),
        recording,
    }
}

/// Whether the recording has failed (what `ch` produced is not relayed).
fn recording_failed(ch: &Channels) -> bool {
    ch.recorder.as_ref().is_some_and(Recorder::failed)
}

/// stdin and resizes: each client frame parsed, recorded, passed on as the
/// client framed it. The client's end shuts the server's write side.
async fn client_to_server<R, W>(client: &mut R, server: &mut W, ch: &Mutex<Channels>, input_waits: &Notify) -> Direction
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = Decoder::new(true);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    loop {
        let n = match client.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = server.shutdown().await;
                return Direction::Ended;
            }
            Ok(n) => n,
        };
        decoder.push(&buf[..n]);
        out.clear();
        let broken = {
            let mut ch = lock(ch);
            let broken = frames(&mut decoder, "client", |f, out| ch.client_frame(f, out), &mut out);
            if recording_failed(&ch) {
                return Direction::RecordingFailed;
            }
            if ch.has_pending() {
                input_waits.notify_one();
            }
            broken
        };
        if !out.is_empty() && server.write_all(&out).await.is_err() {
            return Direction::WriteFailed;
        }
        if let Some(b) = broken {
            return Direction::Broken(b);
        }
    }
}

/// stdout, stderr and the status: each server frame parsed, masked,
/// recorded and re-framed. A partial line is sent once it has waited
/// `FLUSH_AFTER` for its end. The server's end ends the client's side.
async fn server_to_client<R, W>(server: &mut R, client: &mut W, ch: &Mutex<Channels>, input_waits: &Notify) -> Direction
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = Decoder::new(false);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    let flush = tokio::time::sleep(FLUSH_AFTER);
    tokio::pin!(flush);
    let mut armed = false;
    loop {
        out.clear();
        let mut broken = None;
        tokio::select! {
            r = server.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let failed = {
                        let mut ch = lock(ch);
                        ch.flush(&mut out);
                        recording_failed(&ch)
                    };
                    if failed {
                        return Direction::RecordingFailed;
                    }
                    let _ = client.write_all(&out).await;
                    let _ = client.shutdown().await;
                    return Direction::Ended;
                }
                Ok(n) => {
                    decoder.push(&buf[..n]);
                    let mut ch = lock(ch);
                    broken = frames(&mut decoder, "server", |f, out| ch.server_frame(f, out), &mut out);
                }
            },
            _ = &mut flush, if armed => {
                armed = false;
                lock(ch).flush(&mut out);
            }
            _ = input_waits.notified() => {}
        }
        let pending = {
            let ch = lock(ch);
            if recording_failed(&ch) {
                return Direction::RecordingFailed;
            }
            ch.has_pending()
        };
        if pending && !armed {
            flush.as_mut().reset(tokio::time::Instant::now() + FLUSH_AFTER);
        }
        armed = pending;
        if !out.is_empty() && client.write_all(&out).await.is_err() {
            return Direction::WriteFailed;
        }
        if let Some(b) = broken {
            return Direction::Broken(b);
        }
    }
}

/// Feeds the whole frames `decoder` holds to `frame`; the first malformed
/// one (`side`'s) stops it.
fn frames(
    decoder: &mut Decoder,
    side: &'static str,
    mut frame: impl FnMut(Frame, &mut Vec<u8>) -> Result<(), ChannelError>,
    out: &mut Vec<u8>,
) -> Option<Broken> {
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) => {
                if let Err(e) = frame(f, out) {
                    return Some(Broken::Channel(e));
                }
            }
            Ok(None) => return None,
            Err(e) => return Some(Broken::Frame(side, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskConfig;

    #[test]
    fn only_kubernetes_streams_are_relayed_and_exec_over_websocket_only() {
        let k = |verb: &str| KubernetesRequest {
            verb: verb.into(),
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
            subresource: Some(verb.into()),
            namespace: Some("ward".into()),
            name: Some("p1".into()),
            ..KubernetesRequest::default()
        };
        let req = |method: &str, upgrade: &str| {
            http::Request::builder()
                .method(method)
                .header(http::header::UPGRADE, upgrade)
                .body(())
                .unwrap()
        };
        assert_eq!(unrelayable(&req("GET", "websocket"), Some(&k("exec"))), None);
        assert_eq!(unrelayable(&req("GET", "WebSocket"), Some(&k("attach"))), None);
        assert_eq!(unrelayable(&req("POST", "SPDY/3.1"), Some(&k("portforward"))), None);
        assert!(
            unrelayable(&req("POST", "SPDY/3.1"), Some(&k("exec")))
                .unwrap()
                .contains("WebSocket only")
        );
        assert!(unrelayable(&req("GET", "h2c"), Some(&k("exec"))).is_some());
        assert!(unrelayable(&req("GET", "websocket"), Some(&k("log"))).is_some());
        assert!(unrelayable(&req("GET", "websocket"), None).is_some());
        assert!(unrelayable(&req("CONNECT", "websocket"), Some(&k("exec"))).is_some());
        assert_eq!(Streams::of("portforward"), Streams::Bytes);
        assert_eq!(Streams::of("exec"), Streams::Channels);
        let mut h = http::HeaderMap::new();
        assert!(!Streams::Channels.accepts(&h));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "v5.channel.k8s.io".parse().unwrap(),
        );
        assert!(Streams::Channels.accepts(&h));
        h.insert(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            "permessage-deflate".parse().unwrap(),
        );
        assert!(!Streams::Channels.accepts(&h));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "base64.channel.k8s.io".parse().unwrap(),
        );
        assert!(!Streams::Channels.accepts(&h));
    }

    #[test]
    fn the_title_names_the_pod_and_the_command_masked() {
        let action = HttpRequest {
            method: "GET".into(),
            host: "k".into(),
            path: "/api/v1/namespaces/ward/pods/p1/exec".into(),
            query: Some("command=sh&command=-c&command=grep+123-45-6789+%2Fdata&container=app&stdout=true".into()),
            kubernetes: Some(KubernetesRequest {
                verb: "exec".into(),
                group: String::new(),
                version: "v1".into(),
                resource: "pods".into(),
                subresource: Some("exec".into()),
                namespace: Some("ward".into()),
                name: Some("p1".into()),
                command: vec!["sh".into(), "-c".into(), "grep 123-45-6789 /data".into()],
                container: Some("app".into()),
                ..KubernetesRequest::default()
            }),
            fhir: None,
        };
        assert_eq!(
            title(&masker(), &action),
            "kubectl exec ward/p1 -c app -- sh -c grep *** /data"
        );
    }

    #[tokio::test]
    async fn port_forward_bytes_pass_unchanged_and_are_counted_both_ways() {
        let (client, mut client_end) = tokio::io::duplex(1 << 16);
        let (server, mut server_end) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(async move { relay(client, server, Streams::Bytes, masker(), None).await });
        client_end.write_all(b"ssn 123-45-6789\n").await.unwrap();
        let mut got = [0u8; 16];
        server_end.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ssn 123-45-6789\n");
        server_end.write_all(b"pong").await.unwrap();
        drop(server_end);
        let mut back = Vec::new();
        client_end.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
        drop(client_end);
        let ended = relay.await.unwrap();
        assert_eq!((ended.to_server, ended.to_client), (16, 4));
        assert!(ended.recording.is_none() && ended.masked.is_none());
    }

    /// An echo server (it reads, writes back, reads again) behind small
    /// buffers while the client sends a megabyte and reads the echo: a
    /// relay that waits on one direction's write stops both.
    #[tokio::test]
    async fn port_forward_to_an_echo_server_does_not_stall() {
        let (client, client_end) = tokio::io::duplex(1024);
        let (server, mut server_end) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(client, server, Streams::Bytes, masker(), None).await });
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match server_end.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => server_end.write_all(&buf[..n]).await.unwrap(),
                }
            }
        });
        let (mut read, mut write) = tokio::io::split(client_end);
        let send = async {
            write.write_all(&vec![b'x'; 1 << 20]).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let receive = async {
            let mut got = Vec::new();
            read.read_to_end(&mut got).await.unwrap();
            got.len()
        };
        let both = async { tokio::join!(send, receive).1 };
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(20), both)
            .await
            .expect("the relay stalled with both directions full");
        assert_eq!(echoed, 1 << 20);
        echo.await.unwrap();
        let ended = relay.await.unwrap();
        assert_eq!(
            (ended.to_server, ended.to_client, ended.status),
            (1 << 20, 1 << 20, "ok")
        );
    }

    /// `kubectl exec -i pod -- cat < big`: the server echoes stdin as
    /// stdout and stops reading while its output is not read, the client
    /// writes all of stdin before it reads. Behind small buffers a relay
    /// that waits on one direction's write stops both.
    #[tokio::test]
    async fn an_exec_that_echoes_its_stdin_does_not_stall() {
        const LINES: usize = 2000;
        // The relay reads stdin in large chunks and the server's window is
        // small: a write of one chunk waits on the server's reads.
        let (client, client_end) = tokio::io::duplex(1 << 16);
        let (server, mut server_end) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(client, server, Streams::Channels, masker(), None).await });
        let cat = tokio::spawn(async move {
            let mut d = Decoder::new(true);
            let mut buf = [0u8; 4096];
            let mut eof = false;
            while !eof {
                match server_end.read(&mut buf).await.unwrap() {
                    0 => eof = true,
                    n => d.push(&buf[..n]),
                }
                while let Some(f) = d.next_frame().unwrap() {
                    let mut stdout = f.payload;
                    stdout[0] = 1;
                    server_end
                        .write_all(&encode(true, Opcode::Binary, None, &stdout))
                        .await
                        .unwrap();
                }
            }
            server_end.write_all(&success()).await.unwrap();
        });
        let (mut read, mut write) = tokio::io::split(client_end);
        let line = format!("{}\n", "x".repeat(500));
        let send = async {
            for i in 0..LINES {
                let mut stdin = vec![0u8];
                stdin.extend_from_slice(line.as_bytes());
                let key = (i as u32).to_be_bytes();
                write
                    .write_all(&encode(true, Opcode::Binary, Some(key), &stdin))
                    .await
                    .unwrap();
            }
            write.shutdown().await.unwrap();
        };
        let receive = async {
            let mut d = Decoder::new(false);
            let mut got = Vec::new();
            read.read_to_end(&mut got).await.unwrap();
            d.push(&got);
            let mut stdout = 0;
            while let Some(f) = d.next_frame().unwrap() {
                if f.payload[0] == 1 {
                    stdout += f.payload.len() - 1;
                }
            }
            stdout
        };
        let both = async { tokio::join!(send, receive).1 };
        let echoed = tokio::time::timeout(Duration::from_secs(20), both)
            .await
            .expect("the relay stalled with both directions full");
        assert_eq!(echoed, LINES * line.len());
        cat.await.unwrap();
        let ended = relay.await.unwrap();
        assert_eq!(ended.status, "ok");
        assert_eq!(ended.to_server, (LINES * line.len()) as u64);
    }

    /// The status message of an exit 0, as a server frames it.
    const SUCCESS: &[u8] = b"\x03{\"metadata\":{},\"status\":\"Success\"}";

    fn success() -> Vec<u8> {
        encode(true, Opcode::Binary, None, SUCCESS)
    }

    fn masker() -> Masker {
        Masker::new(&MaskConfig::default(), None).unwrap()
    }

    /// The disk fills under a running exec: the server's output is not
    /// relayed on, the client gets Close 1011, the result says why.
    #[tokio::test]
    async fn an_exec_whose_recording_fails_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut client_end) = tokio::io::duplex(1 << 16);
        let (server, mut server_end) = tokio::io::duplex(1 << 16);
        let header = Header {
            cols: 80,
            rows: 24,
            term: None,
            title: "exec",
        };
        let mut recorder = Recorder::create(dir.path(), uuid::Uuid::nil(), 1, 1 << 20, &header).unwrap();
        recorder.fail_writes();
        let relay =
            tokio::spawn(async move { relay(client, server, Streams::Channels, masker(), Some(recorder)).await });
        server_end
            .write_all(&encode(
                true,
                Opcode::Binary,
                None,
                b"ward rounds at nine
",
            ))
            .await
            .unwrap();
        let mut seen = Vec::new();
        client_end.read_to_end(&mut seen).await.unwrap();
        let ended = relay.await.unwrap();
        let mut d = Decoder::new(false);
        d.push(&seen);
        let frames: Vec<_> = std::iter::from_fn(|| d.next_frame().unwrap()).collect();
        assert!(
            frames
                .iter()
                .all(|f| !String::from_utf8_lossy(&f.payload).contains("ward rounds")),
            "unrecorded output was relayed"
        );
        let close = frames.last().expect("a close frame");
        assert_eq!(
            (close.opcode, &close.payload[..2]),
            (Opcode::Close, &1011u16.to_be_bytes()[..])
        );
        assert_eq!(ended.status, RECORDING_FAILED);
        assert!(ended.recording.is_none());
    }

    /// Both ends of the relay in memory: what a client sees of a server's
    /// frames, and what the server gets of the client's.
    #[tokio::test]
    async fn a_relayed_exec_is_masked_recorded_and_ends_with_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut client_end) = tokio::io::duplex(1 << 16);
        let (server, mut server_end) = tokio::io::duplex(1 << 16);
        let header = Header {
            cols: 80,
            rows: 24,
            term: None,
            title: "exec",
        };
        let recorder = Recorder::create(dir.path(), uuid::Uuid::nil(), 1, 1 << 20, &header).unwrap();
        let relay =
            tokio::spawn(async move { relay(client, server, Streams::Channels, masker(), Some(recorder)).await });
        client_end
            .write_all(&encode(
                true,
                Opcode::Binary,
                Some([1, 2, 3, 4]),
                b"\x00ssn 111-22-3333\n",
            ))
            .await
            .unwrap();
        let mut resize = vec![4u8];
        resize.extend_from_slice(br#"{"Width":100,"Height":30}"#);
        client_end
            .write_all(&encode(true, Opcode::Binary, Some([5, 6, 7, 8]), &resize))
            .await
            .unwrap();
        let mut got = Decoder::new(true);
        let mut buf = vec![0u8; 4096];
        let mut frames = Vec::new();
        while frames.len() < 2 {
            let n = server_end.read(&mut buf).await.unwrap();
            got.push(&buf[..n]);
            while let Some(f) = got.next_frame().unwrap() {
                frames.push(f);
            }
        }
        // stdin reaches the server as typed (the recording reads it back).
        assert_eq!(frames[0].payload, b"\x00ssn 111-22-3333\n");
        assert_eq!(frames[1].payload, resize);
        server_end
            .write_all(&encode(true, Opcode::Binary, None, b"\x01patient 123-45-6789\npartial"))
            .await
            .unwrap();
        server_end.write_all(&success()).await.unwrap();
        drop(server_end);
        let mut seen = Vec::new();
        client_end.read_to_end(&mut seen).await.unwrap();
        let ended = relay.await.unwrap();
        let mut d = Decoder::new(false);
        d.push(&seen);
        let mut messages = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            messages.push(f.payload);
        }
        assert_eq!(messages[0], b"\x01patient ***\n");
        assert_eq!(messages[1], b"\x01partial");
        assert_eq!(messages[2], SUCCESS);
        assert_eq!((ended.status, ended.code.as_deref()), ("ok", Some("exit:0")));
        assert_eq!(ended.masked, Some(1));
        let r = ended.recording.unwrap();
        assert_eq!(r.check(dir.path()), Ok(()));
        let cast = std::fs::read_to_string(r.file(dir.path()).unwrap()).unwrap();
        assert!(cast.contains("patient ***") && cast.contains("\"100x30\""), "{cast}");
        // The server never echoed stdin: the recording keeps only its length.
        assert!(
            cast.contains("\"i\",\"(typed without echo: 15 characters)\\r\""),
            "{cast}"
        );
        assert!(!cast.contains("123-45-6789") && !cast.contains("111-22-3333"), "{cast}");
    }

    #[tokio::test]
    async fn a_malformed_server_frame_closes_the_client_with_1002() {
        let (client, mut client_end) = tokio::io::duplex(1 << 16);
        let (server, mut server_end) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(async move { relay(client, server, Streams::Channels, masker(), None).await });
        server_end.write_all(&[0xC2, 0x01, 0x01]).await.unwrap();
        let mut seen = Vec::new();
        client_end.read_to_end(&mut seen).await.unwrap();
        let ended = relay.await.unwrap();
        assert_eq!(ended.status, "error");
        assert!(ended.code.unwrap().contains("reserved bit"));
        let mut d = Decoder::new(false);
        d.push(&seen);
        let close = d.next_frame().unwrap().unwrap();
        assert_eq!(close.opcode, Opcode::Close);
        assert_eq!(&close.payload[..2], &1002u16.to_be_bytes());
    }
}
