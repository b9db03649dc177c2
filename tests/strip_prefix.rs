//! `strip_prefix = true`: the route's prefix (as the caller spelled it) is
//! removed before forwarding; routing and permissions still see the whole path.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use support::*;

const KEY: &str = "strip-prefix-test-key";
const OPS_KEY: &str = "strip-prefix-ops-key";

fn gateway(one: SocketAddr, two: SocketAddr) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.one]
servers = ["http://{one}"]

[upstreams.two]
servers = ["http://{two}"]

[[routes]]
name = "orders"
path = "/orders"
upstream = "one"
strip_prefix = true

[[routes]]
name = "v1"
path = "/api/v1"
upstream = "one"
strip_prefix = true

[[routes]]
name = "rest"
path = "/"
upstream = "two"

[clients.billing]
routes = ["*"]
keys = [{{ hash = "{billing}" }}]

[clients.ops]
routes = ["orders"]
keys = [{{ hash = "{ops}" }}]
"#,
        billing = hash(KEY),
        ops = hash(OPS_KEY)
    )
}

/// A raw request line, so parameters and case reach keygate as written.
async fn raw_get(kg: &Keygate, target: &str, key: &str) -> u16 {
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n");
    let reply = raw(kg.addr, req.as_bytes()).await;
    reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn the_matched_prefix_is_stripped_in_any_spelling() {
    let one = Upstream::start().await;
    let two = Upstream::start().await;
    let kg = Keygate::start(&gateway(one.addr, two.addr)).await;
    let cases = [
        ("/orders/7", "/7"),
        ("/orders", "/"),
        ("/orders/", "/"),
        ("/orders/7/lines?x=1&y=2", "/7/lines?x=1&y=2"),
        ("/orders?x=1", "/?x=1"),
        ("/ORDERS/7", "/7"),
        ("/Orders;v=1/7", "/7"),
        ("/orders;v=1", "/"),
        ("/orders%3Bv=1/7", "/7"),
        ("/api/v1/users/3", "/users/3"),
        ("/API/V1", "/"),
        ("/api;a/v1;b/x", "/x"),
    ];
    for (i, (asked, forwarded)) in cases.iter().enumerate() {
        assert_eq!(raw_get(&kg, asked, KEY).await, 200, "{asked}");
        assert_eq!(one.count(), i + 1, "{asked} went to the stripped route's upstream");
        assert_eq!(one.last().uri, *forwarded, "{asked}");
    }
    kg.stop().await;
}

#[tokio::test]
async fn other_routes_and_near_misses_are_not_stripped() {
    let one = Upstream::start().await;
    let two = Upstream::start().await;
    let kg = Keygate::start(&gateway(one.addr, two.addr)).await;
    for path in ["/orders-admin/7", "/ordersx", "/api/v10/x", "/other/orders/7"] {
        assert_eq!(raw_get(&kg, path, KEY).await, 200, "{path}");
        assert_eq!(two.last().uri, path, "not under a stripped prefix: forwarded as asked");
    }
    assert_eq!(one.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn permissions_apply_to_the_path_as_asked() {
    let one = Upstream::start().await;
    let two = Upstream::start().await;
    let kg = Keygate::start(&gateway(one.addr, two.addr)).await;
    // ops may call route "orders" only: /orders/admin is that route (forwarded
    // as /admin), /admin is route "rest" and stays forbidden.
    assert_eq!(raw_get(&kg, "/orders/admin", OPS_KEY).await, 200);
    assert_eq!(one.last().uri, "/admin");
    for path in ["/admin", "/api/v1/orders", "/Api;x/v1"] {
        assert_eq!(raw_get(&kg, path, OPS_KEY).await, 403, "{path}");
    }
    assert_eq!(one.count() + two.count(), 1);
    kg.stop().await;
}

#[test]
fn check_refuses_strip_prefix_on_the_root_route() {
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    let toml = gateway("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap())
        .replace("upstream = \"two\"\n", "upstream = \"two\"\nstrip_prefix = true\n");
    std::fs::write(&path, toml).unwrap();
    let err = keygate::config::load(Some(&path), &BTreeMap::new()).unwrap_err().to_string();
    assert!(err.contains("routes[2].strip_prefix"), "{err}");
    assert!(err.contains("no prefix to strip"), "{err}");
    // strip_prefix = false on the root route is fine.
    let off = gateway("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap())
        .replace("upstream = \"two\"\n", "upstream = \"two\"\nstrip_prefix = false\n");
    std::fs::write(&path, off).unwrap();
    assert!(keygate::config::load(Some(&path), &BTreeMap::new()).is_ok());
}
