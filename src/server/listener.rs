//! The accept loop. It only accepts: each connection is spawned at once, and
//! its TLS handshake and HTTP work happen in its own task.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::StatusCode;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::accept;
use super::idle::{Activity, IdleIo, ReadReady, Timeouts, Tracked};
use crate::config::Listen;
use crate::metrics::Held;
use crate::proxy::tunnel::Slot;
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;

/// An HTTP/1 connection idle this long gives hyper's buffers back (see
/// [`super::idle`]) and stays open at about 3 KiB. Short, because freed
/// buffers are reused only by connections that are busy at the same time;
/// a connection busier than this never parks, one that is not pays for
/// parking and a fresh hyper connection (about 9,500 instructions, 3 µs)
/// on its next request.
const PARK_AFTER: Duration = Duration::from_millis(50);

/// The HTTP/2 client preface: a plain connection that starts with it speaks
/// HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first read of a plain connection: room for a typical request head
/// (a larger one is read on by hyper), small enough for the allocator's
/// fast path.
const SNIFF_BYTES: usize = 1024;

/// Fires once when the listener starts draining.
type Drain = watch::Receiver<()>;

/// Serve connections from `listener` until `shutdown` resolves, then let
/// in-flight requests finish for up to `listen.shutdown_grace`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let max = shared.snapshot.load().config.listen.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let (drain_tx, drain) = watch::channel(());
    let mut failures = accept::Failures::new(&shared.metrics.accept_errors);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, keep serving the rest.
                    if let Some(wait) = failures.failed(&e, std::time::Instant::now()) {
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    continue;
                }
            },
        };
        failures.accepted();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, max, "connection refused: max_connections reached");
            drop(tcp);
            continue;
        };
        // Held by the connection, and by the tunnel it may become.
        let slot = Slot::new(permit, &shared.metrics.connections);
        let shared = shared.clone();
        let drain = drain.clone();
        tokio::spawn(connection(tcp, remote, shared, drain, slot));
    }
    drop(listener);
    let _ = drain_tx.send(());
    // Every connection's task holds a slot: all slots free means all done.
    let grace = shared.snapshot.load().config.listen.shutdown_grace;
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
        let tunnels = shared.tunnels.close_all();
        tracing::warn!(?grace, tunnels, "shutdown grace elapsed with requests or tunnels still open");
    }
}

async fn connection(mut tcp: TcpStream, remote: SocketAddr, shared: Arc<Shared>, drain: Drain, slot: Slot) {
    let _ = tcp.set_nodelay(true);
    // Held only while a PROXY header is read (bounded by header_read_timeout);
    // then copied out and let go: a held connection must not keep a whole
    // configuration (every key) alive after a reload.
    let snap = shared.snapshot.load_full();
    let Some(remote) = super::proxy_protocol::accept(&mut tcp, remote, &snap.config.listen).await else { return };
    let (limits, tls) = (Limits::of(&snap.config.listen), snap.tls.clone());
    drop(snap);
    match tls {
        None => {
            let info = ConnInfo::new(remote, false, None).holding(slot);
            http(tcp, None, info, shared, limits, drain).await;
        }
        Some(config) => {
            // Boxed, handshake and stream: rustls' state (over 1 KiB) would
            // otherwise size every connection's task, plain ones included.
            let timeout = limits.header_read_timeout;
            let accepted = Box::pin(async move {
                let stream = super::tls::accept(config, tcp, timeout).await?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok::<_, super::tls::HandshakeError>((super::tls::peer_subject(&stream), h2, Box::new(stream)))
            })
            .await;
            match accepted {
                Ok((subject, h2, stream)) => {
                    let info = ConnInfo::new(remote, true, subject).holding(slot);
                    http(stream, Some(h2), info, shared, limits, drain).await;
                }
                Err(e) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
            }
        }
    }
}

/// What a connection keeps of the configuration it was accepted under.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
    max_header_bytes: usize,
    max_headers: usize,
    max_concurrent_streams: u32,
}

