//! Forwarding transparency: what the upstream receives, what the caller gets
//! back, and how upstream failures are reported.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use support::upstream::pattern;
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "forwarding-test-key";
const LIMIT: Duration = Duration::from_secs(10);

/// One upstream `main` over `servers` (with `upstream_extra` settings), one
/// route `/` to it, client `billing` holding KEY; `extra` is appended.
fn gateway(servers: &[SocketAddr], upstream_extra: &str, extra: &str) -> String {
    gateway_config(servers, upstream_extra, &format!("{}{extra}", billing_client(KEY)))
}

async fn start(up: &Upstream) -> Keygate {
    Keygate::start(&gateway(&[up.addr], "", "")).await
}

/// Every value of `name` whose spelling, read with `_` as `-`, is `name`.
fn values_any_spelling(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.as_str().replace('_', "-") == name)
        .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n).map(pattern).collect()
}

fn request(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).expect("request")
}

#[tokio::test]
async fn key_is_stripped_from_header_authorization_and_query() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&gateway(&[up.addr], "", "[auth]\nquery_param = \"api_key\"\n")).await;
    assert_eq!(get(&kg.url("/h"), &[("x-api-key", KEY), ("x_api_key", "copy")]).await.status, 200);
    let seen = up.last();
    assert!(values_any_spelling(&seen.headers, "x-api-key").is_empty(), "{:?}", seen.headers);
    assert_eq!(get(&kg.url("/a"), &[("authorization", &format!("Bearer {KEY}"))]).await.status, 200);
    assert!(up.last().headers.get("authorization").is_none());
    assert_eq!(get(&kg.url(&format!("/q?api_key={KEY}&keep=1")), &[]).await.status, 200);
    assert_eq!(up.last().uri, "/q?keep=1");
    for r in up.requests() {
        let all = format!("{} {:?}", r.uri, r.headers);
        assert!(!all.contains(KEY), "the key reached the upstream: {all}");
    }
    kg.stop().await;
}

#[tokio::test]
async fn identity_header_is_set_and_spoofs_removed() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let spoofs =
        [("X-Client-Id", "evil1"), ("x-client-id", "evil2"), ("X_Client_Id", "evil3"), ("x_client-id", "evil4")];
    let mut headers = vec![("x-api-key", KEY)];
    headers.extend(spoofs);
    assert_eq!(get(&kg.url("/id"), &headers).await.status, 200);
    let seen = up.last();
    assert_eq!(values_any_spelling(&seen.headers, "x-client-id"), ["billing"], "{:?}", seen.headers);
    kg.stop().await;
}

#[tokio::test]
async fn identity_spoofs_sent_raw_are_removed() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let req = format!(
        "GET /raw HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nX-CLIENT-ID: a\r\nX_Client_Id: b\r\nx_client-id: c\r\nConnection: close\r\n\r\n"
    );
    let reply = raw(kg.addr, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(values_any_spelling(&up.last().headers, "x-client-id"), ["billing"]);
    kg.stop().await;
}

#[tokio::test]
async fn connection_named_and_hop_by_hop_headers_are_removed() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    // Raw bytes, so no client library drops or rewrites a hop-by-hop header first.
    let req = format!(
        "GET /hop HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nConnection: x-foo, keep-alive\r\nConnection: close\r\n\
         X-Foo: named by connection\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
         Proxy-Authorization: Basic cHJveHk6cHc=\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n"
    );
    let reply = raw(kg.addr, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = up.last().headers;
    for gone in ["x-foo", "keep-alive", "te", "proxy-authorization", "proxy-connection", "upgrade"] {
        assert!(seen.get(gone).is_none(), "{gone} was forwarded: {seen:?}");
    }
    let connection = header(&seen, "connection").unwrap_or("");
    assert!(!connection.contains("x-foo"), "Connection was forwarded as sent: {connection}");
    assert_eq!(header(&seen, "x-kept"), Some("yes"));
    kg.stop().await;
}

#[tokio::test]
async fn connection_cannot_protect_the_key_or_remove_keygate_headers() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let headers = [
        ("x-api-key", KEY),
        ("connection", "x-api-key, x-client-id, x-forwarded-for, x-request-id"),
        ("x-request-id", "rid-connection-1"),
    ];
    assert_eq!(get(&kg.url("/c"), &headers).await.status, 200);
    let seen = up.last().headers;
    assert!(seen.get("x-api-key").is_none());
    assert_eq!(header(&seen, "x-client-id"), Some("billing"));
    assert_eq!(header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert!(header(&seen, "x-request-id").is_some_and(|v| !v.is_empty()));
    kg.stop().await;
}

