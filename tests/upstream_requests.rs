//! What keygate sends to an HTTP/1 upstream, read raw by a scripted
//! upstream: one framing at most, the body intact, no hop-by-hop headers of
//! the caller; and an upstream that answers before reading the whole body.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::scripted::{keyed_request, Action, Scripted, Seen, Step};
use support::*;

const KEY: &str = "upstream-requests-key";
const LIMIT: Duration = Duration::from_secs(10);
/// What the upstream answers unless a test scripts otherwise.
const CLEAN: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean";

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(support::upstream::pattern).collect()
}

/// Send `method path` with the key and `body`; the status and whole body, bounded.
async fn answer(kg: &Keygate, method: &str, path: &str, body: Bytes) -> (u16, Bytes) {
    let req = keyed_request(method, &kg.url(path), KEY, body);
    let reply = tokio::time::timeout(2 * LIMIT, send(req)).await.expect("answered in time");
    (reply.status.as_u16(), reply.body)
}

/// keygate in front of an upstream answering CLEAN to everything; the
/// requests it read after the caller sent `request` (raw, `Connection: close`).
async fn sent_upstream(request: String) -> (String, Vec<Seen>) {
    let up = Scripted::start(vec![Step::reply(CLEAN)]).await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let reply = raw(kg.addr, request.as_bytes()).await;
    kg.stop().await;
    (reply, up.seen())
}

/// The one request the upstream read, checked for one framing at most.
fn only(seen: &[Seen], reply: &str) -> Seen {
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let r = seen.first().cloned().expect("one request");
    let (cl, te) = (r.headers("content-length"), r.headers("transfer-encoding"));
    assert!(cl.is_empty() || te.is_empty(), "both Content-Length and Transfer-Encoding: {}", r.head);
    assert!(cl.len() <= 1 && te.len() <= 1, "{}", r.head);
    if let Some(te) = te.first() {
        assert_eq!(te.to_ascii_lowercase(), "chunked", "{}", r.head);
    }
    if let Some(cl) = cl.first() {
        assert_eq!(cl.parse::<usize>().ok(), Some(r.body.len()), "{}", r.head);
    }
    r
}

#[tokio::test]
async fn a_chunked_request_body_goes_upstream_framed_once_and_intact() {
    let bodies = [
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "B\r\nhello world\r\n0\r\n\r\n",
    ];
    for chunks in bodies {
        let req = format!(
            "POST /up HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunks}"
        );
        let (reply, seen) = sent_upstream(req).await;
        let r = only(&seen, &reply);
        assert_eq!(r.body, b"hello world", "{chunks:?}: {}", r.head);
        assert_eq!(r.line(), "POST /up HTTP/1.1");
    }
}

#[tokio::test]
async fn an_empty_post_carries_a_zero_length_and_a_get_no_framing() {
    let post =
        format!("POST /e HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let (reply, seen) = sent_upstream(post).await;
    let r = only(&seen, &reply);
    assert_eq!(r.headers("content-length"), ["0"], "{}", r.head);
    let get = format!("GET /g HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n");
    let (reply, seen) = sent_upstream(get).await;
    let r = only(&seen, &reply);
    assert!(r.headers("content-length").is_empty() && r.headers("transfer-encoding").is_empty(), "{}", r.head);
}

#[tokio::test]
async fn the_upstream_head_has_one_host_and_none_of_the_callers_hop_headers() {
    let hop = format!(
        "GET /h HTTP/1.1\r\nHost: caller.example\r\nX-API-Key: {KEY}\r\nConnection: close, x-foo\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nX-Foo: 1\r\n\r\n"
    );
    let no_host = format!("GET /h HTTP/1.0\r\nX-API-Key: {KEY}\r\n\r\n");
    for req in [hop, no_host] {
        let (reply, seen) = sent_upstream(req).await;
        let reply = reply.replacen("HTTP/1.0 200", "HTTP/1.1 200", 1);
        let r = only(&seen, &reply);
        assert_eq!(r.headers("host").len(), 1, "{}", r.head);
        for name in ["keep-alive", "te", "upgrade", "proxy-connection", "x-foo"] {
            assert!(r.headers(name).is_empty(), "{name} went upstream: {}", r.head);
        }
        for v in r.headers("connection") {
            let v = v.to_ascii_lowercase();
            assert!(!v.contains("x-foo") && !v.contains("upgrade"), "{}", r.head);
        }
    }
}

#[tokio::test]
async fn an_early_413_reaches_the_caller_and_the_next_request_works() {
    let early = early_413();
    let up = Scripted::start(vec![early, Step::reply(CLEAN)]).await;
    let config = basic_config(up.addr, KEY, "");
    let kg = Keygate::start(&config).await;
    let upload = Bytes::from(pattern(5 * 1024 * 1024));
    assert_eq!(answer(&kg, "POST", "/upload", upload).await, (413, Bytes::from("big")));
    assert_eq!(answer(&kg, "GET", "/second", Bytes::new()).await, (200, Bytes::from("clean")));
    assert_eq!(up.accepts(), 2);
    kg.stop().await;
}

/// After a final response that closes the connection, the rest of the
/// request body is not sent and the connection is not pooled. (hyper's
/// client pooled it while still busy: the next request waited
/// `connect_timeout` for it before dialling, and the exchange lived on
/// until the shutdown grace.)
#[tokio::test]
async fn an_early_response_with_close_frees_its_connection_at_once() {
    let early = early_413();
    let up = Scripted::start(vec![early, Step::reply(CLEAN)]).await;
    let config = gateway_config(&[up.addr], "connect_timeout = \"5s\"", &billing_client(KEY));
    let kg = Keygate::start(&config).await;
    let upload = Bytes::from(pattern(5 * 1024 * 1024));
    assert_eq!(answer(&kg, "POST", "/upload", upload).await, (413, Bytes::from("big")));
    let started = std::time::Instant::now();
    assert_eq!(answer(&kg, "GET", "/second", Bytes::new()).await, (200, Bytes::from("clean")));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "the next request waited {waited:?} for the closing connection");
    // The default shutdown grace is 30 s: a drain that needs it waits on the abandoned exchange.
    assert!(tokio::time::timeout(LIMIT, kg.stop()).await.is_ok(), "the abandoned exchange held the drain");
}

#[tokio::test]
async fn a_post_without_framing_headers_goes_upstream_with_a_zero_length() {
    let post = format!("POST /e HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n");
    let (reply, seen) = sent_upstream(post).await;
    let r = only(&seen, &reply);
    assert_eq!(r.headers("content-length"), ["0"], "{}", r.head);
}

/// A caller's request with both framings: refused, or sent upstream with one.
#[tokio::test]
async fn a_caller_request_with_length_and_chunked_goes_upstream_framed_once() {
    for length in ["4", "5", "40"] {
        let req = format!(
            "POST /s HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nContent-Length: {length}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let (reply, seen) = sent_upstream(req).await;
        if reply.starts_with("HTTP/1.1 400") {
            assert!(seen.is_empty(), "refused, yet sent upstream: {seen:?}");
            continue;
        }
        let r = only(&seen, &reply);
        assert_eq!(r.body, b"hello", "length {length}: {}", r.head);
    }
}

/// An upstream that answers 413 and closes after reading only the head,
/// leaving the request body unread.
fn early_413() -> Step {
    Step {
        read_body: false,
        actions: vec![
            Action::Write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig".to_vec(),
            ),
            Action::Hold,
        ],
    }
}
