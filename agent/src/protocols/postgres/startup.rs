//! The client's side of connection start: SSL and GSS requests, cancel
//! requests, the startup packet and protocol version negotiation.
use std::sync::Arc;

use bytes::BytesMut;
use rustls::ServerConfig;
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{
    SessionError,
    frame::{self, MAX_STARTUP_MESSAGE, cstr},
    stream::PgStream,
    wire::{self, sqlstate},
};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// First byte of a TLS ClientHello: a PostgreSQL 17 client using
/// `sslnegotiation=direct` starts TLS without an SSLRequest.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the client opened the connection for.
pub enum Opening {
    /// A session: its startup parameters, and any bytes already read past
    /// the startup packet.
    Session {
        stream: PgStream,
        parameters: Vec<(String, String)>,
        buf: BytesMut,
    },
    /// A request to cancel the query running on another session.
    Cancel { pid: i32, secret: Vec<u8> },
}

/// Runs the startup phase. `tls`: loopgate's server config when the target
/// offers TLS to clients; otherwise SSLRequest is answered 'N'.
pub async fn open(tcp: TcpStream, tls: Option<&Arc<ServerConfig>>) -> Result<Opening, SessionError> {
    // Replies are written whole; Nagle would only hold them back.
    tcp.set_nodelay(true)?;
    let mut stream = PgStream::Plain(tcp);
    let mut buf = BytesMut::with_capacity(1024);
    if let PgStream::Plain(tcp) = &stream {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE {
            stream = match tls {
                Some(config) => accept_tls(stream, config).await?,
                None => {
                    return Err(SessionError::Protocol(
                        "the client started TLS directly (sslnegotiation=direct), which this target does not offer"
                            .into(),
                    ));
                }
            };
        }
    }
    loop {
        let Some(packet) = frame::read_frame(&mut stream, &mut buf, false, MAX_STARTUP_MESSAGE).await? else {
            return Err(SessionError::Closed);
        };
        let mut body = packet.body();
        let code =
            frame::take_i32(&mut body).ok_or_else(|| SessionError::Protocol("startup packet too short".into()))?;
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                // Bytes sent after the request but before the answer would be
                // read as if they came over TLS (CVE-2021-23222): refuse.
                if !buf.is_empty() {
                    return Err(SessionError::Protocol("data sent before the SSL answer".into()));
                }
                match (code, tls) {
                    (SSL_REQUEST, Some(config)) if !stream.is_tls() => {
                        stream.write_all(b"S").await?;
                        stream = accept_tls(stream, config).await?;
                    }
                    _ => stream.write_all(b"N").await?,
                }
            }
            CANCEL_REQUEST => {
                let pid =
                    frame::take_i32(&mut body).ok_or_else(|| SessionError::Protocol("short CancelRequest".into()))?;
                return Ok(Opening::Cancel {
                    pid,
                    secret: body.to_vec(),
                });
            }
            version if version >> 16 == 3 => {
                let (parameters, unsupported) = parameters(body)?;
                let minor = version & 0xffff;
                if minor > 0 || !unsupported.is_empty() {
                    // loopgate speaks 3.0 to both sides.
                    stream.write_all(&wire::negotiate_protocol_version(unsupported)).await?;
                }
                return Ok(Opening::Session {
                    stream,
                    parameters,
                    buf,
                });
            }
            other => {
                let message = format!("unsupported frontend protocol {}.{}", other >> 16, other & 0xffff);
                let _ = stream
                    .write_all(&wire::fatal(sqlstate::PROTOCOL_VIOLATION, &message))
                    .await;
                return Err(SessionError::Protocol(message));
            }
        }
    }
}

async fn accept_tls(stream: PgStream, config: &Arc<ServerConfig>) -> Result<PgStream, SessionError> {
    let PgStream::Plain(tcp) = stream else {
        return Err(SessionError::Protocol("TLS requested twice".into()));
    };
    let tls = tokio_rustls::TlsAcceptor::from(config.clone())
        .accept(tcp)
        .await
        .map_err(|e| SessionError::Protocol(format!("TLS handshake with the client failed: {e}")))?;
    Ok(PgStream::TlsServer(Box::new(tls)))
}

/// Startup parameters (name, value), and the `_pq_.` protocol options
/// loopgate declines.
type Parameters = (Vec<(String, String)>, Vec<String>);

fn parameters(mut body: &[u8]) -> Result<Parameters, SessionError> {
    let bad = || SessionError::Protocol("malformed startup parameters".into());
    let mut out = Vec::new();
    let mut unsupported = Vec::new();
    loop {
        let (name, rest) = cstr(body).ok_or_else(bad)?;
        if name.is_empty() {
            break;
        }
        let (value, rest) = cstr(rest).ok_or_else(bad)?;
        body = rest;
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        if name.starts_with("_pq_.") {
            unsupported.push(name);
        } else {
            out.push((name, value));
        }
    }
    Ok((out, unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_protocol_options() {
        let (params, unsupported) = parameters(b"user\0app\0database\0clinic\0_pq_.x\0\x31\0\0").unwrap();
        assert_eq!(
            params,
            [("user".into(), "app".into()), ("database".into(), "clinic".into())]
        );
        assert_eq!(unsupported, ["_pq_.x"]);
        assert!(parameters(b"user\0app").is_err());
        assert!(parameters(b"").is_err());
    }
}
