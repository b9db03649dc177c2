//! Several servers mean availability: failover of requests that never
//! reached a server, passive ejection, active health checks, all servers
//! down, `/upstreams`, least_requests, and HTTP/1.0 servers.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::failover::{dead_addr, hang_up_server, http10_server, wait_for, Backend, Mode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "failover-test-key-0123456789";

/// `servers` as upstream `main` (with `extra` in its table), an admin
/// listener, limits out of the way, and client `billing`.
fn config(servers: &[SocketAddr], extra: &str) -> String {
    let rest = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[auth]\nmax_failures_per_minute = 100000\n\n\
         [rate_limit]\nper_second = 100000\nburst = 100000\n\n{}",
        billing_client(KEY)
    );
    gateway_config(servers, extra, &rest)
}

async fn call(kg: &Keygate, path: &str) -> Reply {
    get(&kg.url(path), &[("x-api-key", KEY)]).await
}

async fn admin(kg: &Keygate, path: &str) -> Reply {
    get(&format!("http://{}{path}", kg.admin.expect("admin listener")), &[]).await
}

async fn upstreams(kg: &Keygate) -> Value {
    let r = admin(kg, "/upstreams").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// The `/upstreams` entry of `server` in upstream `main`.
async fn server(kg: &Keygate, server: SocketAddr) -> Value {
    let doc = upstreams(kg).await;
    // By port: https servers are named `localhost` (their certificates' name).
    let url = format!(":{}", server.port());
    doc["upstreams"][0]["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["server"].as_str().is_some_and(|u| u.ends_with(&url))).cloned())
        .unwrap_or_else(|| panic!("{url} not in {doc}"))
}

async fn state(kg: &Keygate, addr: SocketAddr) -> String {
    server(kg, addr).await["state"].as_str().unwrap_or_default().to_string()
}

/// The value of the series `name` whose labels include all of `labels`.
async fn metric(kg: &Keygate, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = String::from_utf8(admin(kg, "/metrics").await.body.to_vec()).expect("UTF-8");
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (n == name && all).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn dead_servers_cost_no_request_an_error() {
    for layout in ["dead live", "dead dead live", "live dead", "dead live dead"] {
        let live = Backend::start("live", Mode::Ok).await;
        let mut servers = Vec::new();
        for s in layout.split(' ') {
            servers.push(if s == "live" { live.addr } else { dead_addr().await });
        }
        let kg = Keygate::start(&config(&servers, "")).await;
        for i in 0..20 {
            let r = call(&kg, "/x").await;
            assert_eq!(r.status, 200, "{layout}: request {i}: {:?}", r.body);
            assert_eq!(r.header("x-backend"), Some("live"));
        }
        assert_eq!(live.requests(), 20, "{layout}");
        kg.stop().await;
    }
}

#[tokio::test]
async fn a_dead_server_is_ejected_and_shown_in_upstreams_and_metrics() {
    let live = Backend::start("live", Mode::Ok).await;
    let dead = dead_addr().await;
    let kg = Keygate::start(&config(&[dead, live.addr], "")).await;
    for _ in 0..20 {
        assert_eq!(call(&kg, "/").await.status, 200);
    }
    let doc = upstreams(&kg).await;
    let main = &doc["upstreams"][0];
    assert_eq!(main["name"], "main");
    assert_eq!(main["strategy"], "round_robin");
    assert_eq!(main["health_check"], false);
    assert_eq!(main["servers_up"], 1);
    let d = server(&kg, dead).await;
    assert_eq!(d["state"], "ejected", "{d}");
    assert_eq!(d["up"], false);
    assert_eq!(d["ejections"], 1, "ejected once: the default max_fails (3) reached, then skipped");
    assert!(d["consecutive_failures"].as_u64() >= Some(3), "{d}");
    assert!(d["ejected_for_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 10_000), "{d}");
    let l = server(&kg, live.addr).await;
    assert_eq!((l["state"].as_str(), l["up"].as_bool(), l["ejections"].as_u64()), (Some("up"), Some(true), Some(0)));
    let dead_url = format!("http://{dead}");
    let live_url = format!("http://{}", live.addr);
    let up = |url| [("upstream", "main"), ("server", url)];
    assert_eq!(metric(&kg, "keygate_upstream_server_up", &up(dead_url.as_str())).await, Some(0.0));
    assert_eq!(metric(&kg, "keygate_upstream_server_up", &up(live_url.as_str())).await, Some(1.0));
    let ejected = [("server", dead_url.as_str()), ("cause", "passive")];
    assert_eq!(metric(&kg, "keygate_upstream_ejections_total", &ejected).await, Some(1.0));
    assert_eq!(admin(&kg, "/readyz").await.status, 200);
    kg.stop().await;
}

#[tokio::test]
async fn a_request_body_that_never_left_goes_whole_to_the_next_server() {
    let up = Upstream::start().await;
    let dead = dead_addr().await;
    let kg = Keygate::start(&config(&[dead, up.addr], "")).await;
    let body = vec![7u8; 300_000];
    let req = Request::post(kg.url("/upload"))
        .header("x-api-key", KEY)
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    // The first request goes to the first server: the dead one.
    let r = send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.count(), 1);
    let got = up.last();
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.body_len, body.len());
    assert_eq!(got.body_sha256, hex::encode(Sha256::digest(&body)));
    kg.stop().await;
}

#[tokio::test]
async fn a_request_that_reached_a_server_is_never_sent_again() {
    // The first request goes to the first server, which reads it and hangs up.
    let cases: [(&str, &[u8]); 3] = [("POST", b"debit 100 EUR"), ("PUT", b"state"), ("GET", b"")];
    for (method, body) in cases {
        let (hang_up, seen) = hang_up_server().await;
        let live = Backend::start("live", Mode::Ok).await;
        let kg = Keygate::start(&config(&[hang_up, live.addr], "")).await;
        let req = Request::builder()
            .method(method)
            .uri(kg.url("/pay"))
            .header("x-api-key", KEY)
            .body(Full::new(Bytes::from_static(body)))
            .expect("request");
        let r = send(req).await;
        assert_eq!(r.status, 502, "{method}: {:?}", r.body);
        assert_eq!(r.json()["error"], "bad_gateway");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1, "{method}: the first server had it");
        assert_eq!(live.requests(), 0, "{method}: not sent a second time");
        kg.stop().await;
    }
}

#[tokio::test]
async fn a_slow_server_answering_5xx_is_neither_retried_nor_ejected() {
    // An HTTP answer, 5xx included, is the server's word: keygate passes it
    // on and does not count it against the server (health checks can).
    let live = Backend::start("live", Mode::Ok).await;
    let failing = Backend::start("failing", Mode::Status(503, Duration::from_millis(100))).await;
    let kg = Keygate::start(&config(&[live.addr, failing.addr], "")).await;
    let mut by_status = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let r = call(&kg, "/").await;
        let from = r.header("x-backend").unwrap_or("keygate").to_string();
        *by_status.entry((r.status.as_u16(), from)).or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<_, _> =
        [((200, "live".to_string()), 10), ((503, "failing".to_string()), 10)].into_iter().collect();
    assert_eq!(by_status, want);
    assert_eq!(failing.requests(), 10, "each 503 was sent once");
    let f = server(&kg, failing.addr).await;
    assert_eq!((f["state"].as_str(), f["consecutive_failures"].as_u64()), (Some("up"), Some(0)), "{f}");
    kg.stop().await;
}

#[tokio::test]
async fn an_ejected_server_gets_no_traffic_until_fail_timeout_ends() {
    let live = Backend::start("live", Mode::Ok).await;
    let mut flaky = Backend::start("flaky", Mode::Ok).await;
    flaky.stop().await;
    let extra = "max_fails = 1\nfail_timeout = \"60s\"";
    let kg = Keygate::start(&config(&[flaky.addr, live.addr], extra)).await;
    assert_eq!(call(&kg, "/").await.header("x-backend"), Some("live"));
    assert_eq!(state(&kg, flaky.addr).await, "ejected");
    flaky.restart().await;
    for _ in 0..10 {
        assert_eq!(call(&kg, "/").await.header("x-backend"), Some("live"));
    }
    assert_eq!(flaky.requests(), 0, "skipped while ejected, though it is back");
    kg.stop().await;
}

#[tokio::test]
async fn a_server_that_comes_back_is_used_again_after_fail_timeout() {
    let live = Backend::start("live", Mode::Ok).await;
    let mut flaky = Backend::start("flaky", Mode::Ok).await;
    flaky.stop().await;
    let extra = "max_fails = 1\nfail_timeout = \"300ms\"";
    let kg = Keygate::start(&config(&[flaky.addr, live.addr], extra)).await;
    let ejected_at = Instant::now();
    assert_eq!(call(&kg, "/").await.status, 200);
    assert_eq!(state(&kg, flaky.addr).await, "ejected");
    flaky.restart().await;
    wait_for(Duration::from_secs(10), "the flaky server answers again", || async {
        call(&kg, "/").await.header("x-backend") == Some("flaky")
    })
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(300), "not before fail_timeout");
    assert_eq!(state(&kg, flaky.addr).await, "up");
    let mut from_flaky = 0;
    for _ in 0..10 {
        from_flaky += usize::from(call(&kg, "/").await.header("x-backend") == Some("flaky"));
    }
    assert_eq!(from_flaky, 5, "back in the rotation");
    kg.stop().await;
}

#[tokio::test]
async fn a_trial_that_fails_keeps_the_server_ejected() {
    let live = Backend::start("live", Mode::Ok).await;
    let dead = dead_addr().await;
    let kg = Keygate::start(&config(&[dead, live.addr], "max_fails = 1\nfail_timeout = \"100ms\"")).await;
    assert_eq!(call(&kg, "/").await.status, 200);
    let first = server(&kg, dead).await;
    assert_eq!(first["ejections"], 1);
    // Past several fail_timeouts, each trial fails and is retried on `live`.
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        assert_eq!(call(&kg, "/").await.status, 200);
    }
    let later = server(&kg, dead).await;
    assert_eq!(later["state"], "ejected");
    assert_eq!(later["ejections"], 1, "a failed trial is not a new ejection: {later}");
    assert!(later["consecutive_failures"].as_u64() > Some(1), "trials were sent: {later}");
    kg.stop().await;
}

