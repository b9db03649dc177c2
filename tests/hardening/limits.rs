//! Header size and count (431), body size (413) and connection count limits.

use std::time::Duration;

use super::*;

/// A GET to `/public/h` with the allowed key and `extra` header lines.
fn get_with(extra: &str) -> Vec<u8> {
    format!("GET /public/h HTTP/1.1\r\nHost: keygate.test\r\nX-Api-Key: {KEY}\r\n{extra}\r\n").into_bytes()
}

/// `probe` gets 431 and a closed connection, the upstream sees nothing, and
/// a normal request still works. `json`: keygate's own `headers_too_large`.
async fn assert_too_large(listen_extra: &str, probe: &[u8], json: bool) {
    let (up, kg) = start(listen_extra).await;
    let ex = exchange(kg.addr, probe, Duration::from_secs(5)).await;
    assert_eq!(ex.status(), Some(431), "{}", ex.text.get(..200).unwrap_or(&ex.text));
    assert!(ex.closed, "connection left open");
    assert_eq!(up.count(), 0);
    if json {
        let v: serde_json::Value = serde_json::from_str(ex.body()).expect("JSON body");
        assert_eq!(v["error"], "headers_too_large");
    }
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn oversized_header_gets_json_431() {
    // The default limit is 16 KiB of headers.
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    assert_too_large("", &get_with(&big), true).await;
}

#[tokio::test]
async fn many_small_headers_over_the_byte_limit_get_json_431() {
    let lines: String = (0..30).map(|i| format!("X-H{i}: {}\r\n", "b".repeat(200))).collect();
    assert_too_large("max_header_bytes = 4096", &get_with(&lines), true).await;
}

#[tokio::test]
async fn too_many_headers_get_json_431() {
    let lines: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_too_large("", &get_with(&lines), true).await;
}

#[tokio::test]
async fn far_too_many_headers_are_refused_by_hyper() {
    // Beyond twice the limit hyper refuses before keygate sees the request.
    let lines: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_too_large("", &get_with(&lines), false).await;
}

#[tokio::test]
async fn far_oversized_headers_are_refused_by_hyper() {
    let big = format!("X-Big: {}\r\n", "a".repeat(64 * 1024));
    assert_too_large("", &get_with(&big), false).await;
}

#[tokio::test]
async fn headers_within_the_limits_pass() {
    let (up, kg) = start("").await;
    let lines: String = (0..90).map(|i| format!("X-H{i}: {}\r\n", "c".repeat(100))).collect();
    let probe = [get_with(&format!("{lines}Connection: close\r\n"))].concat();
    let ex = exchange(kg.addr, &probe, Duration::from_secs(5)).await;
    assert_eq!(ex.status(), Some(200), "{}", ex.text.get(..200).unwrap_or(&ex.text));
    assert_eq!(up.count(), 1);
    kg.stop().await;
}

#[tokio::test]
async fn declared_body_over_max_body_gets_413_up_front() {
    let (up, kg) = start("").await;
    // No body is sent: the answer must come from Content-Length alone.
    let probe = format!("POST /public/upload HTTP/1.1\r\nHost: k\r\nX-Api-Key: {KEY}\r\nContent-Length: 4096\r\n\r\n");
    let mut tcp = TcpStream::connect(kg.addr).await.expect("connect");
    tcp.write_all(probe.as_bytes()).await.expect("write");
    let text = read_response(&mut tcp).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"payload_too_large\""), "{text}");
    assert_eq!(up.count(), 0);
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn chunked_body_over_max_body_is_cut_mid_stream() {
    let (up, kg) = start("").await;
    let chunk = format!("200\r\n{}\r\n", "d".repeat(512));
    let probe = format!(
        "POST /public/upload HTTP/1.1\r\nHost: k\r\nX-Api-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(4)
    );
    let ex = exchange(kg.addr, probe.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(ex.status(), Some(413), "{ex:?}");
    assert!(ex.body().contains("\"payload_too_large\""), "{ex:?}");
    // The upstream may have seen the head, but never more than max_body.
    assert!(up.requests().iter().all(|r| r.body_len <= 1024), "{:?}", up.requests());
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn body_within_max_body_passes() {
    let (up, kg) = start("").await;
    let body = "e".repeat(1024);
    let probe = format!(
        "POST /public/upload HTTP/1.1\r\nHost: k\r\nX-Api-Key: {KEY}\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{body}"
    );
    let ex = exchange(kg.addr, probe.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(ex.status(), Some(200), "{ex:?}");
    assert_eq!(up.last().body_len, 1024);
    kg.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let (up, kg) = start("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(kg.addr).await.expect("connect");
        tcp.write_all(&raw_get_keep_alive("/public/held")).await.expect("write");
        assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
        held.push(tcp);
    }
    let ex = exchange(kg.addr, &raw_get("/public/third"), Duration::from_secs(5)).await;
    assert!(ex.closed && ex.status().is_none(), "third connection served: {ex:?}");
    assert!(ex.elapsed < Duration::from_secs(2), "not closed at once: {:?}", ex.elapsed);
    // The held connections keep working.
    for tcp in &mut held {
        tcp.write_all(&raw_get_keep_alive("/public/again")).await.expect("write");
        assert!(read_response(tcp).await.starts_with("HTTP/1.1 200"));
    }
    // A freed slot is usable again (the slot returns once the task ends).
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ex = exchange(kg.addr, &raw_get("/public/later"), Duration::from_secs(5)).await;
        if ex.status() == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {ex:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.requests().iter().filter(|r| r.uri == "/public/third").count(), 0);
    kg.stop().await;
}

fn raw_get_keep_alive(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: keygate.test\r\nX-Api-Key: {KEY}\r\n\r\n").into_bytes()
}
