//! The HTTP transport object_store talks through: hyper's HTTP/1.1 client
//! over tokio and rustls (ring), with a small pool of kept-alive
//! connections per origin. object_store's own transport is reqwest, whose
//! rustls brings aws-lc; this keeps one TLS stack in the agent.
//!
//! Bodies are read whole within the request timeout (audit files and list
//! pages are small), so a stalled server cannot hang a caller and a
//! connection goes back to the pool as soon as its answer is read.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::client::conn::http1::{self, SendRequest};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse,
    HttpResponseBody, HttpService,
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Idle connections kept per origin.
const POOL_PER_ORIGIN: usize = 4;

/// Timeouts of one request.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// From sending the request to the last byte of the answer.
    pub request: Duration,
}

/// Hands object_store an [`HttpClient`] on this transport.
#[derive(Debug, Clone)]
pub struct Connector {
    service: Arc<Service>,
}

impl Connector {
    pub fn new(tls: Arc<ClientConfig>, timeouts: Timeouts) -> Self {
        Connector {
            service: Arc::new(Service {
                tls,
                timeouts,
                idle: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The same transport as a client of its own (policy bundles over HTTPS).
    pub fn client(&self) -> HttpClient {
        HttpClient::new(Shared(self.service.clone()))
    }
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(self.client())
    }
}

#[derive(Debug)]
struct Shared(Arc<Service>);

#[async_trait::async_trait]
impl HttpService for Shared {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.0.call(req).await
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

struct Service {
    tls: Arc<ClientConfig>,
    timeouts: Timeouts,
    idle: Mutex<HashMap<Origin, Vec<SendRequest<HttpRequestBody>>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("timeouts", &self.timeouts).finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

fn error(kind: HttpErrorKind, message: impl Into<String>) -> HttpError {
    HttpError::new(kind, std::io::Error::other(message.into()))
}

impl Service {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let uri = req.uri().clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(error(HttpErrorKind::Unknown, format!("unsupported scheme {other:?}"))),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| error(HttpErrorKind::Unknown, "URL without a host"))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let origin = Origin {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
        };
        // HTTP/1.1 origin form: the path in the request line, the authority
        // in Host (object_store signed it from the URL's authority).
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = path.parse().map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let host_value =
            http::HeaderValue::from_str(authority.as_str()).map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        req.headers_mut().insert(http::header::HOST, host_value);
        let mut sender = match self.take_idle(&origin) {
            Some(s) => s,
            None => self.connect(&origin).await?,
        };
        let exchange = async {
            let response = sender
                .send_request(req)
                .await
                .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e))?
                .to_bytes();
            Ok::<_, HttpError>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.timeouts.request, exchange)
            .await
            .map_err(|_| error(HttpErrorKind::Timeout, "request timed out"))??;
        let keep = !parts
            .headers
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if keep {
            self.put_idle(origin, sender);
        }
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::from(body)))
    }

    fn take_idle(&self, origin: &Origin) -> Option<SendRequest<HttpRequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(origin)?;
        while let Some(s) = list.pop() {
            if s.is_ready() && !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, origin: Origin, sender: SendRequest<HttpRequestBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(origin).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < POOL_PER_ORIGIN {
            list.push(sender);
        }
    }

    async fn connect(&self, origin: &Origin) -> Result<SendRequest<HttpRequestBody>, HttpError> {
        let connect = async {
            let tcp = TcpStream::connect((origin.host.as_str(), origin.port))
                .await
                .map_err(|e| HttpError::new(HttpErrorKind::Connect, e))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if origin.https {
                let name =
                    ServerName::try_from(origin.host.clone()).map_err(|e| HttpError::new(HttpErrorKind::Connect, e))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| HttpError::new(HttpErrorKind::Connect, e))?;
                Box::new(tls)
            } else {
                Box::new(tcp)
            };
            let (sender, connection) = http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| HttpError::new(HttpErrorKind::Connect, e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "object store connection ended");
                }
            });
            Ok(sender)
        };
        tokio::time::timeout(self.timeouts.connect, connect)
            .await
            .map_err(|_| error(HttpErrorKind::Connect, "connect timed out"))?
    }
}