const CHECKS: &str =
    "health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"500ms\", healthy = 2, unhealthy = 3 }";

#[tokio::test]
async fn health_checks_take_a_server_down_and_bring_it_back_at_their_thresholds() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let kg = Keygate::start(&config(&[a.addr, b.addr], CHECKS)).await;
    assert_eq!(upstreams(&kg).await["upstreams"][0]["health_check"], true);
    wait_for(Duration::from_secs(5), "b is checked", || async {
        b.counts.checks_passed.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    b.set_healthy(false);
    wait_for(Duration::from_secs(5), "b is down", || async { state(&kg, b.addr).await == "down" }).await;
    let failed = b.counts.checks_failed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(failed >= 3, "down after unhealthy = 3 failed checks, not {failed}");
    for _ in 0..10 {
        assert_eq!(call(&kg, "/").await.header("x-backend"), Some("a"));
    }
    assert_eq!(b.requests(), 0, "a server down gets no traffic");
    let b_url = format!("http://{}", b.addr);
    let sb = [("server", b_url.as_str())];
    assert_eq!(metric(&kg, "keygate_upstream_server_up", &sb).await, Some(0.0));
    let cause = [("server", b_url.as_str()), ("cause", "health_check")];
    assert_eq!(metric(&kg, "keygate_upstream_ejections_total", &cause).await, Some(1.0));

    let passed_before = b.counts.checks_passed.load(std::sync::atomic::Ordering::SeqCst);
    b.set_healthy(true);
    wait_for(Duration::from_secs(5), "b is back", || async { state(&kg, b.addr).await == "up" }).await;
    let passed = b.counts.checks_passed.load(std::sync::atomic::Ordering::SeqCst) - passed_before;
    assert!(passed >= 2, "back after healthy = 2 passed checks, not {passed}");
    let mut from_b = 0;
    for _ in 0..10 {
        from_b += usize::from(call(&kg, "/").await.header("x-backend") == Some("b"));
    }
    assert_eq!(from_b, 5);
    assert_eq!(metric(&kg, "keygate_upstream_server_up", &sb).await, Some(1.0));
    kg.stop().await;
}

#[tokio::test]
async fn all_servers_down_answers_502_at_once_and_stays_ready() {
    // Both would hold a request for 30 s: a 502 in well under that shows
    // keygate did not try them.
    let hold = Mode::Status(200, Duration::from_secs(30));
    let a = Backend::start("a", hold).await;
    let b = Backend::start("b", hold).await;
    a.set_healthy(false);
    b.set_healthy(false);
    let extra = format!("request_timeout = \"20s\"\n{CHECKS}");
    let kg = Keygate::start(&config(&[a.addr, b.addr], &extra)).await;
    wait_for(Duration::from_secs(5), "both down", || async { upstreams(&kg).await["upstreams"][0]["servers_up"] == 0 })
        .await;
    let start = Instant::now();
    let r = call(&kg, "/").await;
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert_eq!(a.requests() + b.requests(), 0);
    assert_eq!(admin(&kg, "/readyz").await.status, 200, "the proxy is ready; its upstream is not");
    let kind = [("upstream", "main"), ("kind", "no_server")];
    assert_eq!(metric(&kg, "keygate_upstream_errors_total", &kind).await, Some(1.0));
    kg.stop().await;
}

#[tokio::test]
async fn all_servers_ejected_answers_502_without_connecting() {
    let (one, two) = (dead_addr().await, dead_addr().await);
    let kg = Keygate::start(&config(&[one, two], "max_fails = 1\nfail_timeout = \"60s\"")).await;
    let r = call(&kg, "/").await;
    assert_eq!(r.status, 502, "both tried, both refused");
    assert_eq!(upstreams(&kg).await["upstreams"][0]["servers_up"], 0);
    for _ in 0..5 {
        assert_eq!(call(&kg, "/").await.status, 502);
    }
    let kind = |k| [("upstream", "main"), ("kind", k)];
    assert_eq!(metric(&kg, "keygate_upstream_errors_total", &kind("connect")).await, Some(1.0));
    assert_eq!(metric(&kg, "keygate_upstream_errors_total", &kind("no_server")).await, Some(5.0));
    kg.stop().await;
}

#[tokio::test]
async fn least_requests_sends_to_the_idle_server() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let kg = Keygate::start(&config(&[a.addr, b.addr], "strategy = \"least_requests\"")).await;
    let url = kg.url("/slow/3000");
    let slow = tokio::spawn(async move { get(&url, &[("x-api-key", KEY)]).await });
    let active = |x: &Backend| x.counts.active.load(std::sync::atomic::Ordering::SeqCst);
    wait_for(Duration::from_secs(5), "the slow request is being answered", || async { active(&a) + active(&b) == 1 })
        .await;
    let idle = if active(&a) == 1 { "b" } else { "a" };
    for i in 0..10 {
        assert_eq!(call(&kg, "/").await.header("x-backend"), Some(idle), "request {i}");
    }
    let doc = upstreams(&kg).await;
    assert_eq!(doc["upstreams"][0]["strategy"], "least_requests");
    let in_flight: Vec<u64> = doc["upstreams"][0]["servers"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["in_flight"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(in_flight.iter().sum::<u64>(), 1, "{doc}");
    assert_eq!(slow.await.expect("slow request").status, 200);
    kg.stop().await;
}

/// Read one response (Content-Length or chunked body) from a kept-alive connection.
async fn read_one(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let lower = head.to_ascii_lowercase();
            let length = lower.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().to_string()));
            let done = match length {
                Some(len) => body.len() >= len.parse().unwrap_or(0),
                None => body.ends_with("0\r\n\r\n"),
            };
            if done {
                return text;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, tcp.read(&mut buf)).await.expect("response in time").expect("read");
        assert!(n > 0, "connection closed: {text:?}");
        out.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn an_http10_server_is_answered_to_http11_callers_in_http11_with_keep_alive() {
    for length in [true, false] {
        let up = http10_server("hello from 1.0", length).await;
        let kg = Keygate::start(&config(&[up], "")).await;
        let mut tcp = TcpStream::connect(kg.addr).await.expect("connect");
        for i in 0..3 {
            let req = format!("GET /file HTTP/1.1\r\nHost: svc\r\nX-API-Key: {KEY}\r\n\r\n");
            tcp.write_all(req.as_bytes()).await.expect("write");
            let response = read_one(&mut tcp).await;
            assert!(response.starts_with("HTTP/1.1 200"), "length={length} #{i}: {response}");
            assert!(response.contains("hello from 1.0"), "{response}");
            assert!(!response.to_ascii_lowercase().contains("connection: close"), "{response}");
        }
        kg.stop().await;
    }
}

#[tokio::test]
async fn an_http10_caller_is_still_answered_in_http10() {
    let up = http10_server("old", true).await;
    let kg = Keygate::start(&config(&[up], "")).await;
    let out = raw(kg.addr, format!("GET / HTTP/1.0\r\nHost: svc\r\nX-API-Key: {KEY}\r\n\r\n").as_bytes()).await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    kg.stop().await;
}

#[tokio::test]
async fn health_state_survives_a_reload_and_checks_follow_the_new_config() {
    let live = Backend::start("live", Mode::Ok).await;
    let sick = Backend::start("sick", Mode::Ok).await;
    sick.set_healthy(false);
    let dead = dead_addr().await;
    let ejecting = "max_fails = 1\nfail_timeout = \"60s\"";
    let kg = Keygate::start(&config(&[dead, live.addr, sick.addr], ejecting)).await;
    assert_eq!(call(&kg, "/").await.status, 200);
    assert_eq!(state(&kg, dead).await, "ejected");
    let shared = kg.handle.as_ref().expect("running").shared.clone();
    let reload = |extra: String| {
        std::fs::write(&kg.config_path, config(&[dead, live.addr, sick.addr], &extra)).expect("write");
        assert!(keygate::reload::reload(&shared, Some(&kg.config_path)), "reload");
    };
    // Checks turned on by a reload: a task starts for them; the ejection stays.
    reload(format!("{ejecting}\nrequest_timeout = \"20s\"\n{CHECKS}"));
    wait_for(Duration::from_secs(5), "sick is down", || async { state(&kg, sick.addr).await == "down" }).await;
    // The dead server now fails its checks too; its passive ejection (60 s) was kept.
    let d = server(&kg, dead).await;
    assert!(d["ejected_for_ms"].as_u64().is_some_and(|ms| ms > 30_000), "{d}");
    let dead_url = format!("http://{dead}");
    let passive = [("server", dead_url.as_str()), ("cause", "passive")];
    assert_eq!(metric(&kg, "keygate_upstream_ejections_total", &passive).await, Some(1.0));
    // Checks turned off: their verdict goes with them.
    reload(ejecting.to_string());
    assert_eq!(state(&kg, sick.addr).await, "up");
    kg.stop().await;
}

#[test]
fn check_points_at_bad_failover_settings() {
    let cases = [
        ("strategy = \"random\"", "\"random\"", "upstreams.main.strategy", "least_requests"),
        ("max_fails = -1", "-1", "upstreams.main.max_fails", "0 or more"),
        ("fail_timeout = \"soon\"", "\"soon\"", "upstreams.main.fail_timeout", "not a duration"),
        ("fail_timeout = \"0s\"", "\"0s\"", "upstreams.main.fail_timeout", "longer than zero"),
        ("health_check = { interval = \"0s\" }", "\"0s\"", "upstreams.main.health_check.interval", "longer than zero"),
        (
            "health_check = { timeout = \"one second\" }",
            "\"one second\"",
            "upstreams.main.health_check.timeout",
            "not a duration",
        ),
        ("health_check = { path = \"healthz\" }", "\"healthz\"", "upstreams.main.health_check.path", "path"),
        ("health_check = { healthy = 0 }", "0", "upstreams.main.health_check.healthy", "from 1"),
        ("health_check = { unhealthy = -2 }", "-2", "upstreams.main.health_check.unhealthy", "from 1"),
        ("health_check = { intervall = \"1s\" }", "intervall", "upstreams.main.health_check.intervall", "unknown"),
    ];
    let server: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    for (line, value, field, message) in cases {
        let text = config(&[server], line);
        let at = text.find(line).expect("line") + line.find(value).expect("value");
        let (l, c) = keygate::config::error::line_col(&text, at);
        let path = std::path::Path::new("keygate.toml");
        let err = keygate::config::load_str(&text, path, &Default::default()).expect_err(line).to_string();
        let want = format!("keygate.toml:{l}:{c}: {field}: ");
        assert!(err.contains(&want), "{line}: want {want:?} in {err:?}");
        assert!(err.contains(message), "{line}: want {message:?} in {err:?}");
    }
    let good = "strategy = \"least_requests\"\nmax_fails = 0\nfail_timeout = \"2s\"\n\
                health_check = { path = \"/ready?deep=1\", interval = \"2s\", timeout = \"2s\", healthy = 1, unhealthy = 1 }";
    let config =
        keygate::config::load_str(&config(&[server], good), std::path::Path::new("k.toml"), &Default::default())
            .expect("valid");
    let health = &config.upstreams[0].health;
    assert_eq!(health.strategy, keygate::config::Strategy::LeastRequests);
    assert_eq!(health.max_fails, 0);
    assert_eq!(health.check.as_ref().map(|c| c.path.as_str()), Some("/ready?deep=1"));
}

#[tokio::test]
async fn a_failed_tls_handshake_goes_to_the_next_server() {
    let dir = tempdir();
    let (trusted, rogue) = (tls::Ca::new("trusted"), tls::Ca::new("rogue"));
    let ca = trusted.write(dir.path(), "ca.pem");
    let (good_cert, good_key) = trusted.server().write(dir.path(), "good");
    let (bad_cert, bad_key) = rogue.server().write(dir.path(), "bad");
    let good = Upstream::start_tls(&good_cert, &good_key).await;
    let bad = Upstream::start_tls(&bad_cert, &bad_key).await;
    let text = config(&[bad.addr, good.addr], &format!("tls = {{ ca = \"{}\" }}", ca.display()))
        .replace("\"http://127.0.0.1:", "\"https://localhost:");
    let kg = Keygate::start(&text).await;
    for i in 0..10 {
        assert_eq!(call(&kg, "/").await.status, 200, "request {i}");
    }
    assert_eq!(good.count(), 10);
    assert_eq!(bad.count(), 0, "never used unverified");
    assert_eq!(state(&kg, bad.addr).await, "ejected");
    kg.stop().await;
}

#[tokio::test]
async fn a_server_removed_by_a_reload_leaves_the_metrics() {
    let (a, b) = (Backend::start("a", Mode::Ok).await, Backend::start("b", Mode::Ok).await);
    let kg = Keygate::start(&config(&[a.addr, b.addr], "")).await;
    let (a_url, b_url) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    assert_eq!(server_up(&kg, &b_url).await, Some(1.0));
    std::fs::write(&kg.config_path, config(&[a.addr], "")).expect("write");
    let shared = kg.handle.as_ref().expect("running").shared.clone();
    assert!(keygate::reload::reload(&shared, Some(&kg.config_path)));
    assert_eq!(server_up(&kg, &a_url).await, Some(1.0));
    assert_eq!(server_up(&kg, &b_url).await, None, "the removed server's series is gone");
    kg.stop().await;
}

async fn server_up(kg: &Keygate, url: &str) -> Option<f64> {
    metric(kg, "keygate_upstream_server_up", &[("upstream", "main"), ("server", url)]).await
}
