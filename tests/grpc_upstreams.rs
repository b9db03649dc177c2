//! HTTP/2 upstream connections for gRPC: stream limits, GOAWAY, refused
//! streams, health checks, metrics, and https upstreams with ALPN h2; a
//! real gRPC client (tonic) through keygate to real gRPC servers.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::grpc::{GrpcUpstream, Msg, Options};
use support::grpc_client::{channel, config, unary, KEY, LIMIT};
use support::{billing_client, Keygate};
use tonic::Code;

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
