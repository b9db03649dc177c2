//! A request body that can be sent a second time, for HTTP/2 requests the
//! server refused without reading them (REFUSED_STREAM, or a stream beyond
//! the last one a GOAWAY accepted). hyper hands such a request's body to the
//! connection before the refusal arrives, so the chunks read are kept (the
//! `Bytes` themselves, not copies) up to `KEEP` bytes; a body longer than
//! that is not resent.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

use crate::body::{BodyError, RequestBody};

/// The most of a body kept for a second attempt (a gRPC call's request
/// messages are usually far smaller).
pub const KEEP: usize = 64 * 1024;

#[derive(Default)]
struct Kept {
    body: Option<RequestBody>,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    bytes: usize,
    /// More than `KEEP` was read: no second attempt.
    overflow: bool,
    ended: bool,
}

/// What was read of a body, shared by its attempts.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Kept>>);

impl Shared {
    /// Keep what is read of `body`.
    pub fn new(body: RequestBody) -> Shared {
        Shared(Arc::new(Mutex::new(Kept { body: Some(body), ..Kept::default() })))
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The body from its start, or `None` when too much was read to keep it.
    pub fn attempt(&self) -> Option<Replay> {
        (!self.lock().overflow).then(|| Replay { shared: self.clone(), next: 0, trailers_sent: false })
    }

    /// No further attempt will be made: keep nothing more.
    pub fn forget(&self) {
        let mut kept = self.lock();
        kept.overflow = true;
        kept.chunks = Vec::new();
    }

    /// Whether all that was read of the body is kept.
    pub fn can_replay(&self) -> bool {
        !self.lock().overflow
    }
}

/// One attempt's view of the body: the kept chunks again, then the rest.
pub struct Replay {
    shared: Shared,
    next: usize,
    trailers_sent: bool,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let mut kept = this.shared.lock();
        if let Some(chunk) = kept.chunks.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if kept.ended {
            let trailers = kept.trailers.clone().filter(|_| !this.trailers_sent);
            this.trailers_sent = true;
            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
        }
        let Some(body) = kept.body.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => keep(&mut kept, frame, &mut this.next, &mut this.trailers_sent),
            Poll::Ready(None) => kept.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let kept = self.shared.lock();
        if self.next < kept.chunks.len() {
            return false;
        }
        match (kept.ended, &kept.body) {
            (true, _) => kept.trailers.is_none() || self.trailers_sent,
            (false, Some(body)) => body.is_end_stream(),
            (false, None) => true,
        }
    }
}

/// Keep a chunk (or the trailers) read from the caller for a later attempt.
fn keep(kept: &mut Kept, frame: &Frame<Bytes>, next: &mut usize, trailers_sent: &mut bool) {
    if let Some(trailers) = frame.trailers_ref() {
        kept.trailers = Some(trailers.clone());
        kept.ended = true;
        *trailers_sent = true;
        return;
    }
    let Some(data) = frame.data_ref() else { return };
    if kept.overflow {
        return;
    }
    if kept.bytes + data.len() > KEEP {
        kept.overflow = true;
        kept.chunks = Vec::new();
        return;
    }
    kept.bytes += data.len();
    kept.chunks.push(data.clone());
    *next = kept.chunks.len();
}
