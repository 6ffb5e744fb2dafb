//! A small HTTP/1.1 client (OIDC discovery and JWKS documents, approval
//! webhooks) over tokio and rustls (ring), so no second HTTP and TLS stack
//! enters the agent. One request per connection, no redirects, bounded size
//! and time.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

/// Discovery documents, key sets and webhook answers are a few KiB; this is
/// far above that.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("io: {0}")]
    Io(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
}

/// TLS settings for HTTPS requests: the roots in `ca_file` (PEM), or the
/// public web roots when none is given.
pub fn client_tls(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls_pki_types::{CertificateDer, pem::PemObject as _};
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
                roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            }
            if roots.is_empty() {
                return Err("no certificates in the file".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GET `url`; the body of a 200 answer.
pub async fn get(url: &Url, tls: &Arc<ClientConfig>, timeout: Duration) -> Result<Vec<u8>, FetchError> {
    let request = Request {
        method: "GET",
        body: None,
    };
    tokio::time::timeout(timeout, send(url, tls, request))
        .await
        .map_err(|_| FetchError::Timeout)?
}

/// POST `body` as JSON to `url`; the body of a 2xx answer.
pub async fn post_json(
    url: &Url,
    tls: &Arc<ClientConfig>,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let request = Request {
        method: "POST",
        body: Some(body),
    };
    tokio::time::timeout(timeout, send(url, tls, request))
        .await
        .map_err(|_| FetchError::Timeout)?
}

struct Request<'a> {
    method: &'static str,
    /// Sent as `application/json`.
    body: Option<&'a [u8]>,
}

async fn send(url: &Url, tls: &Arc<ClientConfig>, req: Request<'_>) -> Result<Vec<u8>, FetchError> {
    let host = url.host_str().ok_or(FetchError::Malformed("no host"))?;
    let port = url.port_or_known_default().ok_or(FetchError::Malformed("no port"))?;
    // `host_str` keeps IPv6 brackets, which the resolver does not want.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port)).await.map_err(FetchError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let mut target = url.path().to_string();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut request = format!(
        "{} {target} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\nUser-Agent: loopgate\r\nConnection: close\r\n",
        req.method
    )
    .into_bytes();
    if let Some(body) = req.body {
        request.extend_from_slice(
            format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()).as_bytes(),
        );
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(req.body.unwrap_or_default());
    let raw = if url.scheme() == "https" {
        let name = ServerName::try_from(bare.to_string()).map_err(|e| FetchError::Tls(e.to_string()))?;
        let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls(e.to_string()))?;
        stream.write_all(&request).await.map_err(FetchError::Io)?;
        read_all(&mut stream).await?
    } else {
        let mut stream = tcp;
        stream.write_all(&request).await.map_err(FetchError::Io)?;
        read_all(&mut stream).await?
    };
    parse_response(&raw)
}

/// Reads to EOF. A TLS peer that closes without close_notify surfaces as
/// UnexpectedEof; the framing check in `parse_response` decides whether the
/// body is complete, so that is not an error here.
async fn read_all<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, FetchError> {
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 8 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return Ok(buf),
            Ok(n) => {
                if buf.len() + n > MAX_RESPONSE_BYTES + 16 * 1024 {
                    return Err(FetchError::TooLarge);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => return Ok(buf),
            Err(e) => return Err(FetchError::Io(e)),
        }
    }
}

fn parse_response(raw: &[u8]) -> Result<Vec<u8>, FetchError> {
    let head_end = find(raw, b"\r\n\r\n").ok_or(FetchError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| FetchError::Malformed("headers are not UTF-8"))?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut fields = status_line.splitn(3, ' ');
    let version = fields.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(FetchError::Malformed("not HTTP/1.x"));
    }
    let status: u16 = fields
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(FetchError::Malformed("bad status line"))?;
    if !(200..300).contains(&status) {
        return Err(FetchError::Status(status));
    }
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(FetchError::Malformed("bad header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| FetchError::Malformed("bad content-length"))?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().split(',').any(|v| v.trim() == "chunked");
        }
    }
    if chunked {
        return dechunk(body);
    }
    match content_length {
        Some(n) if n > MAX_RESPONSE_BYTES => Err(FetchError::TooLarge),
        Some(n) if body.len() < n => Err(FetchError::Malformed("body shorter than content-length")),
        Some(n) => Ok(body[..n].to_vec()),
        None if body.len() > MAX_RESPONSE_BYTES => Err(FetchError::TooLarge),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or(FetchError::Malformed("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| FetchError::Malformed("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| FetchError::Malformed("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if size > MAX_RESPONSE_BYTES || out.len() + size > MAX_RESPONSE_BYTES {
            return Err(FetchError::TooLarge);
        }
        if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
            return Err(FetchError::Malformed("truncated chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n{}trailing").unwrap();
        assert_eq!(r, b"{}");
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3;x=1\r\na\"}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r, b"{\"a\"}");
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nuntil-eof").unwrap();
        assert_eq!(r, b"until-eof");
    }

    #[test]
    fn errors_instead_of_panics() {
        assert!(matches!(
            parse_response(b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n"),
            Err(FetchError::Status(302))
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n",
        ] {
            assert!(parse_response(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let big = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_RESPONSE_BYTES + 1);
        assert!(matches!(parse_response(big.as_bytes()), Err(FetchError::TooLarge)));
    }
}
