//! Body types: request bodies streamed to the upstream under a size limit
//! and an idle timeout, and response bodies that finish the access record.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::access_log::Record;
use crate::proxy::in_flight::Permit;
use crate::upstream::pool::BoxError;
use crate::upstream::PooledBody;

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than the route's max_body")]
    TooLarge,
    #[error("request body idle for longer than body_timeout")]
    Idle,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A caller's request body on its way upstream.
pub struct RequestBody {
    inner: Incoming,
    remaining: Option<u64>,
    idle_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    /// Stream `inner`, refusing more than `limit` bytes and gaps longer than `idle_timeout`.
    pub fn new(inner: Incoming, limit: Option<u64>, idle_timeout: Duration) -> RequestBody {
        // Bodiless requests (most GETs) need no timer.
        let idle = (!inner.is_end_stream()).then(|| Box::pin(tokio::time::sleep(idle_timeout)));
        RequestBody { inner, remaining: limit, idle_timeout, idle }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            if let Some(idle) = this.idle.as_mut() {
                ready!(idle.as_mut().poll(cx));
                return Poll::Ready(Some(Err(BodyError::Idle)));
            }
            return Poll::Pending;
        };
        if let Some(idle) = this.idle.as_mut() {
            idle.as_mut().reset(Instant::now() + this.idle_timeout);
        }
        let frame = match frame {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => frame,
        };
        if let (Some(remaining), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
            let len = data.len() as u64;
            if len > *remaining {
                return Poll::Ready(Some(Err(BodyError::TooLarge)));
            }
            *remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(PooledBody),
}

/// A response body: keygate's own (JSON errors, admin pages) or the upstream's,
/// streamed. Dropping it completes the request's access record.
///
/// The upstream's body is polled only as fast as the caller takes it (hyper
/// asks for the next frame once its write buffer has room): a caller that
/// stops reading stops the upstream connection's reads too, and the bytes in
/// between are bounded by the two connections' buffers (see the listener and
/// the upstream pool), not by the response's size.
pub struct ResponseBody {
    kind: Kind,
    record: Option<Box<Record>>,
    /// The request's in-flight slots, given back when the body ends.
    permit: Option<Permit>,
}

impl ResponseBody {
    /// A body held in memory.
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody { kind: Kind::Full(Some(bytes.into())), record: None, permit: None }
    }

    /// No body.
    pub fn empty() -> ResponseBody {
        ResponseBody { kind: Kind::Full(None), record: None, permit: None }
    }

    /// The upstream's body, streamed.
    pub fn upstream(body: PooledBody) -> ResponseBody {
        ResponseBody { kind: Kind::Upstream(body), record: None, permit: None }
    }

    /// Attach the access record finished when this body is done.
    pub fn with_record(mut self, record: Box<Record>) -> ResponseBody {
        self.record = Some(record);
        self
    }

    /// Hold the request's in-flight slots until this body ends.
    pub fn holding(mut self, permit: Permit) -> ResponseBody {
        self.permit = Some(permit);
        self
    }

    /// A gRPC call's status arrives in the upstream's trailers.
    fn grpc_status(&mut self, trailers: Option<&http::HeaderMap>) {
        if let (Some(r), Some(t)) = (self.record.as_mut().filter(|r| r.grpc), trailers) {
            r.grpc_status = crate::proxy::grpc::status(t).or(r.grpc_status);
        }
    }

    fn count(&mut self, n: usize) {
        if let Some(r) = self.record.as_mut() {
            r.bytes += n as u64;
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match &mut this.kind {
            Kind::Full(bytes) => bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b))),
            Kind::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)),
        };
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(|f| f.data_ref().map_or(0, Bytes::len))) {
            this.count(data);
        }
        if let Some(Ok(trailers)) = frame.as_ref().map(|f| f.as_ref().map(Frame::trailers_ref)) {
            this.grpc_status(trailers);
        }
        if frame.is_none() {
            // Ended: the slots are free before hyper drops the body.
            this.permit = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}
