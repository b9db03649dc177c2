//! Per-client rate limits (GCRA), their headers, their survival across
//! reloads, and the failed-authentication throttle per remote address.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway in front of `upstream` with route `all` and the given client tables.
fn config(upstream: SocketAddr, clients: &str) -> String {
    gateway_config(&[upstream], "", clients)
}

fn client(id: &str, keys: &[&str], rate: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{{ hash = \"{}\" }}", hash(k))).collect();
    format!("[clients.{id}]\nroutes = [\"*\"]\nrate_limit = {rate}\nkeys = [{}]\n", keys.join(", "))
}

fn num(r: &Reply, name: &str) -> u64 {
    r.header(name).unwrap_or_else(|| panic!("no {name} in {:?}", r.headers)).parse().expect("a number")
}

async fn call(kg: &Keygate, key: &str) -> Reply {
    get(&kg.url("/r"), &[("x-api-key", key)]).await
}

#[tokio::test]
async fn exactly_burst_passes_then_429_with_retry_after_then_recovers() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, &client("billing", &["rl-a"], "{ per_second = 1, burst = 3 }"))).await;
    for (i, expected_reset) in [1, 2, 3].into_iter().enumerate() {
        let r = call(&kg, "rl-a").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(num(&r, "ratelimit-limit"), 3);
        assert_eq!(num(&r, "ratelimit-reset"), expected_reset, "seconds until the budget is full again");
    }
    let refused = call(&kg, "rl-a").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("1"), "the next token comes within a second, rounded up");
    assert_eq!(num(&refused, "ratelimit-limit"), 3);
    assert_eq!(num(&refused, "ratelimit-remaining"), 0);
    assert_eq!(num(&refused, "ratelimit-reset"), 3);
    assert_eq!(up.count(), 3, "a refused request never reaches the upstream");

    // Waiting what Retry-After says is the behaviour under test.
    tokio::time::sleep(Duration::from_secs(num(&refused, "retry-after"))).await;
    let again = call(&kg, "rl-a").await;
    assert_eq!(again.status, 200, "a request passes after Retry-After");
    assert_eq!(up.count(), 4);
    kg.stop().await;
}

#[tokio::test]
async fn remaining_counts_down_by_one_and_reset_counts_up() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, &client("billing", &["rl-b"], "{ per_second = 0.01, burst = 5 }"))).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = call(&kg, "rl-b").await;
        assert_eq!(r.status, 200);
        seen.push((num(&r, "ratelimit-remaining"), num(&r, "ratelimit-reset")));
    }
    assert_eq!(seen, vec![(4, 100), (3, 200), (2, 300), (1, 400), (0, 500)]);
    let refused = call(&kg, "rl-b").await;
    assert_eq!(refused.status, 429);
    let retry = num(&refused, "retry-after");
    assert!((99..=100).contains(&retry), "Retry-After {retry}");
    kg.stop().await;
}

