//! Routing: prefixes at segment boundaries, methods, hosts, permissions, and
//! the path rules applied before any of them.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

const KEY: &str = "routes-test-key";
const OPS_KEY: &str = "routes-ops-key";

/// Upstreams `one` and `two`, the given routes, client `billing` (KEY) on
/// every route and client `ops` (OPS_KEY) on `ops_routes` only.
fn gateway(one: SocketAddr, two: SocketAddr, routes: &str, ops_routes: &str) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.one]
servers = ["http://{one}"]

[upstreams.two]
servers = ["http://{two}"]

{routes}

[clients.billing]
routes = ["*"]
keys = [{{ hash = "{billing}" }}]

[clients.ops]
routes = {ops_routes}
keys = [{{ hash = "{ops}" }}]
"#,
        billing = hash(KEY),
        ops = hash(OPS_KEY)
    )
}

fn route(name: &str, path: &str, upstream: &str, more: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nupstream = \"{upstream}\"\n{more}\n")
}

async fn start(routes: &str) -> (Upstream, Upstream, Keygate) {
    start_with(routes, "[]").await
}

async fn start_with(routes: &str, ops_routes: &str) -> (Upstream, Upstream, Keygate) {
    let one = Upstream::start().await;
    let two = Upstream::start().await;
    let kg = Keygate::start(&gateway(one.addr, two.addr, routes, ops_routes)).await;
    (one, two, kg)
}

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], code);
}

/// A raw HTTP/1.1 GET of `target` with the key; returns the status code.
async fn raw_get(kg: &Keygate, target: &str) -> (u16, String) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n");
    let reply = raw(kg.addr, req.as_bytes()).await;
    let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, reply)
}

