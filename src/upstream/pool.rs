//! A small pool of HTTP/1.1 connections to one server.
//!
//! Each connection is driven by one task for its whole life; a request takes
//! an idle connection from a lock-free queue and its response body hands the
//! connection back when it ends. No task is spawned and no lock is taken per
//! request (the legacy pooled client does both).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::health::InFlight;
use crate::body::RequestBody;

type Sender = SendRequest<RequestBody>;

/// Idle connections kept per server; more are closed when they finish.
const IDLE_PER_SERVER: usize = 512;

/// The most an upstream connection reads ahead of the caller (hyper's
/// minimum is 8 KiB, its default about 400 KiB). A response body is read
/// only as the caller takes it, so a caller that stops reading leaves at most
/// this much (and one chunk on its way) buffered per upstream connection,
/// and the upstream's writes stall in its own socket buffers.
const READ_BUF: usize = 8 * 1024;

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
    idle: ArrayQueue<Sender>,
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
    pub async fn send(self: &Arc<Self>, mut req: Request<RequestBody>) -> Result<Response<PooledBody>, Failed> {
        while let Some(mut sender) = self.idle.pop() {
            if sender.is_closed() || (!sender.is_ready() && !self.wait_ready(&mut sender).await) {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.wrap(response, sender)),
                // The connection closed before the request was written: try another.
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(Failed { error: e.into_error().into(), unsent: None }),
                },
            }
        }
        // Boxed: the connect and TLS handshake states would otherwise be
        // carried (and copied) in every request's future.
        let mut sender = match Box::pin(connect(&self.target)).await {
            Ok(sender) => sender,
            Err(error) => return Err(Failed { error, unsent: Some(req) }),
        };
        match sender.try_send_request(req).await {
            Ok(response) => Ok(self.wrap(response, sender)),
            Err(mut e) => {
                let unsent = e.take_message();
                Err(Failed { error: e.into_error().into(), unsent })
            }
        }
    }

    /// A returned connection may not have finished its last exchange yet.
    async fn wait_ready(&self, sender: &mut Sender) -> bool {
        matches!(tokio::time::timeout(self.target.connect_timeout, sender.ready()).await, Ok(Ok(())))
    }

    fn wrap(self: &Arc<Self>, response: Response<Incoming>, sender: Sender) -> Response<PooledBody> {
        let upgrading = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let mut reuse = (!upgrading).then(|| (sender, self.clone()));
        if response.body().is_end_stream() {
            give_back(&mut reuse);
        }
        response.map(|inner| PooledBody { inner, reuse, in_flight: None, stream: None })
    }

    fn put(&self, sender: Sender) {
        // A full pool closes the extra connection by dropping it.
        let _ = self.idle.push(sender);
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
    let tcp = tcp(t).await?;
    match &t.tls {
        None => handshake(tcp).await,
        Some((connector, name)) => {
            let tls = tokio::time::timeout(t.connect_timeout, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| SendError::ConnectTimeout)?
                .map_err(SendError::Tls)?;
            handshake(tls).await
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

fn give_back(reuse: &mut Option<(Sender, Arc<Pool>)>) {
    if let Some((sender, pool)) = reuse.take() {
        pool.put(sender);
    }
}

/// An upstream response body that returns its connection to the pool when it ends.
pub struct PooledBody {
    inner: Incoming,
    reuse: Option<(Sender, Arc<Pool>)>,
    /// Counts this request as in flight until the body is done (least_requests).
    pub(crate) in_flight: Option<InFlight>,
    /// An HTTP/2 response's hold on its connection's stream count.
    stream: Option<super::http2::Stream>,
}

impl PooledBody {
    /// An HTTP/2 response body, holding its stream until it ends.
    pub(super) fn http2(inner: Incoming, stream: super::http2::Stream) -> PooledBody {
        let stream = (!inner.is_end_stream()).then_some(stream);
        PooledBody { inner, reuse: None, in_flight: None, stream }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                give_back(&mut this.reuse);
                this.in_flight = None;
                this.stream = None;
            }
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                give_back(&mut this.reuse);
                this.in_flight = None;
                this.stream = None;
            }
            // A broken body means a broken connection: drop it.
            Poll::Ready(Some(Err(_))) => {
                this.reuse = None;
                this.stream = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