#[tokio::test]
async fn upstream_errors_carry_rate_limit_headers() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, &client("billing", &["rl-c"], "{ per_second = 0.01, burst = 5 }"))).await;
    let r = get(&kg.url("/status/503"), &[("x-api-key", "rl-c")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(num(&r, "ratelimit-limit"), 5);
    assert_eq!(num(&r, "ratelimit-remaining"), 4);
    assert_eq!(num(&r, "ratelimit-reset"), 100);
    kg.stop().await;
}

#[tokio::test]
async fn keys_of_one_client_share_one_budget_and_clients_do_not() {
    let up = Upstream::start().await;
    let slow = "{ per_second = 0.01, burst = 4 }";
    let clients = client("billing", &["rl-old", "rl-new"], slow) + &client("orders", &["rl-orders"], slow);
    let kg = Keygate::start(&config(up.addr, &clients)).await;
    let mut remaining = Vec::new();
    for key in ["rl-old", "rl-new", "rl-old", "rl-new"] {
        let r = call(&kg, key).await;
        assert_eq!(r.status, 200);
        remaining.push(num(&r, "ratelimit-remaining"));
    }
    assert_eq!(remaining, vec![3, 2, 1, 0], "rotation never doubles a budget");
    for key in ["rl-old", "rl-new"] {
        assert_eq!(call(&kg, key).await.status, 429);
    }
    let other = call(&kg, "rl-orders").await;
    assert_eq!(other.status, 200, "exhausting billing leaves orders untouched");
    assert_eq!(num(&other, "ratelimit-remaining"), 3);
    assert_eq!(up.count(), 5, "429s never reach the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn reload_keeps_unchanged_limits_and_resets_changed_or_removed_ones() {
    let up = Upstream::start().await;
    let slow = "{ per_second = 0.01, burst = 4 }";
    let both = client("billing", &["rl-d"], slow) + &client("orders", &["rl-e"], slow);
    let kg = Keygate::start(&config(up.addr, &both)).await;
    let shared = kg.handle.as_ref().expect("running").shared.clone();
    let reload = |text: String| {
        std::fs::write(&kg.config_path, text).expect("write config");
        assert!(keygate::reload::reload(&shared, Some(&kg.config_path)), "reload applied");
    };
    for key in ["rl-d", "rl-d", "rl-e"] {
        assert_eq!(call(&kg, key).await.status, 200);
    }

    // Same limits, one more route: both budgets carry over.
    let extra_route = "[[routes]]\nname = \"extra\"\npath = \"/extra\"\nupstream = \"main\"\n";
    reload(config(up.addr, &format!("{extra_route}\n{both}")));
    assert_eq!(num(&call(&kg, "rl-d").await, "ratelimit-remaining"), 1);
    assert_eq!(num(&call(&kg, "rl-e").await, "ratelimit-remaining"), 2);

    // billing's limit changes (fresh budget); orders is removed.
    reload(config(up.addr, &client("billing", &["rl-d"], "{ per_second = 0.01, burst = 6 }")));
    let r = call(&kg, "rl-d").await;
    assert_eq!((num(&r, "ratelimit-limit"), num(&r, "ratelimit-remaining")), (6, 5));
    assert_eq!(call(&kg, "rl-e").await.status, 401);

    // orders comes back with its old limit: its old state was dropped.
    reload(config(
        up.addr,
        &(client("billing", &["rl-d"], "{ per_second = 0.01, burst = 6 }") + &client("orders", &["rl-e"], slow)),
    ));
    assert_eq!(num(&call(&kg, "rl-e").await, "ratelimit-remaining"), 3);
    assert_eq!(num(&call(&kg, "rl-d").await, "ratelimit-remaining"), 4, "billing kept its state");
    kg.stop().await;
}

fn throttled_config(up: SocketAddr, max: u32) -> String {
    let limit = "{ per_second = 1000, burst = 1000 }";
    config(up, &format!("[auth]\nmax_failures_per_minute = {max}\n\n{}", client("billing", &["rl-good"], limit)))
}

fn assert_too_many_failures(r: &Reply) {
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.json()["error"], "too_many_failures");
    let retry = num(r, "retry-after");
    assert!((1..=20).contains(&retry), "Retry-After {retry}: one failure's share of the minute");
}

#[tokio::test]
async fn failed_auth_throttle_trips_at_the_configured_number() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&throttled_config(up.addr, 3)).await;
    assert_eq!(call(&kg, "wrong-1").await.status, 401);
    assert_eq!(get(&kg.url("/r"), &[]).await.status, 401, "a missing key counts too");
    assert_eq!(call(&kg, "wrong-2").await.status, 401);
    assert_too_many_failures(&call(&kg, "wrong-3").await);
    // Only failures are throttled: the right key from the same address passes.
    assert_eq!(call(&kg, "rl-good").await.status, 200);
    assert_eq!(up.count(), 1);
    kg.stop().await;
}

#[tokio::test]
async fn successful_requests_do_not_count_as_failures() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&throttled_config(up.addr, 3)).await;
    for _ in 0..10 {
        assert_eq!(call(&kg, "rl-good").await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(call(&kg, "wrong").await.status, 401);
    }
    assert_eq!(call(&kg, "rl-good").await.status, 200, "10 successes and 2 failures stay under 3 failures");
    assert_eq!(call(&kg, "wrong").await.status, 401, "the third failure is still answered");
    assert_too_many_failures(&call(&kg, "wrong").await);
    assert_eq!(call(&kg, "rl-good").await.status, 200, "a valid key always passes the throttle");
    kg.stop().await;
}

/// GET with `key` from a socket bound to `local` (another loopback address).
async fn get_from(local: &str, addr: SocketAddr, key: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{local}:0").parse().expect("address")).expect("bind");
    let mut tcp =
        tokio::time::timeout(Duration::from_secs(5), socket.connect(addr)).await.expect("in time").expect("connect");
    let req = format!("GET /r HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await.expect("in time").expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn throttle_is_per_remote_address() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&throttled_config(up.addr, 2)).await;
    for _ in 0..2 {
        assert!(get_from("127.0.0.2", kg.addr, "wrong").await.starts_with("HTTP/1.1 401"));
    }
    assert!(get_from("127.0.0.2", kg.addr, "wrong").await.contains("too_many_failures"));
    let other = get_from("127.0.0.3", kg.addr, "wrong").await;
    assert!(other.starts_with("HTTP/1.1 401"), "another address is not throttled: {other}");
    kg.stop().await;
}