impl Limits {
    fn of(listen: &Listen) -> Limits {
        Limits {
            header_read_timeout: listen.header_read_timeout,
            idle_timeout: listen.idle_timeout,
            send_timeout: listen.send_timeout,
            max_header_bytes: listen.max_header_bytes,
            max_headers: listen.max_headers,
            max_concurrent_streams: listen.max_concurrent_streams,
        }
    }
}

/// HTTP/2 data buffered per stream towards the caller (hyper's default is
/// 400 KiB): with 100 streams whose caller does not read, 6.4 MiB, not 40.
const H2_SEND_BUF: usize = 64 * 1024;

/// HTTP/2 receive windows: request body bytes a caller may send ahead of
/// keygate's reads, per stream and per connection (hyper's defaults: 1 MiB each).
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONN_WINDOW: u32 = 1024 * 1024;

/// hyper's own header limits sit this many times above keygate's, so that
/// keygate sees a request between the two and answers its JSON 431
/// ([`crate::proxy::framing`]); beyond them hyper answers a bare 431 or resets.
const HYPER_HEADER_MARGIN: usize = 2;

fn http1_builder(limits: &Limits) -> http1::Builder {
    let head_bytes = limits.max_header_bytes.saturating_mul(HYPER_HEADER_MARGIN);
    let mut b = http1::Builder::new();
    // No hyper header_read_timeout: it would also cut idle keep-alive
    // connections; `IdleIo` keeps both deadlines apart.
    b.header_read_timeout(None)
        .max_buf_size(head_bytes.max(8192))
        .max_headers(limits.max_headers.saturating_mul(HYPER_HEADER_MARGIN))
        .writev(false)
        .keep_alive(true);
    b
}

fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let head_bytes = limits.max_header_bytes.saturating_mul(HYPER_HEADER_MARGIN);
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(head_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(100))
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout)
        .max_send_buf_size(H2_SEND_BUF)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW);
    b
}

/// Read far enough into a plain connection to tell an HTTP/2 preface from an
/// HTTP/1 request (under the head deadline), and put the bytes back.
///
/// The first read takes up to 1 KiB (most request heads), not just the 24 bytes
/// of the preface: one `recv` instead of two on every new connection.
async fn sniff_h2<I: AsyncRead + Unpin>(io: &mut IdleIo<I>) -> std::io::Result<bool> {
    let mut seen = BytesMut::with_capacity(SNIFF_BYTES);
    loop {
        let got = io.read_buf(&mut seen).await?;
        if got == 0 || seen.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&seen) {
            break;
        }
    }
    let h2 = seen.starts_with(H2_PREFACE);
    io.rewind(seen.freeze());
    Ok(h2)
}

/// Why [`drive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The connection ended by itself (the peer closed, an error, an upgrade).
    Closed,
    /// The listener is draining: asked to close after its requests in flight.
    Drained,
    /// Idle long enough to park: asked to close, the socket kept (`IdleIo`).
    Parked,
}

/// Drive a hyper connection to its end. A drain asks it to close
/// gracefully, and so does `park_due()` turning true while it waits.
async fn drive<C>(
    mut conn: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    drain: &mut Drain,
    park_due: impl Fn() -> bool,
) -> (hyper::Result<()>, Ended)
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut ended = Ended::Closed;
    let mut drained = std::pin::pin!(drain.changed());
    let served = poll_fn(|cx| {
        if ended == Ended::Closed && drained.as_mut().poll(cx).is_ready() {
            ended = Ended::Drained;
            graceful_shutdown(conn.as_mut());
        }
        match conn.as_mut().poll(cx) {
            Poll::Pending if ended == Ended::Closed && park_due() => {
                ended = Ended::Parked;
                graceful_shutdown(conn.as_mut());
                conn.as_mut().poll(cx)
            }
            other => other,
        }
    })
    .await;
    (served, ended)
}

