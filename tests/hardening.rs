//! Hardening: framing probes, path confusion, header limits, slow clients,
//! connection limits and HTTP/2 floods, each against the real server with the
//! recording upstream, and after each probe a normal request still works.

mod support;

#[path = "hardening/framing.rs"]
mod framing;
#[path = "hardening/h2.rs"]
mod h2;
#[path = "hardening/limits.rs"]
mod limits;
#[path = "hardening/paths.rs"]
mod paths;
#[path = "hardening/slow.rs"]
mod slow;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The key of client `billing`, allowed only on route `public` (`/public`).
pub const KEY: &str = "hardening-key-7f3a";
/// The key of client `ops`, allowed everywhere.
pub const ROOT_KEY: &str = "hardening-root-91c2";

/// Two routes, `/public` (max_body 1 KiB) and everything else (`/`), 1 s
/// header and body timeouts, and `listen_extra` added to `[listen]`.
pub fn config(upstream: SocketAddr, listen_extra: &str) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"
header_read_timeout = "1s"
body_timeout = "1s"
{listen_extra}

[upstreams.main]
servers = ["http://{upstream}"]

[[routes]]
name = "public"
path = "/public"
upstream = "main"
max_body = "1KiB"

[[routes]]
name = "rest"
path = "/"
upstream = "main"

[clients.billing]
routes = ["public"]
keys = [{{ hash = "{key}" }}]

[clients.ops]
routes = ["*"]
keys = [{{ hash = "{root}" }}]
"#,
        key = hash(KEY),
        root = hash(ROOT_KEY),
    )
}

/// keygate with [`config`] in front of a fresh recording upstream.
pub async fn start(listen_extra: &str) -> (Upstream, Keygate) {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, listen_extra)).await;
    (up, kg)
}

/// What a raw exchange produced.
#[derive(Debug)]
pub struct Exchange {
    pub text: String,
    /// The server closed the connection (EOF or reset) within the bound.
    pub closed: bool,
    pub elapsed: Duration,
}

impl Exchange {
    /// The status code of the first response, if any.
    pub fn status(&self) -> Option<u16> {
        self.text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    }

    /// The body of the first response.
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Send `bytes` on a new connection and read until the server closes it, or
/// `bound` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], bound: Duration) -> Exchange {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // A server that refuses early may reset before all is written.
    let _ = tcp.write_all(bytes).await;
    read_to_close(&mut tcp, bound).await
}

/// Read until EOF or reset (closed), or until `bound` passes (not closed).
pub async fn read_to_close(tcp: &mut TcpStream, bound: Duration) -> Exchange {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let left = bound.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    };
    Exchange { text: String::from_utf8_lossy(&out).into_owned(), closed, elapsed: start.elapsed() }
}

/// A plain, allowed request still gets through and reaches the upstream.
pub async fn still_serves(kg: &Keygate, up: &Upstream) {
    let oks = || up.requests().iter().filter(|r| r.uri == "/public/ok").count();
    let before = oks();
    let r = get(&kg.url("/public/ok"), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 200, "normal request after the probe: {:?}", r.body);
    assert_eq!(oks(), before + 1);
}

/// A raw GET for `target` with the allowed key, closing after the response.
pub fn raw_get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: keygate.test\r\nX-Api-Key: {KEY}\r\nConnection: close\r\n\r\n").into_bytes()
}
