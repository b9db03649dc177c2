//! The failed-authentication throttle (issue 12): a valid credential always
//! passes it, only failures get 429 instead of 401, and a full table evicts
//! its oldest entries (counted in `/metrics`) instead of ignoring newcomers.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use keygate::metrics::Metrics;
use keygate::proxy::throttle::FailureThrottle;
use support::*;

const GOOD: &str = "throttle-valid-key-0123456789abcdef";

fn config(up: SocketAddr, max: u32) -> String {
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n";
    gateway_config(&[up], "", &format!("{admin}\n[auth]\nmax_failures_per_minute = {max}\n\n{}", billing_client(GOOD)))
}

async fn call(kg: &Keygate, key: &str) -> Reply {
    get(&kg.url("/r"), &[("x-api-key", key)]).await
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// An attacker and a valid client share one address (a NAT, a balancer):
/// the attacker keeps failing, the valid client is served every time.
#[tokio::test]
async fn an_attacker_on_a_shared_address_cannot_lock_out_a_valid_client() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, 3)).await;
    let mut refused = Vec::new();
    for round in 0..30 {
        refused.push(call(&kg, &format!("guess-{round}")).await.status.as_u16());
        let ok = call(&kg, GOOD).await;
        assert_eq!(ok.status, 200, "valid request {round} was refused: {:?}", ok.body);
    }
    assert_eq!(&refused[..3], &[401, 401, 401], "failures within the allowance are 401");
    assert!(refused[3..].iter().all(|s| *s == 429), "failures beyond it are 429: {refused:?}");
    assert_eq!(up.count(), 30, "every valid request reached the upstream");
    kg.stop().await;
}

/// Once over the allowance, every kind of failure is 429 with Retry-After;
/// a success in between changes nothing.
#[tokio::test]
async fn only_failures_get_429_and_every_kind_of_failure_does() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, 2)).await;
    assert_eq!(call(&kg, "wrong").await.status, 401);
    assert_eq!(get(&kg.url("/r"), &[]).await.status, 401, "a missing key counts");
    let failures: [&[(&str, &str)]; 3] = [&[("x-api-key", "wrong")], &[], &[("authorization", "Bearer also-wrong")]];
    for headers in failures {
        let r = get(&kg.url("/r"), headers).await;
        assert_eq!(r.status, 429, "{headers:?}");
        assert_eq!(r.json()["error"], "too_many_failures");
        let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
        assert!((1..=30).contains(&retry), "Retry-After {retry}");
        assert!(r.header("www-authenticate").is_none(), "a 429 is not a challenge");
        assert_eq!(call(&kg, GOOD).await.status, 200);
    }
    let text = get(&format!("http://{}/metrics", kg.admin.expect("admin")), &[]).await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    assert_eq!(metric(&text, "keygate_failure_throttle_entries"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "keygate_failure_throttle_evictions_total"), Some(0.0), "{text}");
    kg.stop().await;
}

/// At a small cap every new address is still tracked (the oldest entries
/// make room), and `/metrics` shows the table size and the evictions.
#[test]
fn a_full_table_evicts_the_oldest_and_counts_it() {
    let throttle = FailureThrottle::with_cap(16);
    let mut metrics = Metrics::new();
    metrics.register_throttle(&throttle);
    let repeat = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    for _ in 0..2 {
        throttle.record_failure(repeat, 1);
    }
    for i in 0..100u32 {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        throttle.record_failure(addr, 1);
        assert!(throttle.blocked(addr, 1).is_some(), "new address {i} is throttled at the cap");
    }
    assert!(throttle.blocked(repeat, 1).is_some(), "the blocked address outlived the flood");
    assert!(throttle.len() <= 16, "{}", throttle.len());
    let text = metrics.encode();
    let entries = metric(&text, "keygate_failure_throttle_entries").expect("entries gauge");
    let evicted = metric(&text, "keygate_failure_throttle_evictions_total").expect("evictions counter");
    assert_eq!(entries as usize, throttle.len());
    assert_eq!(evicted as u64, 101 - throttle.len() as u64, "{text}");
}
