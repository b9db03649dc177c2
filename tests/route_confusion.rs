//! Route confusion (issue 12 §1): client alice may call `public` (`/`) and
//! `orders-read` (`/orders`, GET/HEAD); `admin` (`/admin`) and `internal`
//! (`/`, host `internal.svc`) are denied to her. Every spelling an upstream
//! could read as a denied route's path or host must be refused, never
//! forwarded through `public`; over HTTP/1.1 (raw bytes) and HTTP/2.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::net::TcpStream;

const ALICE: &str = "route-confusion-alice-key";
const ROOT: &str = "route-confusion-root-key";

/// One probe: method, request target, `Host` (or, for an absolute target,
/// the authority inside it), and the status alice must get.
struct Probe {
    method: &'static str,
    target: &'static str,
    host: &'static str,
    status: u16,
}

const fn probe(method: &'static str, target: &'static str, host: &'static str, status: u16) -> Probe {
    Probe { method, target, host, status }
}

const HOST: &str = "keygate.test";

/// Spellings of a denied route. None may reach any upstream.
const DENIED: &[Probe] = &[
    // The admin prefix, spelled as servlet containers, IIS and ASP.NET read it.
    probe("GET", "/admin", HOST, 403),
    probe("GET", "/admin/", HOST, 403),
    probe("GET", "//admin", HOST, 403),
    probe("GET", "/%61dmin", HOST, 403),
    probe("GET", "/admin;x", HOST, 403),
    probe("GET", "/admin;", HOST, 403),
    probe("GET", "/admin;jsessionid=1/secret", HOST, 403),
    probe("GET", "/admin%3bx", HOST, 403),
    probe("GET", "/admin%3Bx/secret", HOST, 403),
    probe("GET", "/ADMIN", HOST, 403),
    probe("GET", "/Admin/x", HOST, 403),
    probe("GET", "/ADMIN;x", HOST, 403),
    probe("GET", "/aDmIn;v=1/x;y", HOST, 403),
    probe("GET", "/%41DMIN", HOST, 403),
    probe("GET", "/adm%C4%B1n", HOST, 403),
    probe("GET", "/admin/;x", HOST, 403),
    probe("GET", "/x/../admin", HOST, 403),
    // Names Windows servers fold: trailing dots and spaces.
    probe("GET", "/admin.", HOST, 400),
    probe("GET", "/admin./secret", HOST, 400),
    probe("GET", "/admin..", HOST, 400),
    probe("GET", "/admin%2e", HOST, 400),
    probe("GET", "/admin%2E/secret", HOST, 400),
    probe("GET", "/ADMIN%2e", HOST, 400),
    probe("GET", "/admin..;/", HOST, 400),
    probe("GET", "/admin.;x", HOST, 400),
    probe("GET", "/admin%20", HOST, 400),
    probe("GET", "/admin.%20/x", HOST, 400),
    // Parameters that move a servlet container's `..`.
    probe("GET", "/x/..;/admin", HOST, 400),
    probe("GET", "/;x/admin", HOST, 400),
    probe("GET", "/x/;y/../admin", HOST, 400),
    probe("GET", "/x/%3By/../admin", HOST, 400),
    // Methods outside orders-read never fall back to `/`.
    probe("DELETE", "/orders/7", HOST, 405),
    probe("POST", "/orders", HOST, 405),
    probe("PUT", "/ORDERS/7", HOST, 405),
    probe("DELETE", "/orders;x/7", HOST, 405),
    probe("PATCH", "/Orders%3Bx", HOST, 405),
    // Method names are case-sensitive: `delete` is not a route's DELETE, nor a fallback.
    probe("delete", "/orders/7", HOST, 405),
    probe("get", "/orders/7", HOST, 405),
    // The internal host in every spelling an upstream folds.
    probe("GET", "/", "internal.svc", 403),
    probe("GET", "/x", "INTERNAL.SVC", 403),
    probe("GET", "/x", "internal.svc:443", 403),
    probe("GET", "/x", "internal.svc.", 403),
    probe("GET", "/x", "internal.svc.:80", 403),
    probe("GET", "/x", "Internal.Svc.:8080", 403),
    // Host values that are not a host name.
    probe("GET", "/x", "internal.svc..", 400),
    probe("GET", "/x", "x:1@internal.svc", 400),
    probe("GET", "/x", "x@internal.svc", 400),
    probe("GET", "/x", "internal%2esvc", 400),
    probe("GET", "/x", "internal.svc:", 400),
    probe("GET", "/x", "internal.svc:99999", 400),
    probe("GET", "/x", "internal_svc,internal.svc", 400),
    probe("GET", "/x", "[::1", 400),
    // Absolute-form targets (HTTP/1) and :authority (HTTP/2).
    probe("GET", "http://x:1@internal.svc/", "", 400),
    probe("GET", "http://internal.svc./x", "", 403),
    probe("GET", "http://INTERNAL.SVC:80/x", "", 403),
    probe("GET", "http://internal.svc../x", "", 400),
    probe("GET", "http://keygate.test/ADMIN;x", "", 403),
];