#[tokio::test]
async fn no_matching_route_is_404_no_route() {
    let (one, two, kg) = start(&route("orders", "/orders", "one", "")).await;
    let r = get(&kg.url("/elsewhere"), &[("x-api-key", KEY)]).await;
    assert_error(&r, 404, "no_route");
    assert_eq!(one.count() + two.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn prefix_matches_only_at_a_segment_boundary() {
    let (one, _two, kg) = start(&route("orders", "/orders", "one", "")).await;
    for path in ["/orders", "/orders/7", "/orders/7/lines?x=1"] {
        let r = get(&kg.url(path), &[("x-api-key", KEY)]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(one.last().uri, path);
    }
    let admin = get(&kg.url("/orders-admin"), &[("x-api-key", KEY)]).await;
    assert_error(&admin, 404, "no_route");
    assert_eq!(one.count(), 3, "/orders-admin did not reach the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn method_outside_the_route_list_is_405_with_allow() {
    let (one, _two, kg) = start(&route("orders", "/orders", "one", "methods = [\"GET\", \"HEAD\"]")).await;
    let ok = get(&kg.url("/orders/1"), &[("x-api-key", KEY)]).await;
    assert_eq!(ok.status, 200);
    let post = Request::post(kg.url("/orders/1")).header("x-api-key", KEY).body(Full::new(Bytes::from("{}")));
    let r = send(post.expect("request")).await;
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let delete = Request::delete(kg.url("/orders/1")).header("x-api-key", KEY).body(Full::new(Bytes::new()));
    assert_error(&send(delete.expect("request")).await, 405, "method_not_allowed");
    assert_eq!(one.count(), 1);
    kg.stop().await;
}

#[tokio::test]
async fn routes_sharing_a_prefix_split_the_methods_and_never_fall_back() {
    let routes = route("all", "/", "two", "")
        + &route("orders-read", "/orders", "one", "methods = [\"GET\"]")
        + &route("orders-write", "/orders", "one", "methods = [\"POST\", \"PUT\"]");
    let (one, two, kg) = start(&routes).await;
    assert_eq!(get(&kg.url("/orders/1"), &[("x-api-key", KEY)]).await.status, 200);
    let post = Request::post(kg.url("/orders/1")).header("x-api-key", KEY).body(Full::new(Bytes::from("{}")));
    assert_eq!(send(post.expect("request")).await.status, 200);
    assert_eq!(one.count(), 2);
    let delete = Request::delete(kg.url("/Orders/1")).header("x-api-key", KEY).body(Full::new(Bytes::new()));
    let r = send(delete.expect("request")).await;
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, POST, PUT"));
    assert_eq!((one.count(), two.count()), (2, 0), "DELETE did not fall back to /");
    kg.stop().await;
}

#[tokio::test]
async fn client_not_allowed_on_the_route_is_403_forbidden() {
    let routes = route("orders", "/orders", "one", "") + &route("admin", "/admin", "two", "");
    let (one, two, kg) = start_with(&routes, r#"["orders"]"#).await;
    let allowed = get(&kg.url("/orders/1"), &[("x-api-key", OPS_KEY)]).await;
    assert_eq!(allowed.status, 200);
    let r = get(&kg.url("/admin/users"), &[("x-api-key", OPS_KEY)]).await;
    assert_error(&r, 403, "forbidden");
    assert_eq!((one.count(), two.count()), (1, 0));
    let billing = get(&kg.url("/admin/users"), &[("x-api-key", KEY)]).await;
    assert_eq!(billing.status, 200, "a client allowed on every route gets through");
    kg.stop().await;
}

#[tokio::test]
async fn longest_prefix_wins() {
    let routes = route("api", "/api", "one", "") + &route("api-v2", "/api/v2", "two", "");
    let (one, two, kg) = start(&routes).await;
    assert_eq!(get(&kg.url("/api/v2/users"), &[("x-api-key", KEY)]).await.status, 200);
    assert_eq!((one.count(), two.count()), (0, 1));
    assert_eq!(two.last().uri, "/api/v2/users");
    assert_eq!(get(&kg.url("/api/v1/users"), &[("x-api-key", KEY)]).await.status, 200);
    assert_eq!(get(&kg.url("/api/v2x"), &[("x-api-key", KEY)]).await.status, 200);
    assert_eq!((one.count(), two.count()), (2, 1), "/api/v1 and /api/v2x belong to /api");
    kg.stop().await;
}

#[tokio::test]
async fn host_route_matches_on_host() {
    let routes = route("default", "/", "one", "") + &route("internal", "/", "two", "host = \"orders.internal\"");
    let (one, two, kg) = start(&routes).await;
    let r = get(&kg.url("/x"), &[("x-api-key", KEY), ("host", "Orders.Internal:8080")]).await;
    assert_eq!(r.status, 200);
    assert_eq!((one.count(), two.count()), (0, 1), "the host route took it");
    assert_eq!(two.last().headers.get("host").map(|v| v.as_bytes()), Some(&b"Orders.Internal:8080"[..]));
    let other = get(&kg.url("/x"), &[("x-api-key", KEY), ("host", "other.internal")]).await;
    assert_eq!(other.status, 200);
    assert_eq!((one.count(), two.count()), (1, 1), "another host falls back to the route without host");
    kg.stop().await;
}

#[tokio::test]
async fn host_only_route_is_404_for_another_host() {
    let (one, _two, kg) = start(&route("internal", "/", "one", "host = \"orders.internal\"")).await;
    let r = get(&kg.url("/x"), &[("x-api-key", KEY), ("host", "billing.internal")]).await;
    assert_error(&r, 404, "no_route");
    assert_eq!(one.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn ambiguous_paths_are_400_bad_request() {
    let (one, _two, kg) = start(&route("all", "/", "one", "")).await;
    for target in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/..", "/a/../../b", "/a/%2e%2e/%2E%2E/b", "/a%00b"] {
        let (status, reply) = raw_get(&kg, target).await;
        assert_eq!(status, 400, "{target}: {reply}");
        assert!(reply.contains("\"error\":\"bad_request\""), "{target}: {reply}");
    }
    assert_eq!(one.count(), 0, "none of them reached the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_forwarding() {
    let routes = route("orders", "/orders", "one", "") + &route("a-c", "/a/c", "two", "");
    let (one, two, kg) = start(&routes).await;
    let (status, reply) = raw_get(&kg, "/a/./b/../c?q=1").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(two.count(), 1, "routed by the normalised path");
    assert_eq!(two.last().uri, "/a/c?q=1", "the routed path is the forwarded path");
    let (status, _) = raw_get(&kg, "//a//c/./d").await;
    assert_eq!(status, 200);
    assert_eq!(two.last().uri, "/a/c/d");
    assert_eq!(one.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn dot_segments_cannot_escape_a_permission() {
    let routes = route("orders", "/orders", "one", "") + &route("admin", "/admin", "two", "");
    let (one, two, kg) = start_with(&routes, r#"["orders"]"#).await;
    let req =
        format!("GET /orders/../admin/users HTTP/1.1\r\nHost: t\r\nX-API-Key: {OPS_KEY}\r\nConnection: close\r\n\r\n");
    let reply = raw(kg.addr, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    let encoded =
        format!("GET /%61dmin/users HTTP/1.1\r\nHost: t\r\nX-API-Key: {OPS_KEY}\r\nConnection: close\r\n\r\n");
    let reply = raw(kg.addr, encoded.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert_eq!((one.count(), two.count()), (0, 0));
    kg.stop().await;
}
