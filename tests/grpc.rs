//! gRPC through keygate to `protocol = "http2"` upstreams: a real gRPC
//! client (tonic) through keygate to a real gRPC server (tonic's server side
//! on hyper, tests/support/grpc.rs), in clear text and over TLS.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::stream;
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::grpc::{frame, GrpcUpstream, Msg, Options};
use support::{billing_client, hash, Keygate};
use tonic::codec::ProstCodec;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const KEY: &str = "grpc-test-key-0001-5f3c9a7e2b6d4081";
const OTHER_KEY: &str = "grpc-other-key-0002-7a1d0c3e9b5f2468";
/// How long any one test step may take.
const LIMIT: Duration = Duration::from_secs(20);

/// keygate in front of `servers` (h2c), route `/test.Echo/` to them, client
/// `billing` allowed everywhere; `extra` is appended.
fn config(servers: &[std::net::SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"http://{s}\"")).collect();
    format!(
        r#"[listen]
address = "127.0.0.1:0"
max_concurrent_streams = 1000

[rate_limit]
per_second = 100000
burst = 100000

[upstreams.echo]
servers = [{}]
protocol = "http2"

[upstreams.down]
servers = ["http://127.0.0.1:1"]
protocol = "http2"

[[routes]]
name = "echo"
path = "/test.Echo/"
upstream = "echo"

[[routes]]
name = "down"
path = "/test.Down/"
upstream = "down"

{}
[clients.outsider]
routes = ["down"]
keys = [{{ hash = "{}" }}]
{extra}
"#,
        servers.join(", "),
        billing_client(KEY),
        hash(OTHER_KEY)
    )
}

async fn channel(kg: &Keygate) -> Channel {
    Endpoint::from_shared(format!("http://{}", kg.addr)).expect("endpoint").connect().await.expect("connect")
}

async fn unary(
    ch: &Channel,
    path: &'static str,
    msg: Msg,
    meta: &[(&'static str, &str)],
) -> Result<tonic::Response<Msg>, Status> {
    let mut client = tonic::client::Grpc::new(ch.clone());
    client.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(msg);
    for (k, v) in meta {
        req.metadata_mut().insert(*k, v.parse().expect("metadata value"));
    }
    let call = client.unary(req, PathAndQuery::from_static(path), ProstCodec::<Msg, Msg>::default());
    tokio::time::timeout(LIMIT, call).await.expect("call in time")
}

#[tokio::test]
async fn unary_call_with_the_key_stripped_and_the_identity_set() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let ch = channel(&kg).await;
    let bearer = format!("Bearer {KEY}");
    for (name, value) in [("x-api-key", KEY), ("authorization", bearer.as_str())] {
        let response = unary(&ch, "/test.Echo/Unary", Msg::new("hi", 7), &[(name, value)]).await.expect(name);
        assert_eq!(response.get_ref(), &Msg::new("echo:hi", 7));
        assert_eq!(response.metadata().get("x-served-by").unwrap(), "grpc-upstream");
        assert!(response.metadata().get("x-request-id").is_some());
        let call = up.calls().pop().expect("a call");
        assert_eq!(call.uri.path(), "/test.Echo/Unary");
        assert!(call.headers.get("x-api-key").is_none(), "{name}: key forwarded");
        assert!(call.headers.get("authorization").is_none(), "{name}: key forwarded");
        assert_eq!(call.headers["x-client-id"], "billing");
        assert_eq!(call.headers["te"], "trailers");
        assert_eq!(call.headers["content-type"], "application/grpc");
    }
    kg.stop().await;
}

#[tokio::test]
async fn server_streaming_of_ten_thousand_messages() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let ch = channel(&kg).await;
    let mut client = tonic::client::Grpc::new(ch);
    client.ready().await.expect("ready");
    let mut req = tonic::Request::new(Msg::new("count", 10_000));
    req.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    let path = PathAndQuery::from_static("/test.Echo/Count");
    let response = client.server_streaming(req, path, ProstCodec::<Msg, Msg>::default()).await.expect("call");
    let mut stream = response.into_inner();
    let mut next = 0u64;
    while let Some(msg) = tokio::time::timeout(LIMIT, stream.message()).await.expect("in time").expect("message") {
        assert_eq!(msg.n, next);
        next += 1;
    }
    assert_eq!(next, 10_000);
    kg.stop().await;
}