/// Harmless spellings that must still work: (method, target, host, upstream, forwarded path).
const ALLOWED: &[(&str, &str, &str, &str, &str)] = &[
    ("GET", "/x", HOST, "public", "/x"),
    ("GET", "/administrator", HOST, "public", "/administrator"),
    ("GET", "/admin-panel;x", HOST, "public", "/admin-panel;x"),
    ("GET", "/admin-x%2E1", HOST, "public", "/admin-x.1"),
    ("GET", "/a.b/c", HOST, "public", "/a.b/c"),
    ("GET", "/x;jsessionid=1", HOST, "public", "/x;jsessionid=1"),
    ("GET", "/;jsessionid=1", HOST, "public", "/;jsessionid=1"),
    ("GET", "/orders/7", HOST, "orders", "/orders/7"),
    ("HEAD", "/Orders/7", HOST, "orders", "/Orders/7"),
    ("GET", "/orders;v=2/7", HOST, "orders", "/orders;v=2/7"),
    ("GET", "/x", "[::1]", "public", "/x"),
    ("GET", "/x", "[::1]:8080", "public", "/x"),
    ("GET", "/x", "other.svc.", "public", "/x"),
    ("GET", "/x", "my_service:80", "public", "/x"),
    ("GET", "/x", "internal.svc.other", "public", "/x"),
];

struct Setup {
    kg: Keygate,
    public: Upstream,
    orders: Upstream,
    admin: Upstream,
    internal: Upstream,
}

impl Setup {
    async fn start() -> Setup {
        let (public, orders, admin, internal) =
            (Upstream::start().await, Upstream::start().await, Upstream::start().await, Upstream::start().await);
        let kg = Keygate::start(&config([public.addr, orders.addr, admin.addr, internal.addr])).await;
        Setup { kg, public, orders, admin, internal }
    }

    fn counts(&self) -> [usize; 4] {
        [self.public.count(), self.orders.count(), self.admin.count(), self.internal.count()]
    }

    fn upstream(&self, name: &str) -> &Upstream {
        match name {
            "public" => &self.public,
            "orders" => &self.orders,
            "admin" => &self.admin,
            _ => &self.internal,
        }
    }
}

fn config(up: [SocketAddr; 4]) -> String {
    let [public, orders, admin, internal] = up;
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.public]
servers = ["http://{public}"]
[upstreams.orders]
servers = ["http://{orders}"]
[upstreams.admin]
servers = ["http://{admin}"]
[upstreams.internal]
servers = ["http://{internal}"]

[[routes]]
name = "public"
path = "/"
upstream = "public"

[[routes]]
name = "orders-read"
path = "/orders"
methods = ["GET", "HEAD"]
upstream = "orders"

[[routes]]
name = "admin"
path = "/admin"
upstream = "admin"

[[routes]]
name = "internal"
path = "/"
host = "internal.svc"
upstream = "internal"

[clients.alice]
routes = ["public", "orders-read"]
keys = [{{ hash = "{alice}" }}]

[clients.root]
routes = ["*"]
keys = [{{ hash = "{root}" }}]
"#,
        alice = hash(ALICE),
        root = hash(ROOT)
    )
}

/// What came back: status and the `Allow` header.
#[derive(Debug)]
struct Answer {
    status: u16,
    allow: Option<String>,
}

/// HTTP/1.1, written raw so odd targets and hosts arrive byte for byte.
async fn h1(addr: SocketAddr, method: &str, target: &str, host: &str, key: &str) -> Answer {
    let host = if target.starts_with("http://") { HOST } else { host };
    let req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n");
    let reply = raw(addr, req.as_bytes()).await;
    let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let allow = reply
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("allow:").map(|v| v.trim().to_ascii_uppercase()));
    Answer { status, allow }
}

/// HTTP/2 (prior knowledge). An absolute target travels as `:authority`;
/// otherwise the host is a `host` header without `:authority`, so that
/// values a URI cannot hold (`internal%2esvc`) still reach keygate.
async fn h2(addr: SocketAddr, method: &str, target: &str, host: &str, key: &str) -> Answer {
    let bounded = Duration::from_secs(5);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) =
        tokio::time::timeout(bounded, ::h2::client::handshake(tcp)).await.expect("in time").expect("h2");
    tokio::spawn(conn);
    let mut client = tokio::time::timeout(bounded, client.ready()).await.expect("in time").expect("ready");
    let mut req = http::Request::builder().method(method).header("x-api-key", key);
    req = if target.starts_with("http://") {
        req.uri(target)
    } else {
        // A relative URI is sent the way a proxy forwards HTTP/1: no :authority.
        let uri = http::Uri::builder().path_and_query(target).build().expect("path");
        req.uri(uri).version(http::Version::HTTP_11).header("host", host)
    };
    let (response, _) = client.send_request(req.body(()).expect("request"), true).expect("send");
    let response = tokio::time::timeout(bounded, response).await.expect("in time");
    match response {
        Ok(r) => Answer {
            status: r.status().as_u16(),
            allow: r.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_string),
        },
        // A stream reset (a malformed request refused by h2 itself) is a refusal too.
        Err(e) => panic!("{method} {target} ({host}) over HTTP/2: {e}"),
    }
}

