//! Limits shared through a real Redis: one budget for several instances,
//! the fallback when Redis fails (breaker, metrics, recovery), calendar
//! quotas, passwords kept out of output, and `[redis]` validation.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::ops::eventually;
use support::redis_server::{start_with_clock, RedisServer};
use support::*;

const KEY: &str = "redis-test-key";

/// A gateway with client `billing` (every route, `rate`, `quota` if any) and `tables` appended.
fn config(up: SocketAddr, rate: &str, quota: &str, tables: &str) -> String {
    let client = format!(
        "[clients.billing]\nroutes = [\"*\"]\nrate_limit = {rate}\n{quota}\nkeys = [{{ hash = \"{}\" }}]\n",
        hash(KEY)
    );
    gateway_config(&[up], "", &format!("[admin]\naddress = \"127.0.0.1:0\"\n\n{client}\n{tables}"))
}

fn redis_table(url: &str, extra: &str) -> String {
    format!("[rate_limit]\nper_second = 50\nburst = 100\nstore = \"redis\"\n\n[redis]\nurl = \"{url}\"\n{extra}\n")
}

async fn start(toml: &str) -> Keygate {
    Keygate::start(toml).await
}

async fn call(kg: &Keygate) -> Reply {
    get(&kg.url("/r"), &[("x-api-key", KEY)]).await
}

async fn metrics(kg: &Keygate) -> String {
    let admin = kg.admin.expect("admin listener");
    String::from_utf8_lossy(&get(&format!("http://{admin}/metrics"), &[]).await.body).into_owned()
}

/// The value of the first series whose line starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix))?.rsplit(' ').next()?.parse().ok()
}

async fn breaker_open(kg: &Keygate) -> Option<f64> {
    metric(&metrics(kg).await, "keygate_limiter_breaker_open ")
}

