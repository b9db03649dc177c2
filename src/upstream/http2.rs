//! HTTP/2 connections to one server (`protocol = "http2"`).
//!
//! Requests share a connection. hyper does not say when a connection is at
//! the server's stream limit (it queues the request inside the connection,
//! without bound: hyper#3623), so the pool counts the streams it has open on
//! each connection itself: a connection carrying `STREAMS_PER_CONNECTION`
//! streams, or going away (GOAWAY), takes no more; the next request opens a
//! new connection, up to `MAX_CONNECTIONS` per server. Beyond
//! `MAX_CONNECTIONS × STREAMS_PER_CONNECTION` streams, requests wait for a
//! free one (bounded by the upstream's `request_timeout`).
//!
//! A request finds a connection without taking a lock (the list is an
//! `ArcSwap`, each connection's stream count an atomic it claims a slot in).
//! Connections are opened one at a time per server, so a burst of requests
//! fills one connection before opening the next; when an attempt fails, the
//! requests that waited for it fail with it instead of each trying again.

use std::io;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body::Body;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pool::{self, PooledBody, SendError, Target};
use super::replay::{self, Replay};
use crate::body::RequestBody;
use crate::metrics::Held;

/// Streams keygate opens on one connection before opening another: the
/// least RFC 9113 asks a server to allow. A server allowing fewer makes
/// hyper queue the rest inside the connection, still bounded by this.
pub const STREAMS_PER_CONNECTION: usize = 100;
/// Connections per server.
pub const MAX_CONNECTIONS: usize = 16;
/// Flow-control window per stream: what the server may send ahead of the
/// caller, and so the most keygate buffers for a caller that stops reading
/// (the same as the listener's towards callers).
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Flow-control window per connection: room for every stream's window, so a
/// caller that stops reading never stalls the others sharing the connection.
pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW * STREAMS_PER_CONNECTION as u32;
/// A PING this often (also while idle) finds dead connections...
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// ...which are closed when the answer takes longer than this.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per request: connections that closed before taking it, and
/// one refusal.
const ATTEMPTS: usize = 4;

type Sender = SendRequest<Replay>;

/// The server's `keygate_upstream_connections` and `keygate_upstream_streams`.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub connections: Gauge<i64, AtomicI64>,
    pub streams: Gauge<i64, AtomicI64>,
}

/// One connection and the streams keygate has open on it.
struct Conn {
    sender: Sender,
    streams: AtomicUsize,
    gauges: Gauges,
}

impl Conn {
    fn open_stream(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.gauges.streams.inc();
    }
}

/// A stream's hold on its connection (and on the server's stream budget),
/// released when the response body ends or is dropped.
pub struct Stream {
    conn: Arc<Conn>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::Relaxed);
        self.conn.gauges.streams.dec();
    }
}

/// The HTTP/2 connections to one server.
pub struct Pool {
    target: Target,
    /// Read without a lock; replaced (closed ones dropped) while `opening` is held.
    conns: ArcSwap<Vec<Arc<Conn>>>,
    /// Held while a connection is being opened.
    opening: tokio::sync::Mutex<()>,
    /// Connection attempts so far, and the number of the last that failed.
    attempts: AtomicU64,
    last_failed: AtomicU64,
    budget: Arc<Semaphore>,
    /// Set once the metrics are published (`report::publish_metrics`).
    pub gauges: OnceLock<Gauges>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Pool").field("address", &self.target.address).finish()
    }
}

