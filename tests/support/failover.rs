//! Upstream servers for failover tests: named backends that can be stopped
//! and started again on the same address, made unhealthy, made slow; a
//! server that reads a request and hangs up; a tiny HTTP/1.0 server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a backend answers on paths other than its health path.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// 200 with the backend's name as the body.
    Ok,
    /// This status, after this delay.
    Status(u16, Duration),
}

/// Counters shared between a backend and the test.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests other than health checks.
    pub requests: AtomicUsize,
    /// Health checks answered 200, and answered 503.
    pub checks_passed: AtomicUsize,
    pub checks_failed: AtomicUsize,
    /// Requests other than health checks being answered now.
    pub active: AtomicUsize,
}

/// A named HTTP/1.1 backend; answers carry `x-backend: <name>`.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    pub healthy: Arc<AtomicBool>,
    mode: Mode,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Serve on 127.0.0.1:0.
    pub async fn start(name: &'static str, mode: Mode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let counts = Arc::default();
        let healthy = Arc::new(AtomicBool::new(true));
        Backend::serve(name, mode, listener, counts, healthy)
    }

    fn serve(
        name: &'static str,
        mode: Mode,
        listener: TcpListener,
        counts: Arc<Counts>,
        healthy: Arc<AtomicBool>,
    ) -> Backend {
        let addr = listener.local_addr().expect("addr");
        let (c, h) = (counts.clone(), healthy.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task closes them all.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (c, h) = (c.clone(), h.clone());
                conns.spawn(async move {
                    let service = service_fn(move |req| answer(req, name, mode, c.clone(), h.clone()));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        Backend { name, addr, counts, healthy, mode, task: Some(task) }
    }

    /// Stop listening and close every connection.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serve again on the same address, with the same counters.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("bind the same address again");
        *self = Backend::serve(self.name, self.mode, listener, self.counts.clone(), self.healthy.clone());
    }

    /// Make `/healthz` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests other than health checks received so far.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    mode: Mode,
    counts: Arc<Counts>,
    healthy: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, body: &str| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        r.headers_mut().insert("x-backend", http::HeaderValue::from_static(name));
        Ok(r)
    };
    if req.uri().path() == "/healthz" {
        let ok = healthy.load(Ordering::SeqCst);
        let counter = if ok { &counts.checks_passed } else { &counts.checks_failed };
        counter.fetch_add(1, Ordering::SeqCst);
        return reply(if ok { 200 } else { 503 }, "health");
    }
    counts.requests.fetch_add(1, Ordering::SeqCst);
    counts.active.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let _ = req.into_body().collect().await;
    let slow = path.strip_prefix("/slow/").and_then(|ms| ms.parse().ok()).map(Duration::from_millis);
    let (status, delay) = match mode {
        Mode::Ok => (200, slow.unwrap_or_default()),
        Mode::Status(status, delay) => (status, delay),
    };
    tokio::time::sleep(delay).await;
    counts.active.fetch_sub(1, Ordering::SeqCst);
    reply(status, name)
}

/// An address nothing listens on (connections are refused).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// A server that reads one request (head and `Content-Length` body) per
/// connection, then hangs up without answering; counts the requests.
pub async fn hang_up_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                if read_request(&mut tcp).await.is_some() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                drop(tcp);
            });
        }
    });
    (addr, seen)
}

/// A server that answers every request in HTTP/1.0 with `body` and closes
/// the connection; with `length` false the body is delimited by the close.
pub async fn http10_server(body: &'static str, length: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request(&mut tcp).await.is_none() {
                    return;
                }
                let mut head = String::from("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n");
                if length {
                    head += &format!("Content-Length: {}\r\n", body.len());
                }
                head += "\r\n";
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// Read a request head and its `Content-Length` body; `None` on EOF or after 5 s.
async fn read_request(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return Some(out);
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let n = tokio::time::timeout(left, tcp.read(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Poll `condition` every 20 ms until it holds, failing after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
