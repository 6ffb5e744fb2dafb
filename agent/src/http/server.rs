//! The HTTP server every part of the agent uses (the loopback approvals
//! API; the test issuer): hyper's HTTP/1.1 over tokio, plain or TLS, with
//! bounds so a local client cannot make the agent buffer or wait without
//! end — headers within 16 KiB and 10 s, a body within 16 KiB and 10 s, one
//! request per connection.
use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

/// Request line plus headers (hyper's smallest read buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// Request bodies are small JSON documents (a denial reason).
pub const MAX_BODY: usize = 16 * 1024;
/// Time for the headers, and then for the body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request as handlers see it: read whole, within the bounds.
#[derive(Debug)]
pub struct Ask {
    pub method: http::Method,
    /// Path without the query string.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The `Authorization: Bearer` token, if any.
    pub bearer: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Ask {
    /// The value of cookie `name`, if the request carries it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
    }

    /// The value of query parameter `name` (no percent-decoding: for
    /// tokens of URL-safe characters).
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
}

/// An answer: JSON unless a constructor says otherwise.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'static str,
    /// Further headers (a cookie, a redirect's location, a CSP).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Answer {
    pub fn json(status: u16, value: &serde_json::Value) -> Answer {
        Answer {
            status,
            body: Bytes::from(value.to_string()),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    /// A page of loopgate's own (static HTML).
    pub fn html(body: &'static str) -> Answer {
        Answer {
            status: 200,
            body: Bytes::from_static(body.as_bytes()),
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
        }
    }

    /// A 303 to `location`.
    pub fn redirect(location: &'static str) -> Answer {
        let mut answer = Answer::json(303, &serde_json::json!({ "location": location }));
        answer
            .headers
            .push((http::header::LOCATION, http::HeaderValue::from_static(location)));
        answer
    }

    /// Adds a header; a value that is not a valid header is dropped (and
    /// logged): handlers build them from their own safe strings.
    pub fn with(mut self, name: http::HeaderName, value: &str) -> Answer {
        match http::HeaderValue::from_str(value) {
            Ok(v) => self.headers.push((name, v)),
            Err(_) => tracing::error!(header = %name, "invalid header value dropped"),
        }
        self
    }

    fn error(status: u16, message: &str) -> Answer {
        Answer::json(status, &serde_json::json!({ "error": message }))
    }

    fn into_response(self) -> http::Response<Full<Bytes>> {
        let mut response = http::Response::new(Full::new(self.body));
        *response.status_mut() =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(self.content_type),
        );
        headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        headers.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            http::HeaderValue::from_static("nosniff"),
        );
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// Serves `listener` in the background, over TLS when `tls` is given: each
/// connection on a task of its own, each request answered by `handler`.
pub fn spawn<H, F>(listener: TcpListener, tls: Option<TlsAcceptor>, handler: H) -> JoinHandle<()>
where
    H: Fn(Ask) -> F + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(Ok(stream)) = tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                            connection(TokioIo::new(stream), handler).await;
                        }
                    }
                    None => connection(TokioIo::new(stream), handler).await,
                }
            });
        }
    })
}

async fn connection<I, H, F>(io: I, handler: Arc<H>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Ask) -> F + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let service = service_fn(move |request: http::Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(request, &*handler).await.into_response()) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

async fn answer<H, F>(request: http::Request<Incoming>, handler: &H) -> Answer
where
    H: Fn(Ask) -> F,
    F: Future<Output = Answer>,
{
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => return Answer::error(408, "request timed out"),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Answer::error(413, "request body too large");
        }
        Ok(Err(_)) => return Answer::error(400, "incomplete request body"),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let bearer = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
        });
    handler(Ask {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        bearer,
        headers: parts.headers,
        body,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        spawn(listener, None, |ask: Ask| async move {
            Answer::json(
                200,
                &serde_json::json!({"method": ask.method.as_str(), "path": ask.path, "bearer": ask.bearer, "body": String::from_utf8_lossy(&ask.body)}),
            )
        });
        addr
    }

    async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn requests_reach_the_handler_with_bearer_and_body() {
        let addr = server().await;
        let got = raw(
            addr,
            b"POST /v1/approvals/ab12/deny?x=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok.en\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        assert!(
            got.contains(r#""path":"/v1/approvals/ab12/deny""#) && got.contains(r#""bearer":"tok.en""#),
            "{got}"
        );
        assert!(got.contains(r#""body":"{}""#), "{got}");
    }

    #[tokio::test]
    async fn oversized_and_malformed_requests_are_answered_not_served() {
        let addr = server().await;
        let big = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
            MAX_BODY + 1,
            "a".repeat(MAX_BODY + 1)
        );
        assert!(raw(addr, big.as_bytes()).await.starts_with("HTTP/1.1 413"));
        let huge_head = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD * 2));
        let got = raw(addr, huge_head.as_bytes()).await;
        assert!(got.starts_with("HTTP/1.1 431") || got.is_empty(), "{got}");
        let got = raw(addr, b"GET / SPDY/3\r\n\r\n").await;
        assert!(!got.contains(r#""path""#), "{got}");
        let got = raw(addr, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    }
}
