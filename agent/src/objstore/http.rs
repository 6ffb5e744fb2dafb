//! object_store's transport: its requests go through the agent's own HTTP
//! client ([`crate::http::HttpClient`]) instead of reqwest, whose rustls
//! brings aws-lc; one TLS stack stays in the agent. Request bodies are
//! collected first (audit files and list pages are small); answers are read
//! whole within the request timeout.
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use object_store::client::{
    ClientOptions, HttpClient as StoreClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use rustls::ClientConfig;
use std::sync::Arc;

pub use crate::http::Timeouts;
use crate::http::{FetchError, HttpClient};

/// The largest answer read (a segment file read back for comparison).
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// Hands object_store an [`StoreClient`] on our transport.
#[derive(Debug, Clone)]
pub struct Connector {
    http: HttpClient,
}

impl Connector {
    pub fn new(tls: Arc<ClientConfig>, timeouts: Timeouts) -> Self {
        Connector {
            http: HttpClient::new(tls, timeouts),
        }
    }

    /// The same transport as a client of its own (policy bundles over HTTPS,
    /// presigned uploads).
    pub fn client(&self) -> StoreClient {
        StoreClient::new(Service(self.http.clone()))
    }
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<StoreClient> {
        Ok(self.client())
    }
}

#[derive(Debug)]
struct Service(HttpClient);

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?
            .to_bytes();
        let request = http::Request::from_parts(parts, Full::new(body));
        let response = self.0.send(request, MAX_RESPONSE).await.map_err(|e| {
            let kind = match e {
                FetchError::Connect(_) | FetchError::Tls(_) => HttpErrorKind::Connect,
                FetchError::Timeout => HttpErrorKind::Timeout,
                FetchError::TooLarge(_) => HttpErrorKind::Decode,
                _ => HttpErrorKind::Request,
            };
            HttpError::new(kind, e)
        })?;
        let (parts, body): (_, Bytes) = response.into_parts();
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::from(body)))
    }
}