#[tokio::test]
async fn method_override_headers_are_removed() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let headers = [
        ("x-api-key", KEY),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "PUT"),
        ("x-method-override", "PATCH"),
        ("x_http_method_override", "DELETE"),
    ];
    assert_eq!(get(&kg.url("/m"), &headers).await.status, 200);
    let seen = up.last();
    assert_eq!(seen.method, "GET");
    for name in ["x-http-method-override", "x-http-method", "x-method-override"] {
        assert!(values_any_spelling(&seen.headers, name).is_empty(), "{name}: {:?}", seen.headers);
    }
    kg.stop().await;
}

#[tokio::test]
async fn x_forwarded_headers_are_set_and_caller_copies_replaced() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let headers = [
        ("x-api-key", KEY),
        ("x-forwarded-for", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x_forwarded_for", "7.7.7.7"),
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("x-real-ip", "6.6.6.6"),
    ];
    assert_eq!(get(&kg.url("/f"), &headers).await.status, 200);
    let seen = up.last().headers;
    let host = kg.addr.to_string();
    assert_eq!(values_any_spelling(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values_any_spelling(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(values_any_spelling(&seen, "x-forwarded-host"), [host.as_str()]);
    assert!(seen.get("forwarded").is_none() && seen.get("x-real-ip").is_none(), "{seen:?}");
    kg.stop().await;
}

#[tokio::test]
async fn request_id_is_kept_when_sent() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let r = get(&kg.url("/r"), &[("x-api-key", KEY), ("x-request-id", "caller-id-42")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&up.last().headers, "x-request-id"), Some("caller-id-42"));
    assert_eq!(r.header("x-request-id"), Some("caller-id-42"), "echoed to the caller");
    kg.stop().await;
}

#[tokio::test]
async fn request_id_is_generated_when_absent() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let first = get(&kg.url("/r"), &[("x-api-key", KEY)]).await;
    let forwarded = header(&up.last().headers, "x-request-id").map(str::to_string);
    let second = get(&kg.url("/r"), &[("x-api-key", KEY)]).await;
    let id = first.header("x-request-id").expect("a generated id on the response");
    assert!(!id.is_empty());
    assert_eq!(forwarded.as_deref(), Some(id), "the upstream saw the id the caller got");
    assert_ne!(second.header("x-request-id"), Some(id), "each request gets its own id");
    kg.stop().await;
}

#[tokio::test]
async fn method_path_query_headers_and_body_are_preserved() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let body = "{\"amount\": 42, \"currency\": \"EUR\"}";
    let headers =
        [("x-api-key", KEY), ("content-type", "application/json"), ("x-custom", "one"), ("accept", "text/plain")];
    let r = send(request("PUT", &kg.url("/orders/7/lines?b=2&a=1&a=3&e=%20x"), &headers, body)).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.uri, "/orders/7/lines?b=2&a=1&a=3&e=%20x");
    assert_eq!(header(&seen.headers, "content-type"), Some("application/json"));
    assert_eq!(header(&seen.headers, "x-custom"), Some("one"));
    assert_eq!(header(&seen.headers, "accept"), Some("text/plain"));
    assert_eq!(header(&seen.headers, "host"), Some(kg.addr.to_string().as_str()), "Host is kept");
    assert_eq!((seen.body_len, seen.body_sha256.as_str()), (body.len(), sha256_hex(body.as_bytes()).as_str()));
    assert_eq!(r.header("x-upstream"), Some("yes"), "the upstream's response headers come back");
    assert_eq!(r.json()["body_len"], body.len(), "the upstream's body comes back");
    kg.stop().await;
}

#[tokio::test]
async fn five_mib_request_body_arrives_intact() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let body = pattern_bytes(5 * 1024 * 1024);
    let expected = sha256_hex(&body);
    let r = send(request("POST", &kg.url("/upload"), &[("x-api-key", KEY)], body)).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!((seen.body_len, seen.body_sha256), (5 * 1024 * 1024, expected));
    kg.stop().await;
}