async fn check_denied(s: &Setup, http2: bool) {
    for p in DENIED {
        let before = s.counts();
        let answer = if http2 {
            h2(s.kg.addr, p.method, p.target, p.host, ALICE).await
        } else {
            h1(s.kg.addr, p.method, p.target, p.host, ALICE).await
        };
        let label = format!("{} {} (host {:?}, HTTP/{})", p.method, p.target, p.host, if http2 { 2 } else { 1 });
        assert_eq!(answer.status, p.status, "{label}: {answer:?}");
        assert_eq!(s.counts(), before, "{label} reached an upstream");
        if p.status == 405 {
            assert_eq!(answer.allow.as_deref(), Some("GET, HEAD"), "{label}");
        }
    }
}

async fn check_allowed(s: &Setup, http2: bool) {
    for (method, target, host, upstream, path) in ALLOWED {
        let before = s.counts();
        let answer = if http2 {
            h2(s.kg.addr, method, target, host, ALICE).await
        } else {
            h1(s.kg.addr, method, target, host, ALICE).await
        };
        let label = format!("{method} {target} (host {host:?}, HTTP/{})", if http2 { 2 } else { 1 });
        assert_eq!(answer.status, 200, "{label}");
        let up = s.upstream(upstream);
        assert_eq!(up.last().uri, *path, "{label}");
        let after = s.counts();
        let grown: Vec<usize> = (0..4).filter(|i| after[*i] != before[*i]).collect();
        assert_eq!(grown.len(), 1, "{label}: exactly one upstream got it");
    }
}

#[tokio::test]
async fn http1_no_spelling_of_a_denied_route_is_forwarded() {
    let s = Setup::start().await;
    check_denied(&s, false).await;
    assert_eq!(s.counts(), [0, 0, 0, 0]);
    check_allowed(&s, false).await;
    s.kg.stop().await;
}

#[tokio::test]
async fn http2_no_spelling_of_a_denied_route_is_forwarded() {
    let s = Setup::start().await;
    check_denied(&s, true).await;
    assert_eq!(s.counts(), [0, 0, 0, 0]);
    check_allowed(&s, true).await;
    s.kg.stop().await;
}

/// The folded spellings are the denied routes themselves: a client allowed
/// on them reaches them, with the path and host it sent.
#[tokio::test]
async fn folded_spellings_reach_the_route_they_name() {
    let s = Setup::start().await;
    for (target, host, upstream, path) in [
        ("/ADMIN;x", HOST, "admin", "/ADMIN;x"),
        ("/admin;jsessionid=1/secret", HOST, "admin", "/admin;jsessionid=1/secret"),
        ("/Admin/x", HOST, "admin", "/Admin/x"),
        ("/x", "INTERNAL.SVC.:80", "internal", "/x"),
        ("/x", "internal.svc:443", "internal", "/x"),
    ] {
        for http2 in [false, true] {
            let answer = if http2 {
                h2(s.kg.addr, "GET", target, host, ROOT).await
            } else {
                h1(s.kg.addr, "GET", target, host, ROOT).await
            };
            assert_eq!(answer.status, 200, "{target} {host}");
            let seen = s.upstream(upstream).last();
            assert_eq!(seen.uri, path, "{target} {host}");
            assert_eq!(seen.headers.get("host").and_then(|v| v.to_str().ok()), Some(host), "host passed on unchanged");
        }
    }
    assert_eq!(s.public.count(), 0);
    s.kg.stop().await;
}

/// Route hosts and paths in the config fold like requests, or are refused.
#[test]
fn config_route_hosts_fold_and_unmatchable_paths_are_refused() {
    let up: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let base = config([up; 4]);
    let load = |text: &str| keygate::config::load_str(text, std::path::Path::new("t.toml"), &Default::default());
    let folded = load(&base.replace("host = \"internal.svc\"", "host = \"Internal.SVC.\"")).expect("valid");
    assert_eq!(
        folded.routes.iter().find(|r| r.name == "internal").and_then(|r| r.host.as_deref()),
        Some("internal.svc")
    );
    for (from, to) in [
        ("host = \"internal.svc\"", "host = \"internal.svc:443\""),
        ("host = \"internal.svc\"", "host = \"x@internal.svc\""),
        ("host = \"internal.svc\"", "host = \"internal.svc..\""),
        ("path = \"/admin\"", "path = \"/admin;x\""),
        ("path = \"/admin\"", "path = \"/caf%C3%A9\""),
        ("path = \"/admin\"", "path = \"/admin.\""),
    ] {
        let err = load(&base.replace(from, to)).expect_err(to).to_string();
        assert!(err.contains("routes[") && (err.contains(".host") || err.contains(".path")), "{to}: {err}");
    }
}