#[tokio::test]
async fn a_caller_that_stops_reading_stalls_the_server_stream() {
    const N: u64 = 100_000; // of 1 KiB: 100 MB if anything buffered it whole
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let mut client = tonic::client::Grpc::new(channel(&kg).await);
    client.ready().await.expect("ready");
    let mut req = tonic::Request::new(Msg::new("big", N));
    req.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    let path = PathAndQuery::from_static("/test.Echo/Count");
    let response = client.server_streaming(req, path, ProstCodec::<Msg, Msg>::default()).await.expect("call");
    let mut stream = response.into_inner();
    assert_eq!(stream.message().await.expect("first").map(|m| m.n), Some(0));
    // The caller reads nothing more: the server must stall once the windows
    // and socket buffers on the way are full.
    let deadline = Instant::now() + LIMIT;
    let mut seen = usize::MAX;
    while up.produced.load(Ordering::SeqCst) != seen {
        assert!(Instant::now() < deadline, "the server never stalled");
        seen = up.produced.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen < 10_000, "{seen} of {N} messages made while the caller read one");
    let mut next = 1;
    while let Some(msg) = tokio::time::timeout(LIMIT, stream.message()).await.expect("in time").expect("message") {
        assert_eq!(msg.n, next);
        next += 1;
    }
    assert_eq!(next, N);
    kg.stop().await;
}

#[tokio::test]
async fn client_streaming_of_a_thousand_messages() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let mut client = tonic::client::Grpc::new(channel(&kg).await);
    client.ready().await.expect("ready");
    let mut req = tonic::Request::new(stream::iter((1..=1000u64).map(|n| Msg::new("part", n))));
    req.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    let path = PathAndQuery::from_static("/test.Echo/Sum");
    let call = client.client_streaming(req, path, ProstCodec::<Msg, Msg>::default());
    let response = tokio::time::timeout(LIMIT, call).await.expect("in time").expect("call");
    assert_eq!(response.get_ref(), &Msg::new("1000", 500_500));
    kg.stop().await;
}

#[tokio::test]
async fn bidi_streaming_interleaves_messages() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let mut client = tonic::client::Grpc::new(channel(&kg).await);
    client.ready().await.expect("ready");
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let outgoing = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut req = tonic::Request::new(outgoing);
    req.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    tx.send(Msg::new("0", 0)).await.unwrap();
    let path = PathAndQuery::from_static("/test.Echo/Chat");
    let call = client.streaming(req, path, ProstCodec::<Msg, Msg>::default());
    let mut replies = tokio::time::timeout(LIMIT, call).await.expect("in time").expect("call").into_inner();
    // Each reply arrives before the next message is sent: nothing waits
    // for the whole request (or response) stream.
    for i in 0..100u64 {
        let reply = tokio::time::timeout(LIMIT, replies.message()).await.expect("reply in time").expect("ok");
        assert_eq!(reply, Some(Msg { text: format!("re:{i}"), n: i }));
        if i < 99 {
            tx.send(Msg { text: (i + 1).to_string(), n: i + 1 }).await.unwrap();
        }
    }
    drop(tx);
    assert_eq!(tokio::time::timeout(LIMIT, replies.message()).await.expect("end in time").expect("ok"), None);
    kg.stop().await;
}

#[tokio::test]
async fn trailing_metadata_from_the_server_arrives() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let ch = channel(&kg).await;
    let response = unary(&ch, "/test.Echo/Trailers", Msg::new("t", 1), &[("x-api-key", KEY)]).await.expect("call");
    assert_eq!(response.get_ref().text, "with trailers");
    assert_eq!(response.metadata().get("x-trailer").unwrap(), "yes");
    kg.stop().await;
}

/// A raw HTTP/2 gRPC request with `grpc-timeout` (tonic's own client would
/// enforce the deadline itself and hide keygate's).
async fn call_with_timeout(kg: &Keygate, timeout: &str, work_ms: u64) -> (http::HeaderMap, Duration) {
    let tcp = tokio::net::TcpStream::connect(kg.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/test.Echo/Slow", kg.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", KEY)
        .header("grpc-timeout", timeout)
        .body(Full::new(frame(&Msg::new("slow", work_ms))))
        .unwrap();
    let start = Instant::now();
    let response = tokio::time::timeout(LIMIT, sender.send_request(req)).await.expect("in time").expect("response");
    let took = start.elapsed();
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(LIMIT, body.collect()).await.expect("in time").expect("body");
    let mut headers = parts.headers;
    if let Some(trailers) = collected.trailers() {
        headers.extend(trailers.clone());
    }
    (headers, took)
}

