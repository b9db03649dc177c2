//! The two bodies of an exchange: the caller's request body on its way up
//! (`Upload`), and the server's response body on its way back (`Body`),
//! which hands its connection back to the pool when it ends cleanly.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::chunked::{Decoded, Decoder};
use super::codec::{self, Framing};
use super::{Conn, Error, Io};
use crate::body::RequestBody;
use crate::upstream::pool::Pool;

/// A request body being written to the server.
pub struct Upload {
    body: RequestBody,
    framing: codec::Upload,
    /// Bytes taken from the body and not yet written.
    pending: VecDeque<Bytes>,
    sent: u64,
    ended: bool,
}

impl Upload {
    /// An upload of `body`, framed as the head said; `None` when there is nothing to send.
    /// Boxed: most requests have none, and a response body carries it.
    pub fn new(body: RequestBody, framing: codec::Upload) -> Option<Box<Upload>> {
        let upload = Upload { body, framing, pending: VecDeque::new(), sent: 0, ended: false };
        (framing != codec::Upload::None).then(|| Box::new(upload))
    }

    /// Stop sending: the server answered or stopped reading.
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.ended = true;
    }

    /// Write what the body has until it ends (`Ready(Ok)`) or waits.
    pub fn poll_send(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while let Some(front) = self.pending.front_mut() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, front))?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Closed));
                }
                front.advance(n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
            }
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => self.end()?,
                Some(Err(e)) => return Poll::Ready(Err(Error::Body(e))),
                Some(Ok(frame)) => {
                    // Request trailers are not forwarded (hyper's client drops them too).
                    if let Ok(data) = frame.into_data() {
                        self.queue(data)?;
                    }
                }
            }
        }
    }

    fn queue(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        self.sent += data.len() as u64;
        match self.framing {
            codec::Upload::Length(n) if self.sent > n => return Err(mismatch()),
            codec::Upload::Chunked => {
                let size = format!("{:x}\r\n", data.len());
                self.pending.push_back(Bytes::from(size));
                self.pending.push_back(data);
                self.pending.push_back(Bytes::from_static(b"\r\n"));
            }
            _ => self.pending.push_back(data),
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), Error> {
        match self.framing {
            codec::Upload::Length(n) if self.sent != n => return Err(mismatch()),
            codec::Upload::Chunked => self.pending.push_back(Bytes::from_static(b"0\r\n\r\n")),
            _ => {}
        }
        self.ended = true;
        Ok(())
    }
}

fn mismatch() -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidData, "request body length differs from its Content-Length"))
}

/// How much of the response body is left.
#[derive(Debug)]
enum Reading {
    Length(u64),
    Chunked(Decoder),
    Close,
}

/// A response body read from its connection as the caller takes it.
pub struct Body {
    /// `None` once the body has ended (the connection is back in the pool or closed).
    conn: Option<Conn>,
    reading: Reading,
    /// The rest of a request body the server answered before reading all of it.
    upload: Option<Box<Upload>>,
    /// Where the connection goes back to, when it may carry another request.
    home: Option<Arc<Pool>>,
}

impl Body {
    /// The body announced by `framing`, read from `conn`; `home` when the
    /// connection may be reused after it.
    pub fn new(conn: Conn, framing: Framing, upload: Option<Box<Upload>>, home: Option<Arc<Pool>>) -> Body {
        let reading = match framing {
            Framing::Empty => Reading::Length(0),
            Framing::Length(n) => Reading::Length(n),
            Framing::Chunked => Reading::Chunked(Decoder::default()),
            Framing::Close => Reading::Close,
        };
        let mut body = Body { conn: Some(conn), reading, upload, home };
        if framing == Framing::Empty {
            body.finish();
        }
        body
    }

    /// The body ended cleanly: the connection goes back when nothing is
    /// left on it (no upload under way, no byte beyond the response).
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.upload.is_none() && conn.reusable && conn.buf.is_empty() {
            if let Some(pool) = self.home.take() {
                pool.put(conn);
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Carry on with an upload the response overtook.
    fn drive_upload(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        let (Some(upload), Some(conn)) = (self.upload.as_mut(), self.conn.as_mut()) else { return Ok(()) };
        match upload.poll_send(&mut conn.io, cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.upload = None;
                Ok(())
            }
            Poll::Ready(Err(e @ Error::Body(_))) => Err(e),
            Poll::Ready(Err(_)) => {
                // The server stopped reading; its answer may still be whole.
                upload.abandon();
                conn.reusable = false;
                Ok(())
            }
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Err(e) = this.drive_upload(cx) {
            return this.fail(e);
        }
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let frame = match &mut this.reading {
                Reading::Length(left) if !conn.buf.is_empty() => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(conn.buf.len());
                    *left -= n as u64;
                    Some(Frame::data(conn.buf.split_to(n).freeze()))
                }
                Reading::Close if !conn.buf.is_empty() => Some(Frame::data(conn.buf.split().freeze())),
                Reading::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Err(e) => return this.fail(e.into()),
                    Ok(Decoded::Data(data)) => Some(Frame::data(data)),
                    Ok(Decoded::End(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::NeedMore) => None,
                },
                Reading::Length(_) | Reading::Close => None,
            };
            if let Some(frame) = frame {
                if matches!(this.reading, Reading::Length(0)) {
                    this.finish();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            match ready!(conn.poll_fill(cx)) {
                Err(e) => return this.fail(e.into()),
                Ok(0) if matches!(this.reading, Reading::Close) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Closed),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}
