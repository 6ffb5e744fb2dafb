//! The response body as the client receives it: the upstream's body
//! through the masker of its content type, chunk by chunk, counted; how it
//! ended goes to the request's audit record.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use super::{
    json::{JsonError, JsonMasker},
    text::TextMasker,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a body is passed through.
pub enum Filter {
    Json(Box<JsonMasker>),
    Text(TextMasker),
    /// An empty body by status or method (HEAD, 204, 304): nothing to mask.
    Empty,
}

/// How a response body ended, for the audit.
#[derive(Debug, Default)]
pub struct BodyEnd {
    pub bytes: u64,
    pub masked: u64,
    pub masked_fields: Vec<String>,
    /// Why it did not end normally: a masking error (the stream was cut:
    /// fail closed), the upstream's error, or the client leaving.
    pub error: Option<String>,
}

pub struct MaskedBody {
    inner: Incoming,
    filter: Filter,
    bytes: u64,
    done: Option<oneshot::Sender<BodyEnd>>,
}

impl MaskedBody {
    pub fn new(inner: Incoming, filter: Filter, done: oneshot::Sender<BodyEnd>) -> MaskedBody {
        MaskedBody {
            inner,
            filter,
            bytes: 0,
            done: Some(done),
        }
    }

    fn end(&mut self, error: Option<String>) {
        let (masked, masked_fields) = match &self.filter {
            Filter::Json(j) => (j.masked(), j.masked_fields()),
            Filter::Text(t) => (
                t.masked(),
                if t.masked() > 0 {
                    vec!["detector".into()]
                } else {
                    vec![]
                },
            ),
            Filter::Empty => (0, Vec::new()),
        };
        if let Some(done) = self.done.take() {
            let _ = done.send(BodyEnd {
                bytes: self.bytes,
                masked,
                masked_fields,
                error,
            });
        }
    }

    fn filter(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        match &mut self.filter {
            Filter::Json(j) => j.feed(data, out),
            Filter::Text(t) => {
                t.feed(data, out);
                Ok(())
            }
            // A body where none may be: dropped, never passed unmasked.
            Filter::Empty => Ok(()),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        match &mut self.filter {
            Filter::Json(j) => j.finish(out),
            Filter::Text(t) => {
                t.finish(out);
                Ok(())
            }
            Filter::Empty => Ok(()),
        }
    }
}

impl Body for MaskedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        // Trailers are dropped: they could carry what the
                        // body masked, and nothing here needs them.
                        Err(_) => continue,
                    };
                    let mut out = Vec::new();
                    if let Err(e) = this.filter(&frame, &mut out) {
                        return Poll::Ready(Some(Err(this.cut(e))));
                    }
                    if out.is_empty() {
                        continue;
                    }
                    this.bytes += out.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.end(Some(format!("upstream body: {e}")));
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(None) => {
                    let mut out = Vec::new();
                    if let Err(e) = this.finish(&mut out) {
                        return Poll::Ready(Some(Err(this.cut(e))));
                    }
                    this.bytes += out.len() as u64;
                    this.end(None);
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    // `done` is taken: the next poll ends the body.
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl MaskedBody {
    /// A body that cannot be masked is cut off: the client sees a broken
    /// transfer, never the unmasked rest.
    fn cut(&mut self, e: JsonError) -> BoxError {
        tracing::warn!(error = %e, "cutting a response body that cannot be masked");
        self.end(Some(format!("masking: {e}")));
        Box::new(e)
    }
}

impl Drop for MaskedBody {
    fn drop(&mut self) {
        self.end(Some("client left before the body ended".into()));
    }
}