#[tokio::test]
async fn twenty_mib_response_streams_intact() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let n = 20 * 1024 * 1024;
    let req = request("GET", &kg.url(&format!("/big/{n}")), &[("x-api-key", KEY)], Bytes::new());
    let res = tokio::time::timeout(LIMIT, client().request(req)).await.expect("head in time").expect("response");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    // The upstream holds back its last chunk until released: a proxy that
    // buffered the whole response would deliver nothing here.
    let first = tokio::time::timeout(LIMIT, body.frame()).await.expect("first bytes before the upstream finished");
    let first = first.expect("a frame").expect("no error").into_data().expect("a data frame");
    assert!(!first.is_empty());
    // Stored as a permit if the upstream has not reached its last chunk yet:
    // back-pressure keeps it from getting there before the body is read.
    up.release.notify_one();
    let rest = tokio::time::timeout(LIMIT, body.collect()).await.expect("the rest in time").expect("body").to_bytes();
    let mut hasher = Sha256::new();
    hasher.update(&first);
    hasher.update(&rest);
    assert_eq!(first.len() + rest.len(), n);
    assert_eq!(hex::encode(hasher.finalize()), sha256_hex(&pattern_bytes(n)));
    kg.stop().await;
}

#[tokio::test]
async fn head_is_forwarded_as_head() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let r = send(request("HEAD", &kg.url("/h?x=1"), &[("x-api-key", KEY)], Bytes::new())).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let seen = up.last();
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("HEAD", "/h?x=1"));
    kg.stop().await;
}

#[tokio::test]
async fn upstream_hop_by_hop_response_headers_are_removed() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let r = get(&kg.url("/echo"), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("yes"));
    assert!(r.header("x-hop").is_none(), "a header named by the upstream's Connection came back");
    assert!(!r.header("connection").unwrap_or("").contains("x-hop"));
    kg.stop().await;
}

#[tokio::test]
async fn closed_port_is_502_bad_gateway() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let kg = Keygate::start(&gateway(&[addr], "connect_timeout = \"1s\"", "")).await;
    let r = get(&kg.url("/x"), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "bad_gateway");
    kg.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_504_gateway_timeout() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&gateway(&[up.addr], "request_timeout = \"200ms\"", "")).await;
    let started = Instant::now();
    let r = get(&kg.url("/slow/2000"), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(started.elapsed() < Duration::from_millis(1500), "answered at the timeout, not when the upstream finished");
    kg.stop().await;
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let mut req = format!("ws://{}/ws", kg.addr).into_client_request().expect("ws request");
    req.headers_mut().insert("x-api-key", KEY.parse().expect("value"));
    let tcp = tokio::net::TcpStream::connect(kg.addr).await.expect("connect");
    let (mut ws, res) = tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(res.status(), 101);
    ws.send(Message::text("hello through keygate")).await.expect("send");
    let echoed = tokio::time::timeout(LIMIT, ws.next()).await.expect("echo in time").expect("a message").expect("ok");
    assert_eq!(echoed, Message::text("hello through keygate"));
    let _ = ws.close(None).await;
    kg.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_without_a_key_is_401() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let req = format!("ws://{}/ws", kg.addr).into_client_request().expect("ws request");
    let tcp = tokio::net::TcpStream::connect(kg.addr).await.expect("connect");
    let result = tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, tcp)).await.expect("answer in time");
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        Err(e) => panic!("expected an HTTP 401, got {e}"),
        Ok(_) => panic!("the upgrade succeeded without a key"),
    }
    kg.stop().await;
}

#[tokio::test]
async fn round_robin_reaches_every_server() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let kg = Keygate::start(&gateway(&[a.addr, b.addr], "", "")).await;
    for i in 0..4 {
        assert_eq!(get(&kg.url(&format!("/rr/{i}")), &[("x-api-key", KEY)]).await.status, 200);
    }
    assert_eq!((a.count(), b.count()), (2, 2));
    kg.stop().await;
}

#[tokio::test]
async fn http2_client_reaches_an_http1_upstream() {
    let up = Upstream::start().await;
    let kg = start(&up).await;
    let h2 = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    let req = request("GET", &kg.url("/h2?x=1"), &[("x-api-key", KEY)], Bytes::new());
    let res = tokio::time::timeout(LIMIT, h2.request(req)).await.expect("in time").expect("response");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let seen = up.last();
    // An HTTP/2 upstream request would arrive in absolute form (from :scheme and :authority).
    assert_eq!(seen.uri, "/h2?x=1", "forwarded over HTTP/1.1");
    let authority = kg.addr.to_string();
    assert_eq!(header(&seen.headers, "host"), Some(authority.as_str()));
    assert_eq!(header(&seen.headers, "x-forwarded-host"), Some(authority.as_str()));
    assert_eq!(header(&seen.headers, "x-client-id"), Some("billing"));
    kg.stop().await;
}
