//! HTTP/2 floods, written as raw frames so that every byte arrives exactly
//! as sent: rapid reset (CVE-2023-44487), CONTINUATION flood, oversized
//! header lists. Then a normal HTTP/2 request (through the `h2` crate).

use std::time::Duration;

use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length").to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal without indexing, name from the static table.
fn literal(name_index: u8, value: &str) -> Vec<u8> {
    let mut b = vec![name_index, u8::try_from(value.len()).expect("short value")];
    b.extend_from_slice(value.as_bytes());
    b
}

/// `GET http://keygate.test<path>` as an HPACK block, without a key.
fn request_block(path: &str) -> Vec<u8> {
    [vec![0x82, 0x86], literal(4, path), literal(1, "keygate.test")].concat()
}

/// What the server sent back before closing or before `bound` passed.
#[derive(Debug, Default)]
struct Reaction {
    goaway: Option<u32>,
    closed: bool,
    headers_frames: usize,
}

/// Read frames until GOAWAY, EOF or `bound`.
async fn react(tcp: &mut (impl AsyncReadExt + Unpin), bound: Duration) -> Reaction {
    let deadline = Instant::now() + bound;
    let mut r = Reaction::default();
    loop {
        let mut head = [0u8; 9];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read_exact(&mut head)).await {
            Err(_) => return r,
            Ok(Err(_)) => {
                r.closed = true;
                return r;
            }
            Ok(Ok(_)) => {}
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if tokio::time::timeout(left, tcp.read_exact(&mut payload)).await.map_or(true, |r| r.is_err()) {
            r.closed = true;
            return r;
        }
        match head[3] {
            GOAWAY => {
                let code = payload.get(4..8).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                r.goaway = code;
                return r;
            }
            HEADERS => r.headers_frames += 1,
            _ => {}
        }
    }
}

async fn h2_connect(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).await.expect("preface");
    tcp
}

/// `streams` HEADERS frames, each reset at once.
fn rapid_reset(streams: u32) -> Vec<u8> {
    let block = request_block("/public/rr");
    (0..streams)
        .flat_map(|i| {
            let id = 1 + 2 * i;
            [frame(HEADERS, END_HEADERS | END_STREAM, id, &block), frame(RST_STREAM, 0, id, &8u32.to_be_bytes())]
                .concat()
        })
        .collect()
}

/// Send `bytes` while reading the server's reaction (it may stop reading half way).
async fn flood(addr: SocketAddr, bytes: &[u8]) -> Reaction {
    let mut tcp = h2_connect(addr).await;
    let (mut rd, mut wr) = tcp.split();
    let write = async {
        let _ = wr.write_all(bytes).await;
    };
    let (_, reaction) = tokio::join!(write, react(&mut rd, Duration::from_secs(10)));
    reaction
}

async fn assert_rapid_reset_stopped(addr: SocketAddr) {
    let reaction = flood(addr, &rapid_reset(5000)).await;
    assert!(
        reaction.goaway == Some(ENHANCE_YOUR_CALM) || (reaction.closed && reaction.goaway.is_none()),
        "no GOAWAY after 5000 reset streams: {reaction:?}"
    );
    assert!(reaction.headers_frames < 5000, "every reset stream was served: {reaction:?}");
}

/// `fut`, or a test failure after 5 s.
async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), fut).await.expect("HTTP/2 step in time")
}

/// A normal HTTP/2 request through the `h2` crate.
async fn h2_still_serves(addr: SocketAddr) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), ::h2::client::handshake(tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tokio::spawn(conn);
    let mut client = bounded(client.ready()).await.expect("ready");
    let req = http::Request::get("http://keygate.test/public/h2").header("x-api-key", KEY).body(()).expect("request");
    let (response, _) = client.send_request(req, true).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.expect("in time").expect("response");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn rapid_reset_gets_goaway() {
    let (up, kg) = start("").await;
    assert_rapid_reset_stopped(kg.addr).await;
    assert_eq!(up.count(), 0);
    h2_still_serves(kg.addr).await;
    still_serves(&kg, &up).await;
    kg.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("RSS value")
}

#[tokio::test]
async fn memory_stays_bounded_under_rapid_reset() {
    let up = Upstream::start().await;
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config(up.addr, "")).expect("write config");
    let process = Process::serve(Some(&path), &[]);
    h2_still_serves(process.addr).await;
    let before = rss_kib(process.child.id());
    for _ in 0..20 {
        assert_rapid_reset_stopped(process.addr).await;
    }
    let after = rss_kib(process.child.id());
    // 100,000 reset streams in all; a leak of even 200 bytes each would show.
    assert!(after < before + 20 * 1024, "RSS grew from {before} KiB to {after} KiB");
    h2_still_serves(process.addr).await;
}

