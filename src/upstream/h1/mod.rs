//! keygate's own HTTP/1.1 client for the upstream hop, driven from the
//! request's task: the head is written straight from the request's parts in
//! one write, the response head is parsed in place, and the response body is
//! read from the socket only as the caller takes it. No task, channel or
//! lock stands between a request and its connection (hyper's client hands
//! every request to a connection task and every response back). WebSocket
//! upgrades still go through hyper (`pool::Pool::send`).

pub mod body;
pub mod chunked;
pub mod codec;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::BodyError;
pub use body::{Body, Upload};
pub use codec::{Head, ParseError};

/// The read buffer's growth step: a caller that stops reading leaves at
/// most about this much of a response buffered per upstream connection
/// (the upstream's further writes stall in the sockets' buffers).
pub const READ_BUF: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before a complete response")]
    Closed,
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The caller's body failed (too large, idle, broken): not the server's fault.
    #[error(transparent)]
    Body(#[from] BodyError),
}

/// A plain or TLS stream to a server.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One connection to a server, idle or carrying one exchange.
pub struct Conn {
    io: Io,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written.
    out: BytesMut,
    /// False once an exchange left it in an unknown state (an upload cut short).
    reusable: bool,
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn { io, buf: BytesMut::new(), out: BytesMut::new(), reusable: true }
    }

    /// Whether an idle connection can carry a request: nothing arrived on
    /// it while idle (a close, or bytes no request asked for). Costs no
    /// system call unless the socket was signalled readable.
    pub fn still_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        self.buf.is_empty() && Pin::new(&mut self.io).poll_read(&mut cx, &mut probe).is_pending()
    }

    /// Write the head `encode` puts in the connection's write buffer (kept
    /// from one request to the next); `Err((_, true))` when none of it was
    /// written (the request may go on another connection).
    pub async fn write_head(&mut self, encode: impl FnOnce(&mut BytesMut)) -> Result<(), (Error, bool)> {
        self.out.clear();
        encode(&mut self.out);
        let mut written = 0;
        while written < self.out.len() {
            let rest = self.out.get(written..).unwrap_or_default();
            match poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, rest)).await {
                Ok(0) => return Err((Error::Closed, written == 0)),
                Ok(n) => written += n,
                Err(e) => return Err((e.into(), written == 0)),
            }
        }
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await.map_err(|e| (e.into(), false))
    }

    /// Read more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_BUF);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Send the request body (if any) while waiting for the final response
    /// head; the upload goes on in the response body when the head comes first.
    pub async fn response(&mut self, upload: &mut Option<Box<Upload>>, head_request: bool) -> Result<Head, Error> {
        poll_fn(|cx| {
            if let Some(u) = upload.as_mut() {
                match u.poll_send(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => *upload = None,
                    Poll::Ready(Err(e @ Error::Body(_))) => return Poll::Ready(Err(e)),
                    // The server stopped reading: it may still have answered.
                    Poll::Ready(Err(_)) => {
                        u.abandon();
                        self.reusable = false;
                    }
                    Poll::Pending => {}
                }
            }
            self.poll_head(cx, head_request)
        })
        .await
    }

    fn poll_head(&mut self, cx: &mut Context<'_>, head_request: bool) -> Poll<Result<Head, Error>> {
        loop {
            match codec::parse_head(&mut self.buf, head_request)? {
                codec::Parsed::Final(head) => return Poll::Ready(Ok(head)),
                codec::Parsed::Interim => continue,
                codec::Parsed::Partial => {}
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }
}
