//! The HTTP client every part of the agent uses — OIDC discovery and JWKS,
//! approval webhooks, object storage — on hyper's HTTP/1.1 over tokio and
//! rustls (ring), with a small pool of kept-alive connections per origin.
//! Answers are read whole, up to a size the caller names, within the
//! request timeout; redirects are not followed.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use url::Url;

/// Discovery documents, key sets and webhook answers are a few KiB; this is
/// far above that.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Idle connections kept per origin.
const POOL_PER_ORIGIN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Http(String),
    #[error("timed out")]
    Timeout,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad URL: {0}")]
    Url(&'static str),
}

/// Timeouts of one request.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// From sending the request to the last byte of the answer.
    pub request: Duration,
}

impl Timeouts {
    /// One budget for the whole exchange.
    pub fn total(d: Duration) -> Timeouts {
        Timeouts { connect: d, request: d }
    }
}

/// TLS settings for HTTPS requests: the roots in `ca_file` (PEM), or the
/// public web roots when none is given.
pub fn client_tls(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, String> {
    let auth = match ca_file {
        Some(path) => crate::tls::ServerAuth::CaFile(path.to_path_buf()),
        None => crate::tls::ServerAuth::WebRoots,
    };
    crate::tls::client_config(&auth, &[b"http/1.1"]).map_err(|e| e.to_string())
}

/// A client: its TLS roots, timeouts and connection pool. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeouts", &self.inner.timeouts)
            .finish()
    }
}

struct Inner {
    tls: Arc<ClientConfig>,
    timeouts: Timeouts,
    idle: Mutex<HashMap<Origin, Vec<SendRequest<Full<Bytes>>>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl HttpClient {
    pub fn new(tls: Arc<ClientConfig>, timeouts: Timeouts) -> HttpClient {
        HttpClient {
            inner: Arc::new(Inner {
                tls,
                timeouts,
                idle: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// GET `url`; the body of a 2xx answer.
    pub async fn get(&self, url: &Url) -> Result<Bytes, FetchError> {
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        self.expect_ok(request).await
    }

    /// POST `body` as JSON to `url`; the body of a 2xx answer.
    pub async fn post_json(&self, url: &Url, body: Vec<u8>) -> Result<Bytes, FetchError> {
        let request = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Http(e.to_string()))?;
        self.expect_ok(request).await
    }

    async fn expect_ok(&self, request: http::Request<Full<Bytes>>) -> Result<Bytes, FetchError> {
        let response = self.send(request, MAX_DOCUMENT_BYTES).await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        Ok(response.into_body())
    }

    /// Sends `request` (absolute URI) and reads its answer whole, at most
    /// `max_body` bytes, within the timeouts.
    pub async fn send(
        &self,
        mut request: http::Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<http::Response<Bytes>, FetchError> {
        let uri = request.uri().clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Url("not http(s)")),
        };
        let authority = uri.authority().ok_or(FetchError::Url("no host"))?.clone();
        let origin = Origin {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        };
        // HTTP/1.1 origin form: the path in the request line, the
        // authority in Host.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = path.parse().map_err(|_| FetchError::Url("bad path"))?;
        let host = http::HeaderValue::from_str(authority.as_str()).map_err(|_| FetchError::Url("bad host"))?;
        let headers = request.headers_mut();
        headers.insert(http::header::HOST, host);
        headers
            .entry(http::header::USER_AGENT)
            .or_insert(http::HeaderValue::from_static("loopgate"));
        let mut sender = match self.take_idle(&origin) {
            Some(s) => s,
            None => self.connect(&origin).await?,
        };
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| FetchError::Http(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => FetchError::TooLarge(max_body),
                    Err(e) => FetchError::Http(e.to_string()),
                })?
                .to_bytes();
            Ok::<_, FetchError>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.inner.timeouts.request, exchange)
            .await
            .map_err(|_| FetchError::Timeout)??;
        let close = parts
            .headers
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if !close {
            self.put_idle(origin, sender);
        }
        Ok(http::Response::from_parts(parts, body))
    }

    fn take_idle(&self, origin: &Origin) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(origin)?;
        while let Some(s) = list.pop() {
            if s.is_ready() && !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, origin: Origin, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(origin).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < POOL_PER_ORIGIN {
            list.push(sender);
        }
    }

    async fn connect(&self, origin: &Origin) -> Result<SendRequest<Full<Bytes>>, FetchError> {
        let connect = async {
            let tcp = TcpStream::connect((origin.host.as_str(), origin.port))
                .await
                .map_err(FetchError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if origin.https {
                let name = ServerName::try_from(origin.host.clone()).map_err(|e| FetchError::Tls(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(self.inner.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| FetchError::Tls(e.to_string()))?;
                Box::new(tls)
            } else {
                Box::new(tcp)
            };
            let (sender, connection) = http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| FetchError::Http(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
            });
            Ok(sender)
        };
        tokio::time::timeout(self.inner.timeouts.connect, connect)
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::server::{self, Answer, Ask};

    fn client() -> HttpClient {
        HttpClient::new(client_tls(None).unwrap(), Timeouts::total(Duration::from_secs(5)))
    }

    async fn serve(handler: impl Fn(Ask) -> Answer + Send + Sync + 'static) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        server::spawn(listener, None, move |ask| {
            let handler = handler.clone();
            async move { handler(ask) }
        });
        Url::parse(&format!("http://{addr}/")).unwrap()
    }

    #[tokio::test]
    async fn gets_and_posts_carry_path_and_body() {
        let url = serve(|ask| Answer::json(200, &serde_json::json!({"path": ask.path, "body": ask.body.len()}))).await;
        let c = client();
        let got = c.get(&url.join("a?x=1").unwrap()).await.unwrap();
        assert_eq!(&got[..], br#"{"body":0,"path":"/a"}"#);
        let got = c.post_json(&url.join("b").unwrap(), b"{}".to_vec()).await.unwrap();
        assert_eq!(&got[..], br#"{"body":2,"path":"/b"}"#);
        // The server answers `Connection: close`: nothing stale is pooled.
        assert_eq!(c.inner.idle.lock().unwrap().values().map(Vec::len).sum::<usize>(), 0);
    }

    #[tokio::test]
    async fn statuses_sizes_and_dead_ports_are_errors() {
        let url = serve(|ask| match ask.path.as_str() {
            "/big" => Answer::json(200, &serde_json::json!({"x": "a".repeat(MAX_DOCUMENT_BYTES)})),
            _ => Answer::json(302, &serde_json::json!({})),
        })
        .await;
        let c = client();
        assert!(matches!(c.get(&url).await, Err(FetchError::Status(302))));
        assert!(matches!(
            c.get(&url.join("big").unwrap()).await,
            Err(FetchError::TooLarge(_))
        ));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dead = Url::parse(&format!("http://{closed}/")).unwrap();
        assert!(c.get(&dead).await.is_err());
        assert!(matches!(
            c.get(&Url::parse("ftp://x/").unwrap()).await,
            Err(FetchError::Url(_))
        ));
    }
}