/// Wait until the breaker reports `open` (the link's probe runs every 250 ms).
async fn until_breaker(kg: &Keygate, open: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker_open(kg).await != Some(open) {
        assert!(Instant::now() < deadline, "breaker never became {open}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status.as_u16()).collect()
}

async fn calls(kg: &Keygate, n: usize) -> Vec<Reply> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(call(kg).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_budget() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let (per_second, burst) = (20.0, 10.0);
    let toml = config(up.addr, "{ per_second = 20, burst = 10 }", "", &redis_table(&redis.url(), ""));
    let kgs = [start(&toml).await, start(&toml).await, start(&toml).await];
    for kg in &kgs {
        until_breaker(kg, 0.0).await;
    }
    let http = client();
    let mut allowed = 0usize;
    let begin = Instant::now();
    let mut i = 0usize;
    while begin.elapsed() < Duration::from_secs(2) {
        let kg = &kgs[i % 3];
        i += 1;
        let req = http::Request::get(kg.url("/r")).header("x-api-key", KEY).body(Full::new(Bytes::new())).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(5), http.request(req)).await.unwrap().unwrap();
        match res.status().as_u16() {
            200 => allowed += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    let expected = burst + per_second * begin.elapsed().as_secs_f64();
    let allowed = allowed as f64;
    assert!(i > 400, "enough requests to exhaust the budget: {i}");
    assert!((allowed - expected).abs() <= expected * 0.1, "allowed {allowed}, expected {expected:.1} ± 10 %");
    assert_eq!(redis.keys("keygate:v1:{billing}:rate:20:10").len(), 1, "one bucket in Redis, named by client and rate");
    for kg in kgs {
        kg.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_falls_back_then_shares_again() {
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let tables = redis_table(&redis.url(), "timeout = \"50ms\"");
    let kg = start(&config(up.addr, "{ per_second = 0.001, burst = 3 }", "", &tables)).await;
    until_breaker(&kg, 0.0).await;
    assert_eq!(statuses(&calls(&kg, 4).await), [200, 200, 200, 429], "the shared budget");

    redis.kill();
    let mut answered = Vec::new();
    for _ in 0..8 {
        let t = Instant::now();
        let r = call(&kg).await;
        assert!(t.elapsed() < Duration::from_millis(500), "answered within the timeout: {:?}", t.elapsed());
        answered.push(r.status.as_u16());
    }
    assert_eq!(answered.iter().filter(|s| **s == 200).count(), 3, "the local fallback limits: {answered:?}");
    assert_eq!(answered.last(), Some(&429));
    until_breaker(&kg, 1.0).await;
    let text = metrics(&kg).await;
    let fallbacks = metric(&text, "keygate_limiter_fallbacks_total{on_error=\"local\"}").unwrap_or(0.0);
    assert!(fallbacks >= 8.0, "fallback decisions counted: {fallbacks}\n{text}");
    assert!(metric(&text, "keygate_limiter_store_errors_total").is_some(), "store errors counted");
    assert!(metric(&text, "keygate_limiter_store_round_trip_seconds_count").unwrap_or(0.0) >= 4.0);

    redis.restart();
    until_breaker(&kg, 0.0).await;
    assert_eq!(statuses(&calls(&kg, 4).await), [200, 200, 200, 429], "the (new, empty) Redis counts again");
    assert_eq!(redis.keys("keygate:v1:{billing}:rate:*").len(), 1);
    kg.stop().await;
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port()
}

#[tokio::test]
async fn unreachable_at_start_serves_with_the_fallback() {
    let up = Upstream::start().await;
    let url = format!("redis://127.0.0.1:{}/0", closed_port());
    let kg = start(&config(up.addr, "{ per_second = 0.001, burst = 2 }", "", &redis_table(&url, ""))).await;
    let admin = kg.admin.expect("admin");
    assert_eq!(get(&format!("http://{admin}/readyz"), &[]).await.status, 200, "limits degrade, traffic does not");
    assert_eq!(statuses(&calls(&kg, 3).await), [200, 200, 429]);
    assert_eq!(breaker_open(&kg).await, Some(1.0));
    kg.stop().await;
}

#[tokio::test]
async fn on_error_deny_answers_503() {
    let up = Upstream::start().await;
    let url = format!("redis://127.0.0.1:{}/0", closed_port());
    let tables = redis_table(&url, "on_error = \"deny\"");
    let kg = start(&config(up.addr, "{ per_second = 10, burst = 10 }", "", &tables)).await;
    let r = call(&kg).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "limiter_unavailable");
    assert_eq!(up.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn on_error_allow_lets_requests_through() {
    let up = Upstream::start().await;
    let url = format!("redis://127.0.0.1:{}/0", closed_port());
    let tables = redis_table(&url, "on_error = \"allow\"");
    let kg = start(&config(up.addr, "{ per_second = 0.001, burst = 1 }", "", &tables)).await;
    assert_eq!(statuses(&calls(&kg, 3).await), [200, 200, 200]);
    kg.stop().await;
}

/// Seconds from now to the next UTC midnight.
fn to_midnight() -> i64 {
    86_400 - keygate::keys::unix_now().rem_euclid(86_400)
}

#[tokio::test]
async fn quota_in_redis_survives_a_restart_and_resets_at_the_period_end() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let quota = "quota = { requests = 3, per = \"day\" }";
    let tables = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let toml = config(up.addr, "{ per_second = 1000, burst = 1000 }", quota, &tables);
    let env = BTreeMap::new();

    let kg = start_with_clock(&toml, &env, 0).await;
    until_breaker(&kg, 0.0).await;
    let replies = calls(&kg, 4).await;
    assert_eq!(statuses(&replies), [200, 200, 200, 429]);
    assert_eq!(replies[0].header("ratelimit-policy"), Some("3;w=86400;name=\"quota\""));
    assert_eq!(replies[2].header("ratelimit-remaining"), Some("0"), "the quota is nearer to running out");
    let refused = &replies[3];
    assert_eq!(refused.json()["error"], "quota_exceeded");
    let retry: i64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((retry - to_midnight()).abs() <= 2, "Retry-After {retry} runs to midnight UTC ({})", to_midnight());
    kg.stop().await;

    let again = start_with_clock(&toml, &env, 0).await;
    until_breaker(&again, 0.0).await;
    assert_eq!(call(&again).await.status, 429, "kept across a restart");
    again.stop().await;

    let tomorrow = start_with_clock(&toml, &env, to_midnight() + 1).await;
    until_breaker(&tomorrow, 0.0).await;
    assert_eq!(statuses(&calls(&tomorrow, 4).await), [200, 200, 200, 429], "a new day, a new quota");
    assert_eq!(redis.keys("keygate:v1:{billing}:quota:day:*").len(), 2, "one count per day");
    tomorrow.stop().await;
}

#[tokio::test]
async fn quota_in_memory_without_redis_and_check_warns() {
    let up = Upstream::start().await;
    let toml = config(up.addr, "{ per_second = 1000, burst = 1000 }", "quota = { requests = 2, per = \"hour\" }", "");
    let cfg = keygate::config::load_str(&toml, std::path::Path::new("k.toml"), &BTreeMap::new()).unwrap();
    let warned = cfg.warnings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(warned.contains("k.toml:") && warned.contains("restart resets it"), "{warned}");
    let kg = start(&toml).await;
    let replies = calls(&kg, 3).await;
    assert_eq!(statuses(&replies), [200, 200, 429]);
    assert_eq!(replies[2].json()["error"], "quota_exceeded");
    let retry: u64 = replies[2].header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    kg.stop().await;
}

#[tokio::test]
async fn rate_change_on_reload_starts_a_fresh_bucket() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let tables = redis_table(&redis.url(), "");
    let kg = start(&config(up.addr, "{ per_second = 0.001, burst = 2 }", "", &tables)).await;
    until_breaker(&kg, 0.0).await;
    assert_eq!(statuses(&calls(&kg, 3).await), [200, 200, 429]);
    let wider = config(up.addr, "{ per_second = 0.001, burst = 3 }", "", &tables);
    let cfg = keygate::config::load_str(&wider, &kg.config_path, &BTreeMap::new()).unwrap();
    kg.handle.as_ref().unwrap().shared.replace(cfg).unwrap();
    assert_eq!(statuses(&calls(&kg, 4).await), [200, 200, 200, 429], "a new rate, a new bucket");
    assert_eq!(redis.keys("keygate:v1:{billing}:rate:*").len(), 2);
    kg.stop().await;
}

#[tokio::test]
async fn password_from_env_and_never_in_output() {
    let password = "s3cret-redis-pw-7731";
    let redis = RedisServer::start_with(Some(password));
    let up = Upstream::start().await;
    let tables = redis_table(&redis.url(), "password_env = \"KG_REDIS_PW\"");
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config(up.addr, "{ per_second = 0.001, burst = 2 }", "", &tables)).unwrap();
    let kg = Process::serve(Some(&path), &[("KG_REDIS_PW", password), ("KEYGATE_LOG", "debug")]);
    let url = format!("http://{}/r", kg.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.keys("keygate:v1:{billing}:rate:*").is_empty() {
        assert!(Instant::now() < deadline, "the bucket never reached Redis: {}", kg.output());
        get(&url, &[("x-api-key", KEY)]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(redis);
    for _ in 0..5 {
        get(&url, &[("x-api-key", KEY)]).await;
    }
    assert!(eventually(Duration::from_secs(5), || kg.output().contains("redis unavailable")).await, "{}", kg.output());
    assert!(!kg.output().contains(password), "{}", kg.output());

    let inline = format!("redis://:{password}@127.0.0.1:{}/x/y", closed_port());
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "-c"])
        .arg(&path)
        .env("KG_REDIS_PW", password)
        .env("KEYGATE_REDIS_URL", &inline)
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(!out.contains(password), "{out}");
}

#[tokio::test]
async fn rediss_shares_one_budget_over_tls() {
    let dir = tempdir();
    let ca = support::tls::Ca::new("redis test CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.server().write(dir.path(), "redis");
    let redis = RedisServer::start_tls(&cert, &key);
    let up = Upstream::start().await;
    let path = dir.path().join("keygate.toml");
    let tables = redis_table("redis://unused", "");
    std::fs::write(&path, config(up.addr, "{ per_second = 0.001, burst = 2 }", "", &tables)).unwrap();
    let url = format!("rediss://localhost:{}/0", redis.port);
    let ca_file = ca_path.display().to_string();
    let env = [("KEYGATE_REDIS_URL", url.as_str()), ("SSL_CERT_FILE", ca_file.as_str())];
    let (a, b) = (Process::serve(Some(&path), &env), Process::serve(Some(&path), &env));
    let (url_a, url_b) = (format!("http://{}/r", a.addr), format!("http://{}/r", b.addr));
    for kg in [&a, &b] {
        let admin = kg.admin.expect("admin");
        let connected = || async move {
            let text = String::from_utf8_lossy(&get(&format!("http://{admin}/metrics"), &[]).await.body).into_owned();
            metric(&text, "keygate_limiter_breaker_open ") == Some(0.0)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !connected().await {
            assert!(Instant::now() < deadline, "never connected over TLS: {}", kg.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Each instance alone would allow 2; connected over TLS they share the 2.
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(get(&url_a, &[("x-api-key", KEY)]).await.status.as_u16());
    }
    assert_eq!(seen, [200, 200, 429]);
    let from_b = get(&url_b, &[("x-api-key", KEY)]).await.status;
    assert_eq!(from_b, 429, "the other instance shares the budget: {}", b.output());
    assert!(!a.output().contains("panicked"), "{}", a.output());
}

#[test]
fn check_points_at_bad_limit_settings() {
    let cases = [
        ("[rate_limit]\nper_second = 1\nburst = 1\nstore = \"redis\"\n", "rate_limit.store", "needs a [redis] table"),
        ("[rate_limit]\nper_second = 1\nburst = 1\nstore = \"disk\"\n", "rate_limit.store", "\"disk\""),
        ("[redis]\nurl = \"http://127.0.0.1:6379\"\n", "redis.url", "is not a URL"),
        ("[redis]\nurl = \"redis://127.0.0.1\"\non_error = \"retry\"\n", "redis.on_error", "\"retry\""),
        ("[redis]\nurl = \"redis://127.0.0.1\"\ntimeout = \"soon\"\n", "redis.timeout", "not a duration"),
        ("[redis]\nurl = \"redis://127.0.0.1\"\nkey_prefix = \"a{b}\"\n", "redis.key_prefix", "braces"),
        ("[redis]\nurl = \"redis://127.0.0.1\"\npassword_env = \"NOPE_UNSET\"\n", "redis.password_env", "not set"),
        ("[redis]\nurl = \"redis://127.0.0.1\"\nport = 1\n", "port", "unknown field"),
    ];
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (tables, field, message) in cases {
        let toml = config(up, "{ per_second = 1, burst = 1 }", "", tables);
        let err = keygate::config::load_str(&toml, std::path::Path::new("k.toml"), &BTreeMap::new()).unwrap_err();
        let text = err.to_string();
        let line = text.lines().find(|l| l.contains(field)).unwrap_or_else(|| panic!("{field}: {text}"));
        assert!(line.starts_with("k.toml:") && line.contains(message), "{line}");
    }
    let bad_quota = config(up, "{ per_second = 1, burst = 1 }", "quota = { requests = 0, per = \"week\" }", "");
    let err = keygate::config::load_str(&bad_quota, std::path::Path::new("k.toml"), &BTreeMap::new()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("clients.billing.quota.requests") && text.contains("clients.billing.quota.per"), "{text}");
}
