//! The server half: read one request, write one response. Sizes are capped
//! so a local client cannot make the agent buffer without bound.
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Request line plus headers.
const MAX_HEAD: usize = 16 * 1024;
/// Request bodies are small JSON documents (a denial reason).
pub const MAX_BODY: usize = 16 * 1024;

/// One parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The `Authorization: Bearer` token, if any.
    pub bearer: Option<String>,
    pub body: Vec<u8>,
}

/// Reads one request. Errors are the status and text to answer with.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<HttpRequest, (u16, &'static str)> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err((431, "request headers too large"));
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.map_err(|_| (400, "read failed"))?;
        if n == 0 {
            return Err((400, "incomplete request"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| (400, "headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) = (request_line.next(), request_line.next(), request_line.next())
    else {
        return Err((400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((505, "HTTP/1.x only"));
    }
    let mut content_length = 0usize;
    let mut bearer = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or((400, "bad header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| (400, "bad content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err((411, "send a content-length"));
        } else if name.eq_ignore_ascii_case("authorization") {
            let mut parts = value.splitn(2, ' ');
            if parts.next().is_some_and(|s| s.eq_ignore_ascii_case("bearer")) {
                bearer = parts.next().map(|t| t.trim().to_owned());
            }
        }
    }
    if content_length > MAX_BODY {
        return Err((413, "request body too large"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < content_length {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.map_err(|_| (400, "read failed"))?;
        if n == 0 {
            return Err((400, "body shorter than content-length"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    let path = target.split('?').next().unwrap_or_default().to_owned();
    Ok(HttpRequest {
        method: method.to_owned(),
        path,
        bearer,
        body,
    })
}

/// Writes a JSON response and closes the exchange.
pub async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, status: u16, json: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    out.extend_from_slice(json);
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<HttpRequest, (u16, &'static str)> {
        let mut r = raw;
        read_request(&mut r).await
    }

    #[tokio::test]
    async fn requests_parse_with_bearer_and_body() {
        let r = parse(b"POST /v1/approvals/ab12/deny?x=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok.en\r\nContent-Length: 4\r\n\r\n{}  extra")
            .await
            .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/approvals/ab12/deny");
        assert_eq!(r.bearer.as_deref(), Some("tok.en"));
        assert_eq!(r.body, b"{}  ");
    }

    #[tokio::test]
    async fn bad_requests_get_a_status_not_a_panic() {
        for (raw, status) in [
            (&b"GET / HTTP/1.1\r\nHost"[..], 400),
            (b"GET /\r\n\r\n", 400),
            (b"GET / SPDY/3\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nbroken\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 400),
        ] {
            assert_eq!(
                parse(raw).await.unwrap_err().0,
                status,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let huge = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(parse(&huge).await.unwrap_err().0, 431);
    }
}