#[tokio::test]
async fn grpc_timeout_shorter_than_the_work_is_deadline_exceeded_near_the_deadline() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let (headers, took) = call_with_timeout(&kg, "300m", 5_000).await;
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(2_000), "took {took:?}");
    // A deadline longer than the work lets the answer through.
    let (headers, _) = call_with_timeout(&kg, "10S", 10).await;
    assert_eq!(headers["grpc-status"], "0", "{headers:?}");
    kg.stop().await;
}

#[tokio::test]
async fn each_refusal_is_a_grpc_status() {
    let up = GrpcUpstream::start().await;
    let limited = "[clients.limited]\nroutes = [\"*\"]\nrate_limit = { per_second = 0.01, burst = 1 }\n";
    let limited_key = "grpc-limited-key-0003-4e8b2d6f0a9c1357";
    let extra = format!("{limited}keys = [{{ hash = \"{}\" }}]\n", hash(limited_key));
    let kg = Keygate::start(&config(&[up.addr], &extra)).await;
    let ch = channel(&kg).await;
    // The limited client's first call uses its burst of one.
    unary(&ch, "/test.Echo/Unary", Msg::new("x", 1), &[("x-api-key", limited_key)]).await.expect("first call");
    let bad = format!("{KEY}x");
    type Metadata<'a> = Vec<(&'static str, &'a str)>;
    let cases: [(&str, &'static str, Metadata<'_>, Code); 6] = [
        ("no key", "/test.Echo/Unary", vec![], Code::Unauthenticated),
        ("bad key", "/test.Echo/Unary", vec![("x-api-key", bad.as_str())], Code::Unauthenticated),
        ("forbidden", "/test.Echo/Unary", vec![("x-api-key", OTHER_KEY)], Code::PermissionDenied),
        ("no route", "/test.Nothing/Call", vec![("x-api-key", KEY)], Code::Unimplemented),
        ("rate limited", "/test.Echo/Unary", vec![("x-api-key", limited_key)], Code::ResourceExhausted),
        ("upstream down", "/test.Down/Call", vec![("x-api-key", OTHER_KEY)], Code::Unavailable),
    ];
    let before = up.calls().len();
    for (what, path, meta, code) in cases {
        let status = unary(&ch, path, Msg::new("x", 1), &meta).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
        assert!(status.metadata().get("x-request-id").is_some(), "{what}: {status:?}");
        if code == Code::ResourceExhausted {
            assert!(status.metadata().get("ratelimit-limit").is_some(), "{what}: {status:?}");
        }
    }
    assert_eq!(up.calls().len(), before, "a refused call reached the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn refusals_of_plain_http_requests_stay_json() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let reply = support::get(&kg.url("/test.Echo/Unary"), &[]).await;
    assert_eq!(reply.status, http::StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "missing_api_key");
    kg.stop().await;
}

#[tokio::test]
async fn http1_callers_reach_an_http2_upstream() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let req = http::Request::post(kg.url("/test.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // Connection-specific in HTTP/2: must not reach (or break) the upstream request.
        .header("proxy-connection", "keep-alive")
        .header("x-api-key", KEY)
        .body(Full::new(frame(&Msg::new("h1", 5))))
        .unwrap();
    let reply = support::send(req).await;
    assert_eq!(reply.status, http::StatusCode::OK);
    assert_eq!(&reply.body[..], &frame(&Msg::new("echo:h1", 5))[..]);
    let call = up.calls().pop().expect("a call");
    assert_eq!(call.uri.authority().map(|a| a.as_str()), Some(kg.addr.to_string().as_str()), "the caller's host");
    assert!(call.headers.get("host").is_none() && call.headers.get("x-api-key").is_none());
    assert!(call.headers.get("proxy-connection").is_none());
    kg.stop().await;
}

/// Poll the admin `/metrics` until every line of `want` is in it.
async fn metrics_until(kg: &Keygate, want: &[String]) {
    let url = format!("http://{}/metrics", kg.admin.expect("admin listener"));
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = String::from_utf8(support::get(&url, &[]).await.body.to_vec()).unwrap();
        let missing: Vec<&String> = want.iter().filter(|w| !text.lines().any(|l| l == w.as_str())).collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "missing {missing:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_grpc_statuses_and_upstream_connections() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "[admin]\naddress = \"127.0.0.1:0\"\n")).await;
    let ch = channel(&kg).await;
    unary(&ch, "/test.Echo/Unary", Msg::new("m", 1), &[("x-api-key", KEY)]).await.expect("call");
    unary(&ch, "/test.Echo/Trailers", Msg::new("m", 1), &[("x-api-key", KEY)]).await.expect("call");
    unary(&ch, "/test.Echo/Nothing", Msg::new("m", 1), &[("x-api-key", KEY)])
        .await
        .expect_err("unimplemented upstream");
    unary(&ch, "/test.Echo/Unary", Msg::new("m", 1), &[]).await.expect_err("no key");
    let server = format!("http://{}", up.addr);
    metrics_until(
        &kg,
        &[
            r#"keygate_grpc_requests_total{client="billing",route="echo",grpc_status="0"} 2"#.to_string(),
            r#"keygate_grpc_requests_total{client="billing",route="echo",grpc_status="12"} 1"#.to_string(),
            r#"keygate_grpc_requests_total{client="-",route="-",grpc_status="16"} 1"#.to_string(),
            format!(r#"keygate_upstream_connections{{upstream="echo",server="{server}"}} 1"#),
            format!(r#"keygate_upstream_streams{{upstream="echo",server="{server}"}} 0"#),
        ],
    )
    .await;
    let report = support::get(&format!("http://{}/upstreams", kg.admin.unwrap()), &[]).await.json();
    let http2 = &report["upstreams"][1]["servers"][0]["http2"]; // "down", then "echo"
    assert_eq!((http2["connections"].as_u64(), http2["streams"].as_u64()), (Some(1), Some(0)), "{report}");
    kg.stop().await;
}

#[tokio::test]
async fn health_checks_speak_http2_to_an_http2_upstream() {
    let up = GrpcUpstream::start().await;
    let toml = config(&[up.addr], "").replacen(
        "protocol = \"http2\"\n",
        "protocol = \"http2\"\nhealth_check = { path = \"/healthz\", interval = \"50ms\", unhealthy = 1 }\n",
        1,
    );
    let kg = Keygate::start(&toml).await;
    let deadline = Instant::now() + LIMIT;
    while up.calls().iter().filter(|c| c.uri.path() == "/healthz").count() < 3 {
        assert!(Instant::now() < deadline, "no HTTP/2 health check reached the server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ch = channel(&kg).await;
    unary(&ch, "/test.Echo/Unary", Msg::new("h", 1), &[("x-api-key", KEY)]).await.expect("server still in rotation");
    kg.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_calls_over_one_connection_to_a_server_allowing_100_streams() {
    let up = GrpcUpstream::start_with(Options { max_streams: Some(100), ..Options::default() }).await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let ch = channel(&kg).await;
    let calls = (0..1000u64).map(|i| {
        let ch = ch.clone();
        tokio::spawn(
            async move { unary(&ch, "/test.Echo/Slow", Msg::new("c", 20 + i % 5), &[("x-api-key", KEY)]).await },
        )
    });
    let results = futures_util::future::join_all(calls).await;
    let failed: Vec<_> = results.into_iter().filter_map(|r| r.expect("task").err()).collect();
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), failed.first());
    let connections = up.connections.load(Ordering::SeqCst);
    assert!(connections > 1, "all calls on {connections} connection(s)");
    assert!(connections <= keygate::upstream::http2::MAX_CONNECTIONS, "{connections} connections");
    assert!(up.peak.load(Ordering::SeqCst) > 100, "no more than one connection's streams at once");
    kg.stop().await;
}

#[tokio::test]
async fn a_stream_refused_unread_is_sent_again_on_another_connection() {
    let up = support::grpc::Refusing::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let ch = channel(&kg).await;
    let text = "sent again from the kept chunks";
    let response = unary(&ch, "/test.Echo/Unary", Msg::new(text, 0), &[("x-api-key", KEY)]).await.expect("call");
    assert_eq!(response.get_ref().text, format!("echo:{text}"));
    assert_eq!(up.streams.load(Ordering::SeqCst), 2, "refused, then sent again");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2, "the second attempt on another connection");
    kg.stop().await;
}

#[tokio::test]
async fn goaway_mid_load_fails_no_call() {
    let a = GrpcUpstream::start().await;
    let b = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[a.addr, b.addr], "")).await;
    let ch = channel(&kg).await;
    let calls: Vec<_> = (0..600u64)
        .map(|_| {
            let ch = ch.clone();
            tokio::spawn(async move {
                unary(&ch, "/test.Echo/Slow", Msg::new("g", 30), &[("x-api-key", KEY)]).await.map(|_| ())
            })
        })
        .collect();
    let deadline = Instant::now() + LIMIT;
    while a.calls().len() < 50 {
        assert!(Instant::now() < deadline, "server a saw no load");
        tokio::task::yield_now().await;
    }
    a.shutdown();
    let later: Vec<_> = (0..200u64)
        .map(|_| {
            let ch = ch.clone();
            tokio::spawn(async move {
                unary(&ch, "/test.Echo/Unary", Msg::new("g", 1), &[("x-api-key", KEY)]).await.map(|_| ())
            })
        })
        .collect();
    let results = futures_util::future::join_all(calls.into_iter().chain(later)).await;
    let failed: Vec<_> = results.into_iter().filter_map(|r| r.expect("task").err()).collect();
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), failed.first());
    assert!(!b.calls().is_empty());
    kg.stop().await;
}

