//! A recording upstream: answers by path and keeps what it received.
//!
//! - `/slow/<ms>`: waits that long, then 200
//! - `/big/<bytes>`: streams that many bytes (deterministic pattern) and
//!   signals the test before sending the last chunk
//! - `/status/<code>`: answers that status
//! - `/ws`: WebSocket echo
//! - anything else: 200 with a JSON echo of method, uri, headers and body digest

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
}

/// A running recording upstream.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Notified when `/big` is about to send its final chunk; it then waits for `release`.
    pub before_last_chunk: Arc<Notify>,
    pub release: Arc<Notify>,
}

type Body = BoxBody<Bytes, Infallible>;

impl Upstream {
    /// Bind 127.0.0.1:0 and serve until the test ends.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let up = Upstream {
            addr: listener.local_addr().expect("addr"),
            received: Arc::default(),
            before_last_chunk: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
        };
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, state.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        up
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// The last request received.
    pub fn last(&self) -> Received {
        self.requests().pop().expect("the upstream received a request")
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

pub(crate) async fn answer(req: Request<Incoming>, up: Upstream) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/ws" {
        return Ok(websocket(req));
    }
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let received = Received {
        method: parts.method.clone(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len: bytes.len(),
        body_sha256: hex::encode(Sha256::digest(&bytes)),
    };
    up.received.lock().expect("lock").push(received.clone());
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let response = match (segments.next(), segments.next()) {
        (Some("slow"), Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            Response::new(full("slow done"))
        }
        (Some("big"), Some(n)) => big(n.parse().unwrap_or(0), up.clone()),
        (Some("status"), Some(code)) => {
            let mut r = Response::new(full("status"));
            *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap_or(StatusCode::OK);
            r
        }
        _ => echo(&received),
    };
    Ok(response)
}

fn echo(r: &Received) -> Response<Body> {
    let headers: serde_json::Map<String, serde_json::Value> =
        r.headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())).collect();
    let json = serde_json::json!({
        "method": r.method.as_str(),
        "uri": r.uri,
        "headers": headers,
        "body_len": r.body_len,
        "body_sha256": r.body_sha256,
    });
    let mut res = Response::new(full(json.to_string()));
    res.headers_mut().insert("x-upstream", http::HeaderValue::from_static("yes"));
    res.headers_mut().insert("connection", http::HeaderValue::from_static("x-hop"));
    res.headers_mut().insert("x-hop", http::HeaderValue::from_static("should be removed"));
    res
}

/// The byte at position `i` of a `/big` body.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

fn big(n: usize, up: Upstream) -> Response<Body> {
    const CHUNK: usize = 64 * 1024;
    let stream = futures_util::stream::unfold(0usize, move |sent| {
        let up = up.clone();
        async move {
            if sent >= n {
                return None;
            }
            let len = CHUNK.min(n - sent);
            if sent + len >= n {
                up.before_last_chunk.notify_one();
                up.release.notified().await;
            }
            let chunk: Vec<u8> = (sent..sent + len).map(pattern).collect();
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))), sent + len))
        }
    });
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_close() || tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap_or_else(|_| Response::new(full("")))
}