#[tokio::test]
async fn continuation_flood_gets_goaway() {
    let (up, kg) = start("").await;
    let filler = [vec![0x00, 3], b"x-f".to_vec(), vec![100], vec![b'f'; 100]].concat();
    let mut bytes = frame(HEADERS, END_STREAM, 1, &request_block("/public/cont"));
    for _ in 0..20_000 {
        bytes.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    let reaction = flood(kg.addr, &bytes).await;
    assert!(reaction.goaway.is_some() || reaction.closed, "CONTINUATION flood accepted: {reaction:?}");
    assert_eq!(reaction.headers_frames, 0, "{reaction:?}");
    assert_eq!(up.count(), 0);
    h2_still_serves(kg.addr).await;
    kg.stop().await;
}

/// A request with `headers` extra headers of `size` bytes each, over HTTP/2.
async fn h2_get_with_headers(addr: SocketAddr, headers: usize, size: usize) -> Option<(u16, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = bounded(::h2::client::handshake(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    let mut client = bounded(client.ready()).await.expect("ready");
    let mut req = http::Request::get("http://keygate.test/public/h2big").header("x-api-key", KEY);
    for i in 0..headers {
        req = req.header(format!("x-h{i}"), "v".repeat(size));
    }
    let (response, _) = client.send_request(req.body(()).expect("request"), true).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.expect("in time").ok()?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(Ok(chunk)) = bounded(body.data()).await {
        bytes.extend_from_slice(&chunk);
    }
    Some((status, bytes))
}

#[tokio::test]
async fn h2_header_list_over_the_limit_gets_json_431() {
    let (up, kg) = start("").await;
    let (status, body) = h2_get_with_headers(kg.addr, 2, 10 * 1024).await.expect("a response");
    assert_eq!(status, 431);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(v["error"], "headers_too_large");
    let (status, _) = h2_get_with_headers(kg.addr, 120, 4).await.expect("a response");
    assert_eq!(status, 431);
    assert_eq!(up.count(), 0);
    h2_still_serves(kg.addr).await;
    kg.stop().await;
}

#[tokio::test]
async fn h2_header_list_far_over_the_limit_is_refused() {
    let (up, kg) = start("").await;
    // Over hyper's own limit (twice keygate's): h2 answers 431 itself or resets.
    let refused = h2_get_with_headers(kg.addr, 8, 8 * 1024).await;
    assert!(refused.as_ref().is_none_or(|(status, _)| *status == 431), "{refused:?}");
    assert_eq!(up.count(), 0);
    h2_still_serves(kg.addr).await;
    kg.stop().await;
}

#[tokio::test]
async fn h2_crate_client_resetting_thousands_of_streams_gets_goaway() {
    let (up, kg) = start("").await;
    let tcp = TcpStream::connect(kg.addr).await.expect("connect");
    let (client, conn) = bounded(::h2::client::handshake(tcp)).await.expect("handshake");
    let conn = tokio::spawn(conn);
    let mut client = client;
    let mut opened = 0;
    for _ in 0..5000 {
        let Ok(ready) = tokio::time::timeout(Duration::from_secs(5), client.ready()).await.expect("ready in time")
        else {
            break;
        };
        client = ready;
        let req = http::Request::get("http://keygate.test/public/rr").body(()).expect("request");
        let Ok((_, mut stream)) = client.send_request(req, false) else { break };
        stream.send_reset(::h2::Reason::CANCEL);
        opened += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await.expect("connection ended").expect("join");
    let err = ended.expect_err("connection survived the reset flood");
    // GOAWAY, or the close that follows it when the client is still writing.
    let calm = err.reason() == Some(::h2::Reason::ENHANCE_YOUR_CALM) && err.is_go_away();
    assert!(calm || err.is_io(), "{err}");
    assert!(opened > 20, "the flood never got going: {opened} streams");
    assert_eq!(up.count(), 0);
    h2_still_serves(kg.addr).await;
    kg.stop().await;
}
