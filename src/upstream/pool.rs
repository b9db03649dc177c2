//! A small pool of HTTP/1.1 connections to one server.
//!
//! A request takes an idle connection from a lock-free queue and drives it
//! from its own task with keygate's HTTP/1.1 client (`super::h1`); its
//! response body hands the connection back when it ends cleanly. No task is
//! spawned and no lock is taken per request. WebSocket upgrades go through
//! hyper's client on a new connection each, which `hyper::upgrade` needs.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{header, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::h1;
use super::health::InFlight;
use crate::body::RequestBody;

/// Idle connections kept per server; more are closed when they finish.
const IDLE_PER_SERVER: usize = 512;

/// The most a hyper connection (health checks, upgrades) reads ahead of
/// the caller (hyper's minimum is 8 KiB, its default about 400 KiB).
const READ_BUF: usize = h1::READ_BUF;

/// A type-erased body error, as hyper's server takes it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    H1(#[from] h1::Error),
    #[error("no server of the upstream is up")]
    NoServer,
}

/// A request that failed, handed back when it was never sent.
pub struct Failed {
    pub error: SendError,
    pub unsent: Option<Request<RequestBody>>,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub address: String,
    /// Set for `https://` servers: the connector and the name to verify.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub connect_timeout: Duration,
}

/// Idle connections to one server.
pub struct Pool {
    idle: ArrayQueue<h1::Conn>,
    target: Target,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("address", &self.target.address).field("idle", &self.idle.len()).finish()
    }
}

impl Pool {
    /// An empty pool for `target`.
    pub fn new(target: Target) -> Arc<Pool> {
        Arc::new(Pool { idle: ArrayQueue::new(IDLE_PER_SERVER), target })
    }

    /// Send `req` on an idle connection, or on a new one. A failure hands
    /// the request back when it provably never left keygate.
    pub async fn send(self: &Arc<Self>, req: Request<RequestBody>) -> Result<Response<PooledBody>, Failed> {
        if req.headers().contains_key(header::UPGRADE) {
            return self.send_upgrade(req).await;
        }
        let (parts, body) = req.into_parts();
        let framing = h1::codec::Upload::of(body.is_end_stream(), body.size_hint().exact());
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut conn = loop {
            let (mut conn, reused) = match self.idle.pop() {
                Some(mut conn) => match conn.still_idle() {
                    true => (conn, true),
                    false => continue,
                },
                // Boxed: the connect and TLS handshake states would otherwise
                // be carried (and copied) in every request's future.
                None => match Box::pin(connect_io(&self.target)).await {
                    Ok(io) => (h1::Conn::new(io), false),
                    Err(error) => return Err(Failed { error, unsent: Some(Request::from_parts(parts, body)) }),
                },
            };
            match conn
                .write_head(|dst| h1::codec::encode_head(&parts.method, target, &parts.headers, framing, dst))
                .await
            {
                Ok(()) => break conn,
                // A kept-alive connection the server had closed: try another.
                Err((_, true)) if reused => continue,
                Err((error, unwritten)) => {
                    let unsent = unwritten.then(|| Request::from_parts(parts, body));
                    return Err(Failed { error: error.into(), unsent });
                }
            }
        };
        let mut upload = h1::Upload::new(body, framing);
        let head = match conn.response(&mut upload, parts.method == Method::HEAD).await {
            Ok(head) => head,
            Err(error) => return Err(Failed { error: error.into(), unsent: None }),
        };
        let home = head.keep_alive.then(|| self.clone());
        let mut response = Response::new(PooledBody::h1(h1::Body::new(conn, head.framing, upload, home)));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    /// A WebSocket upgrade, on a connection of its own driven by hyper.
    async fn send_upgrade(&self, req: Request<RequestBody>) -> Result<Response<PooledBody>, Failed> {
        let mut sender: SendRequest<RequestBody> = match Box::pin(connect(&self.target)).await {
            Ok(sender) => sender,
            Err(error) => return Err(Failed { error, unsent: Some(req) }),
        };
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response.map(PooledBody::hyper)),
            Err(mut e) => {
                let unsent = e.take_message();
                Err(Failed { error: e.into_error().into(), unsent })
            }
        }
    }

    /// Keep an idle connection; a full pool closes it by dropping it.
    pub(super) fn put(&self, conn: h1::Conn) {
        let _ = self.idle.push(conn);
    }

    /// Where this pool connects.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// Open a new HTTP/1.1 connection to `t` (TCP, then TLS for `https://`).
pub async fn connect<B>(t: &Target) -> Result<SendRequest<B>, SendError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    handshake(connect_io(t).await?).await
}

/// Open a new connection to `t` (TCP, then TLS for `https://`).
async fn connect_io(t: &Target) -> Result<h1::Io, SendError> {
    let tcp = tcp(t).await?;
    match &t.tls {
        None => Ok(h1::Io::Tcp(tcp)),
        Some((connector, name)) => {
            let tls = tokio::time::timeout(t.connect_timeout, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| SendError::ConnectTimeout)?
                .map_err(SendError::Tls)?;
            Ok(h1::Io::Tls(Box::new(tls)))
        }
    }
}

/// A TCP connection to `t` under its connect timeout, with Nagle off.
pub(super) async fn tcp(t: &Target) -> Result<TcpStream, SendError> {
    let tcp = match tokio::time::timeout(t.connect_timeout, TcpStream::connect(&t.address)).await {
        Err(_) => return Err(SendError::ConnectTimeout),
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn handshake<I, B>(io: I) -> Result<SendRequest<B>, SendError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = http1::Builder::new().writev(false).max_buf_size(READ_BUF).handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

enum Inner {
    /// HTTP/2, and HTTP/1.1 upgrades.
    Hyper(Incoming),
    H1(h1::Body),
}

/// An upstream response body; an HTTP/1.1 one returns its connection to
/// the pool when it ends.
pub struct PooledBody {
    inner: Inner,
    /// Counts this request as in flight until the body is done (least_requests).
    pub(crate) in_flight: Option<InFlight>,
    /// An HTTP/2 response's hold on its connection's stream count.
    stream: Option<super::http2::Stream>,
}

impl PooledBody {
    /// An HTTP/2 response body, holding its stream until it ends.
    pub(super) fn http2(inner: Incoming, stream: super::http2::Stream) -> PooledBody {
        let stream = (!inner.is_end_stream()).then_some(stream);
        PooledBody { inner: Inner::Hyper(inner), in_flight: None, stream }
    }

    fn hyper(inner: Incoming) -> PooledBody {
        PooledBody { inner: Inner::Hyper(inner), in_flight: None, stream: None }
    }

    fn h1(inner: h1::Body) -> PooledBody {
        PooledBody { inner: Inner::H1(inner), in_flight: None, stream: None }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            Inner::H1(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
        };
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if ended {
            this.in_flight = None;
        }
        if ended || matches!(polled, Poll::Ready(Some(Err(_)))) {
            this.stream = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(body) => body.is_end_stream(),
            Inner::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(body) => body.size_hint(),
            Inner::H1(body) => body.size_hint(),
        }
    }
}