/// Serve one connection: HTTP/2 for its whole life, or HTTP/1 in rounds of
/// one hyper connection each, parked in between (see [`super::idle`]).
/// `h2` is ALPN's answer on TLS, `None` on plain TCP (sniffed).
async fn http<I>(io: I, h2: Option<bool>, info: ConnInfo, shared: Arc<Shared>, limits: Limits, mut drain: Drain)
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let activity = Arc::new(Activity::default());
    let metrics = shared.metrics.clone();
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let in_flight = activity.begin();
            // Boxed: hyper moves the service's future into place, and the
            // request's future is about 11 KB; a box is cheaper than the copies.
            let handled = Box::pin(proxy::handle(req, info.clone(), shared.clone()));
            async move {
                let response = handled.await?;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    in_flight.upgraded();
                }
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        })
    };
    let timeouts = Timeouts {
        head: limits.header_read_timeout,
        idle: limits.idle_timeout,
        park_after: Some(PARK_AFTER),
        send: limits.send_timeout,
    };
    let mut io = IdleIo::new(io, activity.clone(), timeouts);
    let h2 = match h2 {
        Some(h2) => h2,
        None => match sniff_h2(&mut io).await {
            Ok(h2) => h2,
            Err(e) => return tracing::debug!(error = %e, "connection ended before a request"),
        },
    };
    if h2 {
        io.never_park();
        let mut conn = Box::pin(http2_builder(&limits).serve_connection(TokioIo::new(io), service));
        if let (Err(e), _) = drive(conn.as_mut(), |c| c.graceful_shutdown(), &mut drain, || false).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        return;
    }
    let http1 = http1_builder(&limits);
    loop {
        let mut conn = Box::pin(http1.serve_connection(TokioIo::new(io), service.clone()).with_upgrades());
        match drive(conn.as_mut(), |c| c.graceful_shutdown(), &mut drain, || activity.park_due()).await {
            (Err(e), _) => return tracing::debug!(error = %e, "connection ended with an error"),
            (Ok(()), Ended::Parked) => {}
            (Ok(()), Ended::Closed | Ended::Drained) => return,
        }
        // Not upgraded (an upgraded connection never parks): the parts are there.
        let Some(parts) = Pin::into_inner(conn).into_parts() else { return };
        io = parts.io.into_inner();
        io.unpark(parts.read_buf);
        let _parked = Held::new(&metrics.parked_connections);
        let woke = {
            let mut drained = std::pin::pin!(drain.changed());
            poll_fn(|cx| {
                if drained.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                io.poll_parked(cx).map(|ready| ready.is_ok())
            })
            .await
        };
        if !woke {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(pieces: &[&[u8]]) -> (bool, Vec<u8>) {
        let (ours, mut theirs) = tokio::io::duplex(8192);
        let timeouts = Timeouts {
            head: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            park_after: None,
            send: Duration::from_secs(5),
        };
        let mut io = IdleIo::new(ours, Arc::new(Activity::default()), timeouts);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for piece in pieces {
                theirs.write_all(&piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            // Dropped: the peer's end of the stream.
        });
        let h2 = sniff_h2(&mut io).await.unwrap();
        writer.await.unwrap();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        (h2, rest)
    }

    #[tokio::test]
    async fn http1_request_is_not_h2_and_is_put_back_whole() {
        let req: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(sniffed(&[req]).await, (false, req.to_vec()));
    }

    #[tokio::test]
    async fn preface_in_pieces_is_h2() {
        let (h2, rest) = sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM", b"\r\n\r\n\0\0"]).await;
        assert!(h2);
        assert_eq!(rest, [H2_PREFACE, b"\0\0"].concat());
    }

    #[tokio::test]
    async fn method_sharing_the_prefaces_first_letter_is_http1() {
        let (h2, rest) = sniffed(&[b"P", b"OST / HTTP/1.1\r\n\r\n"]).await;
        assert!(!h2);
        assert_eq!(rest, b"POST / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn early_close_is_not_h2() {
        assert_eq!(sniffed(&[b"PRI * "]).await, (false, b"PRI * ".to_vec()));
    }
}
