//! loopgate's connections to the upstream server of one client connection:
//! TLS verified against the target's CA (or the public roots) and its
//! host name, HTTP/2 when the server offers it, else a few HTTP/1.1
//! connections for requests that overlap.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::{net::TcpStream, sync::Mutex};

use super::body::BoxError;

/// At most this many HTTP/1.1 connections per client connection.
const MAX_H1: usize = 8;

/// The request body sent upstream: the client's, counted.
pub type UpBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    /// The server's certificate does not verify for the target.
    #[error("upstream certificate refused: {0}")]
    Certificate(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("connect timed out")]
    Timeout,
}

impl UpstreamError {
    /// A certificate the target's trust does not accept.
    pub fn is_certificate(&self) -> bool {
        matches!(self, UpstreamError::Certificate(_))
    }

    /// A failed TLS handshake: a refused certificate, or another failure.
    fn handshake(e: std::io::Error) -> UpstreamError {
        let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(c)) => UpstreamError::Certificate(format!("{c:?}")),
            _ => UpstreamError::Tls(e.to_string()),
        }
    }
}

/// How to reach the upstream; shared by a target's sessions.
#[derive(Clone)]
pub struct Dialer {
    pub addr: SocketAddr,
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
}

enum Sender {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

/// The upstream connections of one client connection, opened on demand.
pub struct Upstream {
    dialer: Dialer,
    h2: Mutex<Option<http2::SendRequest<UpBody>>>,
    h1: std::sync::Mutex<Vec<http1::SendRequest<UpBody>>>,
}

impl Upstream {
    pub fn new(dialer: Dialer) -> Upstream {
        Upstream {
            dialer,
            h2: Mutex::new(None),
            h1: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` (origin-form URI; the authority is set here for
    /// HTTP/2) and returns the response head and its streaming body.
    pub async fn send(&self, mut request: Request<UpBody>) -> Result<Response<Incoming>, UpstreamError> {
        match self.sender().await? {
            Sender::H2(mut s) => {
                let authority = request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(&self.dialer.server_name)
                    .to_owned();
                let scheme = if self.dialer.tls.is_some() { "https" } else { "http" };
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                if let Ok(uri) = format!("{scheme}://{authority}{path}").parse() {
                    *request.uri_mut() = uri;
                }
                request.headers_mut().remove(http::header::HOST);
                *request.version_mut() = http::Version::HTTP_2;
                Ok(s.send_request(request).await?)
            }
            Sender::H1(mut s) => {
                *request.version_mut() = http::Version::HTTP_11;
                let response = s.send_request(request).await;
                self.give_back(s);
                Ok(response?)
            }
        }
    }

    async fn sender(&self) -> Result<Sender, UpstreamError> {
        let mut h2 = self.h2.lock().await;
        if let Some(s) = h2.as_ref().filter(|s| !s.is_closed()) {
            return Ok(Sender::H2(s.clone()));
        }
        {
            let mut idle = self.h1.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|s| !s.is_closed());
            if let Some(i) = idle.iter().position(|s| s.is_ready()) {
                return Ok(Sender::H1(idle.swap_remove(i)));
            }
        }
        let sender = tokio::time::timeout(self.dialer.timeout, self.dial())
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        if let Sender::H2(s) = &sender {
            *h2 = Some(s.clone());
        }
        Ok(sender)
    }

    fn give_back(&self, sender: http1::SendRequest<UpBody>) {
        let mut idle = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_H1 && !sender.is_closed() {
            idle.push(sender);
        }
    }

    async fn dial(&self) -> Result<Sender, UpstreamError> {
        let tcp = TcpStream::connect(self.dialer.addr)
            .await
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.dialer.tls else {
            return handshake_h1(tcp).await;
        };
        let name =
            ServerName::try_from(self.dialer.server_name.clone()).map_err(|e| UpstreamError::Tls(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(UpstreamError::handshake)?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            return Ok(Sender::H2(sender));
        }
        handshake_h1(stream).await
    }
}

impl Upstream {
    /// Sends an upgrade request on a fresh HTTP/1.1 connection of its own
    /// (ALPN offers http/1.1 only: upgrades do not exist in HTTP/2), kept
    /// upgradable; the response's upgrade is the server's side of the relay.
    pub async fn send_upgrade(&self, mut request: Request<UpBody>) -> Result<Response<Incoming>, UpstreamError> {
        *request.version_mut() = http::Version::HTTP_11;
        let dial = async {
            let tcp = TcpStream::connect(self.dialer.addr)
                .await
                .map_err(UpstreamError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &self.dialer.tls else {
                return Ok::<_, UpstreamError>(Either::Plain(tcp));
            };
            let mut h1_only = (**tls).clone();
            h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name =
                ServerName::try_from(self.dialer.server_name.clone()).map_err(|e| UpstreamError::Tls(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(h1_only))
                .connect(name, tcp)
                .await
                .map_err(UpstreamError::handshake)?;
            Ok(Either::Tls(Box::new(stream)))
        };
        let io = tokio::time::timeout(self.dialer.timeout, dial)
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        match io {
            Either::Plain(tcp) => upgradable(tcp, request).await,
            Either::Tls(tls) => upgradable(*tls, request).await,
        }
    }
}

enum Either {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn upgradable<T>(io: T, request: Request<UpBody>) -> Result<Response<Incoming>, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream upgrade connection ended");
        }
    });
    Ok(sender.send_request(request).await?)
}

async fn handshake_h1<T>(io: T) -> Result<Sender, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(Sender::H1(sender))
}

/// The client's request body, as sent upstream, counted into `traffic`.
pub fn request_body(body: Incoming, traffic: Arc<crate::session::Traffic>) -> UpBody {
    use http_body_util::BodyExt as _;
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            traffic
                .to_server
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        frame
    })
    .map_err(|e| -> BoxError { Box::new(e) })
    .boxed_unsync()
}

/// Whether a response to `method` with `status` has no body.
pub fn bodyless(method: &http::Method, status: http::StatusCode) -> bool {
    method == http::Method::HEAD
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt as _, Empty, Full};
    use hyper::server::conn::{http1 as server1, http2 as server2};

    use super::*;
    use crate::tls::{LocalCa, ServerAuth, client_config};

    /// A TLS server offering `alpn` that answers each request with its
    /// version, authority and Host, counting connections.
    async fn server(ca: &LocalCa, alpn: &[&[u8]]) -> (SocketAddr, Arc<AtomicUsize>) {
        let config = ca.server_config(&["127.0.0.1".into()], alpn).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::Relaxed);
                let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .map(|h| h.to_str().unwrap().to_owned());
                        let text = format!(
                            "{:?} {:?} {:?}",
                            req.version(),
                            req.uri().authority().map(|a| a.to_string()),
                            host
                        );
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from(text))))
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = server2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = server1::Builder::new().serve_connection(io, service).await;
                    }
                });
            }
        });
        (addr, connections)
    }

    fn request() -> Request<UpBody> {
        let body = Empty::<bytes::Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        Request::builder()
            .uri("/fhir/metadata")
            .header(http::header::HOST, "fhir.example")
            .body(body)
            .unwrap()
    }

    async fn text(r: Response<Incoming>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn http2_when_offered_one_connection_with_the_authority_else_http1() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let client = client_config(&ServerAuth::CaFile(ca.cert_path()), &[b"h2", b"http/1.1"]).unwrap();
        for (alpn, expect) in [
            (&[&b"h2"[..], b"http/1.1"][..], "HTTP/2.0 Some(\"fhir.example\") None"),
            (&[&b"http/1.1"[..]][..], "HTTP/1.1 None Some(\"fhir.example\")"),
        ] {
            let (addr, connections) = server(&ca, alpn).await;
            let upstream = Upstream::new(Dialer {
                addr,
                server_name: "127.0.0.1".into(),
                tls: Some(client.clone()),
                timeout: Duration::from_secs(5),
            });
            for _ in 0..3 {
                assert_eq!(text(upstream.send(request()).await.unwrap()).await, expect);
            }
            assert_eq!(connections.load(Ordering::Relaxed), 1, "{expect}");
        }
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let (addr, _) = server(&ca, &[b"h2"]).await;
        let client = client_config(&ServerAuth::CaFile(ca.cert_path()), &[b"h2"]).unwrap();
        let upstream = Upstream::new(Dialer {
            addr,
            server_name: "fhir.elsewhere.example".into(),
            tls: Some(client),
            timeout: Duration::from_secs(5),
        });
        let err = upstream.send(request()).await.unwrap_err();
        assert!(err.is_certificate(), "{err}");
    }
}
