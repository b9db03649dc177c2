//! Slow-reader tools: an upstream that answers `/big` with a large body and
//! counts the bytes it managed to write, clients that ask and never read
//! (HTTP/1, and HTTP/2 framed by hand so nothing reads behind the test's
//! back), and the kernel's share of buffered bytes from `/proc/net/tcp`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The size of `/big`.
pub const BIG: u64 = 64 * 1024 * 1024;

/// A raw HTTP/1.1 upstream: `/big…` gets [`BIG`] bytes, anything else `ok`.
#[derive(Clone)]
pub struct Flood {
    pub addr: SocketAddr,
    /// Body bytes of `/big` responses accepted by the socket so far.
    pub written: Arc<AtomicU64>,
}

impl Flood {
    /// Bind 127.0.0.1:0 and serve until the test ends.
    pub async fn start() -> Flood {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let flood = Flood { addr: listener.local_addr().expect("addr"), written: Arc::default() };
        let written = flood.written.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, written.clone()));
            }
        });
        flood
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Wait until `written` has not moved for 600 ms (the stall), up to `limit`.
    pub async fn stalled(&self, limit: Duration) -> Option<u64> {
        let start = Instant::now();
        let mut last = (self.written(), Instant::now());
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.written();
            if now != last.0 {
                last = (now, Instant::now());
            } else if now > 0 && last.1.elapsed() >= Duration::from_millis(600) {
                return Some(now);
            }
        }
        None
    }
}

async fn serve(mut tcp: TcpStream, written: Arc<AtomicU64>) {
    let chunk = vec![b'x'; 64 * 1024];
    loop {
        let Some(head) = read_head(&mut tcp).await else { return };
        if head.split(' ').nth(1).is_some_and(|p| p.starts_with("/big")) {
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
            if tcp.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            // Counted as the socket takes them, partial writes included.
            let mut left = BIG;
            while left > 0 {
                let piece = chunk.get(..chunk.len().min(left as usize)).unwrap_or_default();
                match tcp.write(piece).await {
                    Ok(n) if n > 0 => {
                        written.fetch_add(n as u64, Ordering::AcqRel);
                        left -= n as u64;
                    }
                    _ => return,
                }
            }
        } else if tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await.is_err() {
            return;
        }
    }
}

async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.extend_from_slice(&byte);
    }
    String::from_utf8(head).ok()
}

/// An HTTP/1.1 GET of `path` with `key`, sent on a new connection that the
/// test then never reads.
pub async fn h1_ask(addr: SocketAddr, path: &str, key: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: gate\r\nx-api-key: {key}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("send");
    tcp
}

/// An HTTP/2 GET of `path` with `key` on a new connection that the test
/// then never reads. `window`: the flow-control window the caller grants
/// (stream and connection); `None` keeps the protocol's 64 KiB.
pub async fn h2_ask(addr: SocketAddr, path: &str, key: &str, window: Option<u32>) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    match window {
        Some(w) => {
            frame(&mut out, 0x4, 0, 0, &[&[0u8, 4][..], &w.to_be_bytes()[..]].concat());
            frame(&mut out, 0x8, 0, 0, &(w - 65_535).to_be_bytes());
        }
        None => frame(&mut out, 0x4, 0, 0, &[]),
    }
    let mut block = Vec::new();
    for (name, value) in
        [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "gate"), ("x-api-key", key)]
    {
        // HPACK literal without indexing, new name; all lengths below 127.
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    frame(&mut out, 0x1, 0x5, 1, &block); // HEADERS, END_STREAM | END_HEADERS
    tcp.write_all(&out).await.expect("send");
    tcp
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Read `tcp` to its end or `enough` bytes (up to `limit`): the bytes read,
/// and whether the peer closed it (end of stream or reset) within the limit.
pub async fn drain(tcp: &mut TcpStream, limit: Duration, enough: u64) -> (u64, bool) {
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    while total < enough {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), tcp.read(&mut buf)).await {
            Err(_) => return (total, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n as u64,
        }
    }
    (total, false)
}

/// Bytes the kernel holds for established IPv4 connections from or to one
/// of `ports`: send queues (unsent or unacknowledged) plus receive queues
/// (unread), from `/proc/net/tcp`.
pub fn kernel_queued(ports: &[u16]) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let mut total = 0;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state), Some(queues)) = (f.get(1), f.get(2), f.get(3), f.get(4)) else {
            continue;
        };
        let ours = [port(local), port(remote)].iter().flatten().any(|p| ports.contains(p));
        if !ours || *state != "01" {
            continue;
        }
        let (tx, rx) = queues.split_once(':').expect("tx:rx");
        total += u64::from_str_radix(tx, 16).expect("tx") + u64::from_str_radix(rx, 16).expect("rx");
    }
    total
}