impl Pool {
    /// An empty pool for `target` (its TLS connector, if any, offers `h2`).
    pub fn new(target: Target) -> Arc<Pool> {
        Arc::new(Pool {
            target,
            conns: ArcSwap::from_pointee(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
            budget: Arc::new(Semaphore::new(MAX_CONNECTIONS * STREAMS_PER_CONNECTION)),
            gauges: OnceLock::new(),
        })
    }

    /// Send `call` on a connection with room, trying another connection when
    /// one closed or went away before taking it, and once more when the
    /// server refused the stream unread (REFUSED_STREAM, or beyond GOAWAY's
    /// last stream) and the body read so far was kept. Each attempt gets a
    /// copy of the head (hyper consumes the request). On failure,
    /// `call.resendable()` says whether another server may have it.
    pub async fn send(&self, call: &mut Call) -> Result<Response<PooledBody>, SendError> {
        let mut permit = self.budget.clone().acquire_owned().await.ok();
        let mut last = SendError::Connect(io::Error::other("connections kept closing"));
        // After a refusal, the connection that refused.
        let mut avoid: Option<Arc<Conn>> = None;
        for _ in 0..ATTEMPTS {
            let Some(body) = call.body.attempt() else { break };
            let mut stream = Stream { conn: self.reserve(avoid.as_ref()).await?, permit: None };
            let mut sender = stream.conn.sender.clone();
            match sender.try_send_request(copy(&call.head, body)).await {
                Ok(response) => {
                    call.body.forget();
                    stream.permit = permit.take();
                    return Ok(response.map(|body| PooledBody::http2(body, stream)));
                }
                // The connection closed (or went away) before taking it.
                Err(e) if e.message().is_some() => avoid = Some(stream.conn.clone()),
                Err(e) => {
                    let error = e.into_error();
                    let again = !call.refused && refused_unread(&error);
                    if !again {
                        call.spent = true;
                        return Err(error.into());
                    }
                    call.refused = true;
                    avoid = Some(stream.conn.clone());
                    last = error.into();
                    tracing::debug!(server = %self.target.address, "stream refused unread: sending it once more");
                }
            }
        }
        // Only refusals and closed connections get here: nothing was processed.
        Err(last)
    }

    /// A stream slot on an open connection with room (not `avoid`), or on a new one.
    async fn reserve(&self, avoid: Option<&Arc<Conn>>) -> Result<Arc<Conn>, SendError> {
        if let Some(conn) = self.with_room(avoid) {
            return Ok(conn);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let _opening = self.opening.lock().await;
        if let Some(conn) = self.with_room(avoid) {
            return Ok(conn);
        }
        let last = self.attempts.load(Ordering::Acquire);
        if last != seen && self.last_failed.load(Ordering::Acquire) == last {
            // The attempt this request waited for failed: fail with it.
            return Err(SendError::Connect(io::Error::other("connection attempt failed")));
        }
        let attempt = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        let gauges = self.gauges.get().cloned().unwrap_or_default();
        match connect(&self.target, Some(gauges.connections.clone())).await {
            Ok(sender) => {
                let conn = Arc::new(Conn { sender, streams: AtomicUsize::new(0), gauges });
                conn.open_stream();
                let mut next: Vec<Arc<Conn>> =
                    self.conns.load().iter().filter(|c| !c.sender.is_closed()).cloned().collect();
                next.push(conn.clone());
                self.conns.store(Arc::new(next));
                Ok(conn)
            }
            Err(e) => {
                self.last_failed.store(attempt, Ordering::Release);
                Err(e)
            }
        }
    }

    /// A connection below its stream count, its count raised by one. At
    /// `MAX_CONNECTIONS`, the least loaded one (the budget bounds the queue).
    fn with_room(&self, avoid: Option<&Arc<Conn>>) -> Option<Arc<Conn>> {
        let conns = self.conns.load();
        let usable = |c: &&Arc<Conn>| !c.sender.is_closed() && !avoid.is_some_and(|a| Arc::ptr_eq(a, c));
        for conn in conns.iter().filter(usable).filter(|c| c.sender.is_ready()) {
            if conn.streams.fetch_add(1, Ordering::AcqRel) < STREAMS_PER_CONNECTION {
                conn.gauges.streams.inc();
                return Some(conn.clone());
            }
            conn.streams.fetch_sub(1, Ordering::AcqRel);
        }
        if conns.iter().filter(usable).count() < MAX_CONNECTIONS {
            return None;
        }
        let conn = conns.iter().filter(usable).min_by_key(|c| c.streams.load(Ordering::Relaxed))?;
        conn.open_stream();
        Some(conn.clone())
    }

    /// Open connections and the streams on them, for metrics.
    pub fn load(&self) -> (usize, usize) {
        let conns = self.conns.load();
        let open = conns.iter().filter(|c| !c.sender.is_closed()).count();
        (open, conns.iter().map(|c| c.streams.load(Ordering::Relaxed)).sum())
    }

    /// Where this pool connects.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// The request again, for one attempt: hyper consumes what it is given.
fn copy(head: &http::request::Parts, body: Replay) -> Request<Replay> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

/// A request on its way to an HTTP/2 upstream, across its attempts.
pub struct Call {
    pub head: http::request::Parts,
    body: replay::Shared,
    /// A refusal was already answered with a second attempt.
    refused: bool,
    /// It may have reached a server: never send it again.
    spent: bool,
}

impl Call {
    pub fn new(req: Request<RequestBody>) -> Call {
        let (head, body) = req.into_parts();
        Call { head, body: replay::Shared::new(body), refused: false, spent: false }
    }

    /// Whether another server may be sent this call after a failure.
    pub fn resendable(&self) -> bool {
        !self.spent && self.body.can_replay()
    }
}

/// Whether the server refused the stream without processing it: RFC 9113
/// §8.7 makes such a request safe to send again.
fn refused_unread(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let refused = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            // Streams beyond a graceful GOAWAY's last id were not processed.
            let beyond = h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
            return refused || beyond;
        }
        source = err.source();
    }
    false
}

/// Open a new HTTP/2 connection to `t`: TCP, then for `https://` TLS whose
/// ALPN must have chosen `h2`. `open` counts it while it lives.
pub async fn connect<B>(t: &Target, open: Option<Gauge<i64, AtomicI64>>) -> Result<SendRequest<B>, SendError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = pool::tcp(t).await?;
    let Some((connector, name)) = &t.tls else { return handshake(tcp, open).await };
    let tls = tokio::time::timeout(t.connect_timeout, connector.connect(name.clone(), tcp))
        .await
        .map_err(|_| SendError::ConnectTimeout)?
        .map_err(SendError::Tls)?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        let e = io::Error::other("the server did not offer HTTP/2 (ALPN h2); set protocol = \"http1\"");
        return Err(SendError::Tls(e));
    }
    handshake(tls, open).await
}

async fn handshake<I, B>(io: I, open: Option<Gauge<i64, AtomicI64>>) -> Result<SendRequest<B>, SendError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await?;
    let held = open.as_ref().map(Held::new);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
        drop(held);
    });
    Ok(sender)
}
