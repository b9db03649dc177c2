//! A scripted raw-TCP upstream: for the n-th request it reads (over all its
//! connections), it plays the n-th [`Step`] of its script: canned bytes,
//! pauses until the test says so, a close. It records every connection it
//! accepted and every request's raw bytes, so a test can tell what went
//! upstream and whether a connection was reused. Every wait is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The longest any read or wait of the server lasts.
const LIMIT: Duration = Duration::from_secs(10);
/// The largest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// The largest request body read.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One thing the server does after reading a request.
#[derive(Clone)]
pub enum Action {
    /// Write these bytes (and flush).
    Write(Vec<u8>),
    /// Wait until the test notifies (bounded).
    Wait(Arc<Notify>),
    /// Pause this long (a slow upstream, not a synchronisation).
    Pause(Duration),
    /// Close the connection.
    Close,
    /// Stop reading, keep the connection open until the server is dropped.
    Hold,
}

/// What the server does for one request.
#[derive(Clone)]
pub struct Step {
    /// Read the request body before acting (false: act after the head).
    pub read_body: bool,
    pub actions: Vec<Action>,
}

impl Step {
    /// Write `bytes`, then read the next request on the same connection.
    pub fn reply(bytes: impl Into<Vec<u8>>) -> Step {
        Step { read_body: true, actions: vec![Action::Write(bytes.into())] }
    }

    /// Write `bytes` one at a time, a millisecond apart, then read on.
    pub fn drip(bytes: &[u8]) -> Step {
        let pause = Action::Pause(Duration::from_millis(1));
        let actions = bytes.iter().flat_map(|b| [Action::Write(vec![*b]), pause.clone()]).collect();
        Step { read_body: true, actions }
    }

    /// Write `bytes`, then close the connection.
    pub fn reply_close(bytes: impl Into<Vec<u8>>) -> Step {
        Step { read_body: true, actions: vec![Action::Write(bytes.into()), Action::Close] }
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The head, up to and without the blank line.
    pub head: String,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
    /// Every byte read for this request.
    pub raw: Vec<u8>,
}

impl Seen {
    /// Every value of header `name` (any case), trimmed.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// The request line.
    pub fn line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    accepts: AtomicUsize,
    next: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// The server; stops (closing every connection) when dropped.
pub struct Scripted {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Scripted {
    /// Serve `script` on 127.0.0.1:0; requests past its end get the last step.
    pub async fn start(script: Vec<Step>) -> Scripted {
        assert!(!script.is_empty(), "a script needs a step");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind scripted upstream");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let script = Arc::new(script);
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                st.accepts.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(tcp, st.clone(), script.clone()));
            }
        });
        Scripted { addr, state, task }
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.state.accepts.load(Ordering::SeqCst)
    }

    /// Every request read so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut tcp: TcpStream, state: Arc<State>, script: Arc<Vec<Step>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_head(&mut tcp, &mut buf).await else { return };
        let n = state.next.fetch_add(1, Ordering::SeqCst);
        let Some(step) = script.get(n).or(script.last()) else { return };
        let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
        let mut body = Vec::new();
        let mut used = head_end + 4;
        if step.read_body {
            match read_body(&mut tcp, &mut buf, &head, used).await {
                Some((b, end)) => (body, used) = (b, end),
                None => return,
            }
        }
        let raw = buf.drain(..used.min(buf.len())).collect();
        state.seen.lock().expect("lock").push(Seen { head, body, raw });
        for action in &step.actions {
            match action {
                Action::Write(bytes) => {
                    if tcp.write_all(bytes).await.is_err() || tcp.flush().await.is_err() {
                        return;
                    }
                }
                Action::Wait(notify) => {
                    if tokio::time::timeout(LIMIT, notify.notified()).await.is_err() {
                        return;
                    }
                }
                Action::Pause(d) => tokio::time::sleep(*d).await,
                Action::Close => return,
                Action::Hold => {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// Read more into `buf`; false on EOF, error or after the limit.
async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
    match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            true
        }
        _ => false,
    }
}

/// Where the head's blank line starts, reading as needed.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end);
        }
        if buf.len() > MAX_HEAD || !fill(tcp, buf, deadline).await {
            return None;
        }
    }
}

/// The body after `start` as `head` frames it, and where it ends in `buf`.
async fn read_body(tcp: &mut TcpStream, buf: &mut Vec<u8>, head: &str, start: usize) -> Option<(Vec<u8>, usize)> {
    let deadline = Instant::now() + LIMIT;
    let lower = head.to_ascii_lowercase();
    let field = |name: &str| {
        lower
            .split("\r\n")
            .skip(1)
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_string()))
    };
    if field("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        return read_chunked(tcp, buf, start, deadline).await;
    }
    let len: usize = match field("content-length") {
        Some(v) => v.parse().ok().filter(|n| *n <= MAX_BODY)?,
        None => 0,
    };
    while buf.len() < start + len {
        if !fill(tcp, buf, deadline).await {
            return None;
        }
    }
    Some((buf.get(start..start + len)?.to_vec(), start + len))
}

/// A chunked body from `pos`: sizes in hex, extensions ignored, trailers skipped.
async fn read_chunked(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut pos: usize,
    deadline: Instant,
) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.get(pos..)?.windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            if buf.len() - pos > 1024 || !fill(tcp, buf, deadline).await {
                return None;
            }
        };
        let line = std::str::from_utf8(buf.get(pos..line_end)?).ok()?;
        let size = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok().filter(|n| body.len() + n <= MAX_BODY)?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let Some(i) = buf.get(pos..)?.windows(2).position(|w| w == b"\r\n") else {
                    if !fill(tcp, buf, deadline).await {
                        return None;
                    }
                    continue;
                };
                pos += i + 2;
                if i == 0 {
                    return Some((body, pos));
                }
            }
        }
        while buf.len() < pos + size + 2 {
            if !fill(tcp, buf, deadline).await {
                return None;
            }
        }
        body.extend_from_slice(buf.get(pos..pos + size)?);
        if buf.get(pos + size..pos + size + 2)? != b"\r\n" {
            return None;
        }
        pos += size + 2;
    }
}

/// A request to `url` carrying `key` as `X-API-Key`, for the scripted tests.
pub fn keyed_request(
    method: &str,
    url: &str,
    key: &str,
    body: bytes::Bytes,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(url)
        .header("x-api-key", key)
        .body(http_body_util::Full::new(body))
        .expect("request")
}
