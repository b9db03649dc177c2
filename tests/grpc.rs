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
use support::grpc::{frame, GrpcUpstream, Msg};
use support::grpc_client::{channel, config, unary, KEY, LIMIT, OTHER_KEY};
use support::{hash, Keygate};
use tonic::codec::ProstCodec;
use tonic::transport::Endpoint;
use tonic::Code;

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

#[tokio::test]
async fn request_trailers_reach_the_upstream() {
    let up = GrpcUpstream::start().await;
    let kg = Keygate::start(&config(&[up.addr], "")).await;
    let tcp = tokio::net::TcpStream::connect(kg.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-request-trailer", http::HeaderValue::from_static("ping"));
    let frames = vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(frame(&Msg::new("t", 1)))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let req = http::Request::post(format!("http://{}/test.Echo/Trailers", kg.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", KEY)
        .body(http_body_util::StreamBody::new(stream::iter(frames)))
        .unwrap();
    let response = tokio::time::timeout(LIMIT, sender.send_request(req)).await.expect("in time").expect("response");
    let collected = tokio::time::timeout(LIMIT, response.into_body().collect()).await.expect("in time").expect("body");
    let trailers = collected.trailers().expect("response trailers").clone();
    assert_eq!(trailers["x-echoed-trailer"], "ping", "{trailers:?}");
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

#[tokio::test]
async fn grpc_through_keygates_tls_listener() {
    // tonic's TLS enables rustls' ring feature beside keygate's aws-lc-rs in
    // test builds, so rustls cannot choose a process default by itself.
    keygate::tls::install_process_default();
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
