//! Slow clients and idle connections: `header_read_timeout` (1 s here),
//! `body_timeout` (1 s here) and `idle_timeout`. Waiting out a timeout is the
//! behaviour under test, so these tests take a few seconds each.

use std::time::Duration;

use super::*;

/// Write `bytes` one per `gap` until done or the server stops reading.
fn trickle(mut tcp: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, gap: Duration) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(gap);
        let mut sent = 0;
        for b in bytes {
            tick.tick().await;
            if tcp.write_all(&[b]).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    })
}

async fn read_half_to_close(mut rd: tokio::net::tcp::OwnedReadHalf, bound: Duration) -> Exchange {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(bound.saturating_sub(start.elapsed()), rd.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    };
    Exchange { text: String::from_utf8_lossy(&out).into_owned(), closed, elapsed: start.elapsed() }
}

#[tokio::test]
async fn one_byte_per_second_headers_are_cut_at_header_read_timeout() {
    let (up, kg) = start("").await;
    let tcp = TcpStream::connect(kg.addr).await.expect("connect");
    let (rd, wr) = tcp.into_split();
    let writer = trickle(wr, raw_get("/public/slowloris"), Duration::from_secs(1));
    let ex = read_half_to_close(rd, Duration::from_secs(6)).await;
    assert!(ex.closed, "slow header client still connected after {:?}", ex.elapsed);
    assert!(ex.elapsed >= Duration::from_millis(900), "cut too early: {:?}", ex.elapsed);
    assert!(ex.elapsed < Duration::from_millis(2500), "cut late: {:?}", ex.elapsed);
    assert_ne!(ex.status(), Some(200));
    writer.abort();
    assert_eq!(up.count(), 0);
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn silent_connection_is_cut_at_header_read_timeout() {
    let (up, kg) = start("idle_timeout = \"30s\"").await;
    let ex = exchange(kg.addr, b"", Duration::from_secs(6)).await;
    assert!(ex.closed && ex.elapsed < Duration::from_millis(2500), "{ex:?}");
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn slow_post_is_cut_at_body_timeout() {
    let (up, kg) = start("").await;
    let head = format!("POST /public/slow-post HTTP/1.1\r\nHost: k\r\nX-Api-Key: {KEY}\r\nContent-Length: 100\r\n\r\n");
    let tcp = TcpStream::connect(kg.addr).await.expect("connect");
    let (rd, mut wr) = tcp.into_split();
    wr.write_all(head.as_bytes()).await.expect("write head");
    // Then the body at one byte per 1.5 s: each gap is longer than body_timeout.
    let writer = trickle(wr, vec![b'x'; 100], Duration::from_millis(1500));
    let ex = read_half_to_close(rd, Duration::from_secs(8)).await;
    assert_eq!(ex.status(), Some(408), "{ex:?}");
    assert!(ex.body().contains("\"request_timeout\""), "{ex:?}");
    assert!(ex.closed, "slow POST connection left open: {ex:?}");
    assert!(ex.elapsed < Duration::from_secs(5), "cut late: {:?}", ex.elapsed);
    writer.abort();
    assert!(up.requests().iter().all(|r| r.body_len < 100), "the whole slow body went through");
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_outlives_header_read_timeout_then_closes_at_idle_timeout() {
    let (up, kg) = start("idle_timeout = \"3s\"").await;
    let mut tcp = TcpStream::connect(kg.addr).await.expect("connect");
    let again = format!("GET /public/ka HTTP/1.1\r\nHost: k\r\nX-Api-Key: {KEY}\r\n\r\n");
    tcp.write_all(again.as_bytes()).await.expect("write");
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    // Idle for longer than header_read_timeout (1 s), shorter than idle_timeout.
    let quiet = read_to_close(&mut tcp, Duration::from_millis(1600)).await;
    assert!(!quiet.closed, "idle connection closed after {:?}, before idle_timeout", quiet.elapsed);
    tcp.write_all(again.as_bytes()).await.expect("write");
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    let ex = read_to_close(&mut tcp, Duration::from_secs(6)).await;
    assert!(ex.closed, "idle connection still open after {:?}", ex.elapsed);
    assert!(ex.elapsed >= Duration::from_millis(2800), "closed before idle_timeout: {:?}", ex.elapsed);
    assert!(ex.elapsed < Duration::from_millis(4500), "closed late: {:?}", ex.elapsed);
    assert_eq!(up.count(), 2);
    kg.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_not_cut_by_client_timeouts() {
    let (up, kg) = start("idle_timeout = \"1s\"").await;
    let r = get(&kg.url("/slow/2500"), &[("x-api-key", ROOT_KEY)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"slow done");
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn long_streaming_response_is_not_cut_by_client_timeouts() {
    let (up, kg) = start("idle_timeout = \"1s\"").await;
    let url = kg.url("/big/300000");
    let fetch = tokio::spawn(async move { get(&url, &[("x-api-key", ROOT_KEY)]).await });
    tokio::time::timeout(Duration::from_secs(5), up.before_last_chunk.notified()).await.expect("body started");
    // Hold the last chunk back for longer than both client timeouts.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    up.release.notify_one();
    let r = fetch.await.expect("fetch");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300_000);
    kg.stop().await;
}

/// An upstream that takes the request head, reads nothing for `stall`, then
/// drains the body and answers 200.
async fn stalling_upstream(stall: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    }
                }
                tokio::time::sleep(stall).await;
                let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                let mut body = seen.len() - head_end;
                while body < BIG_BODY {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body += n,
                    }
                }
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            });
        }
    });
    addr
}

const BIG_BODY: usize = 16 * 1024 * 1024;

#[tokio::test]
async fn slow_reading_upstream_is_not_taken_for_a_slow_client() {
    let upstream = stalling_upstream(Duration::from_millis(2500)).await;
    let kg = Keygate::start(&config(upstream, "")).await;
    let body = bytes::Bytes::from(vec![b'z'; BIG_BODY]);
    let req = http::Request::post(kg.url("/upload"))
        .header("x-api-key", ROOT_KEY)
        .body(http_body_util::Full::new(body))
        .expect("request");
    let r = send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    kg.stop().await;
}