#[tokio::test]
async fn https_upstream_with_alpn_h2_behind_a_private_ca() {
    let dir = support::tempdir();
    let ca = support::tls::Ca::new("upstream CA");
    let (cert, key) = ca.server().write(dir.path(), "upstream");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let up = GrpcUpstream::start_with(Options { tls: Some((cert.clone(), key.clone())), ..Options::default() }).await;
    let h1 = support::Upstream::start_tls(&cert, &key).await;
    let toml = format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.secure]
servers = ["https://localhost:{}"]
protocol = "http2"
tls = {{ ca = "{}" }}

[upstreams.old]
servers = ["https://localhost:{}"]
protocol = "http2"
tls = {{ ca = "{}" }}

[[routes]]
name = "secure"
path = "/test.Echo/"
upstream = "secure"

[[routes]]
name = "old"
path = "/test.Old/"
upstream = "old"

{}"#,
        up.addr.port(),
        ca_path.display(),
        h1.addr.port(),
        ca_path.display(),
        billing_client(KEY)
    );
    let kg = Keygate::start(&toml).await;
    let ch = channel(&kg).await;
    let response = unary(&ch, "/test.Echo/Unary", Msg::new("tls", 3), &[("x-api-key", KEY)]).await.expect("call");
    assert_eq!(response.get_ref(), &Msg::new("echo:tls", 3));
    assert_eq!(up.calls().pop().expect("call").headers["x-client-id"], "billing");
    // A server that offers only HTTP/1.1 is refused at the handshake.
    let status =
        unary(&ch, "/test.Old/Call", Msg::new("x", 1), &[("x-api-key", KEY)]).await.expect_err("http/1.1 only");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(h1.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn grpc_through_keygates_tls_listener() {
    let dir = support::tempdir();
    let ca = support::tls::Ca::new("listener CA");
    let (cert, key) = ca.server().write(dir.path(), "keygate");
    let ca_pem = std::fs::read_to_string(ca.write(dir.path(), "ca.pem")).unwrap();
    let up = GrpcUpstream::start().await;
    let toml = config(&[up.addr], "") + &support::tls::listen_tls(&cert, &key, None);
    let kg = Keygate::start(&toml).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", kg.addr.port())).unwrap();
    let ch = endpoint.tls_config(tls).expect("tls config").connect().await.expect("connect");
    let response = unary(&ch, "/test.Echo/Unary", Msg::new("over tls", 2), &[("x-api-key", KEY)]).await.expect("call");
    assert_eq!(response.get_ref(), &Msg::new("echo:over tls", 2));
    let status = unary(&ch, "/test.Echo/Unary", Msg::new("x", 1), &[]).await.expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    kg.stop().await;
}

#[test]
fn protocol_must_be_http1_or_http2() {
    let toml =
        "[listen]\naddress = \"127.0.0.1:0\"\n[upstreams.a]\nservers = [\"http://127.0.0.1:9\"]\nprotocol = \"h2c\"\n";
    let err = keygate::config::load_str(toml, std::path::Path::new("k.toml"), &Default::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("upstreams.a.protocol") && text.contains("\"h2c\" is not a protocol"), "{text}");
    assert!(text.contains("k.toml:5:"), "{text}");
}

#[test]
fn explain_names_the_grpc_status_of_a_refusal() {
    let dir = support::tempdir();
    std::fs::write(dir.path().join("keygate.toml"), config(&["127.0.0.1:9".parse().unwrap()], "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["explain", "-c", "keygate.toml", "--client", "outsider", "POST", "/test.Echo/Unary"])
        .args(["--header", "content-type: application/grpc"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verdict     403 forbidden"), "{text}");
    assert!(text.contains("grpc-status 7"), "{text}");
}
