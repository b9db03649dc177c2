//! The accept loop. It only accepts: each connection is spawned at once, and
//! its TLS handshake and HTTP work happen in its own task.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::idle::{Activity, IdleIo, Tracked};
use crate::config::Listen;
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;

/// Serve connections from `listener` until `shutdown` resolves, then let
/// in-flight requests finish for up to `listen.shutdown_grace`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let max = shared.snapshot.load().config.listen.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the rest.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, max, "connection refused: max_connections reached");
            drop(tcp);
            continue;
        };
        let shared = shared.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            connection(tcp, remote, shared, watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    let grace = shared.snapshot.load().config.listen.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "shutdown grace elapsed with requests still in flight");
    }
}

async fn connection(tcp: TcpStream, remote: SocketAddr, shared: Arc<Shared>, watcher: Watcher) {
    let _ = tcp.set_nodelay(true);
    let snap = shared.snapshot.load_full();
    let listen = &snap.config.listen;
    match snap.tls.clone() {
        None => {
            let info = ConnInfo::new(remote, false, None);
            http(tcp, info, shared.clone(), listen, watcher).await;
        }
        Some(config) => match super::tls::accept(config, tcp, listen.header_read_timeout).await {
            Ok(stream) => {
                let subject = super::tls::peer_subject(&stream);
                let info = ConnInfo::new(remote, true, subject);
                http(stream, info, shared.clone(), listen, watcher).await;
            }
            Err(e) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
        },
    }
}

/// hyper's own header limits sit this many times above keygate's, so that
/// keygate sees a request between the two and answers its JSON 431
/// ([`crate::proxy::framing`]); beyond them hyper answers a bare 431 or resets.
const HYPER_HEADER_MARGIN: usize = 2;

fn builder(listen: &Listen) -> auto::Builder<TokioExecutor> {
    let head_bytes = listen.max_header_bytes.saturating_mul(HYPER_HEADER_MARGIN);
    let mut b = auto::Builder::new(TokioExecutor::new());
    // No hyper header_read_timeout: it would also cut idle keep-alive
    // connections; `IdleIo` keeps both deadlines apart.
    b.http1()
        .max_buf_size(head_bytes.max(8192))
        .max_headers(listen.max_headers.saturating_mul(HYPER_HEADER_MARGIN))
        .writev(false)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(listen.max_concurrent_streams)
        .max_header_list_size(u32::try_from(head_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(100))
        .keep_alive_interval(Some(listen.idle_timeout))
        .keep_alive_timeout(listen.header_read_timeout);
    b
}

async fn http<I>(io: I, info: ConnInfo, shared: Arc<Shared>, listen: &Listen, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let activity = Arc::new(Activity::default());
    let io = IdleIo::new(io, activity.clone(), listen.header_read_timeout, listen.idle_timeout);
    let service = service_fn(move |req| {
        let in_flight = activity.begin();
        let handled = proxy::handle(req, info.clone(), shared.clone());
        async move {
            let response = handled.await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.upgraded();
            }
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
        }
    });
    let builder = builder(listen);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = watcher.watch(conn.into_owned());
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
