//! `keygate explain` agrees with live requests: the same table of requests
//! is sent to a running keygate and explained against its snapshot, and the
//! status must match for every row (both run `proxy::decide`).

mod support;

use std::process::{Command, Stdio};

use http::{Method, Request};
use keygate::cli::explain::{self, Caller};
use support::*;

const ALICE: &str = "explain-alice-0123456789abcdef0123456789";
const BOB: &str = "explain-bob-0123456789abcdef0123456789abc";

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[auth]
max_failures_per_minute = 100000

[upstreams.main]
servers = ["http://{up}"]

[[routes]]
name = "public"
path = "/"
upstream = "main"

[[routes]]
name = "orders-read"
path = "/orders"
methods = ["GET", "HEAD"]
upstream = "main"

[[routes]]
name = "admin"
path = "/admin"
upstream = "main"

[[routes]]
name = "internal"
path = "/"
host = "internal.svc"
upstream = "main"

[clients.alice]
routes = ["public", "orders-read"]
keys = [{{ hash = "{}" }}]

[clients.bob]
routes = ["internal"]
keys = [{{ hash = "{}" }}]
"#,
        hash(ALICE),
        hash(BOB)
    )
}

/// (method, target, Host, extra headers, expected status)
type Case = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static str)], u16);

const A: &[(&str, &str)] = &[("X-API-Key", ALICE)];
const B: &[(&str, &str)] = &[("X-API-Key", BOB)];

const CASES: &[Case] = &[
    ("GET", "/", "gw", A, 200),
    ("GET", "/orders/7", "gw", A, 200),
    ("HEAD", "/orders", "gw", A, 200),
    ("GET", "/orders-admin", "gw", A, 200),
    ("GET", "//orders/7", "gw", A, 200),
    ("GET", "/%6Frders/7", "gw", A, 200),
    ("DELETE", "/orders-x", "gw", A, 200),
    ("DELETE", "/orders/7", "gw", A, 405),
    ("POST", "/orders", "gw", A, 405),
    ("GET", "/admin", "gw", A, 403),
    ("GET", "/admin/", "gw", A, 403),
    ("GET", "/admin;x", "gw", A, 403),
    ("GET", "/admin;jsessionid=1/secret", "gw", A, 403),
    ("GET", "/ADMIN", "gw", A, 403),
    ("GET", "/Admin/x", "gw", A, 403),
    ("GET", "/public/../admin", "gw", A, 403),
    ("GET", "/admin.", "gw", A, 400),
    ("GET", "/admin%2e", "gw", A, 400),
    ("GET", "/admin%2Fx", "gw", A, 400),
    ("GET", "/../x", "gw", A, 400),
    ("GET", "/", "internal.svc", A, 403),
    ("GET", "/", "internal.svc.", A, 403),
    ("GET", "/", "INTERNAL.SVC:80", A, 403),
    ("GET", "/", "x@internal.svc", A, 400),
    ("GET", "/", "internal%2esvc", A, 400),
    ("GET", "/", "gw", &[], 401),
    ("GET", "/", "gw", &[("X-API-Key", "explain-wrong-0123456789abcdef0123456789")], 401),
    ("GET", "/", "gw", &[("Authorization", "Basic dXNlcjpwYXNz")], 401),
    ("GET", "/", "gw", &[("Authorization", "Bearer explain-alice-0123456789abcdef0123456789")], 200),
    ("GET", "/", "gw", &[("X-API-Key", ALICE), ("X-API-Key", ALICE)], 401),
    ("GET", "/?api_key=explain-alice-0123456789abcdef0123456789", "gw", &[], 401),
    ("GET", "/", "internal.svc", B, 200),
    ("GET", "/", "gw", B, 403),
    ("GET", "/admin", "internal.svc", B, 403),
];

/// The status of the raw HTTP/1.1 response.
fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn explain_agrees_with_live_requests() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr)).await;
    let snap = kg.handle.as_ref().expect("running").shared.snapshot.load_full();
    let mut checked = 0;
    for (method, target, host, headers, expected) in CASES {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        let mut req = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(*target);
        req = req.header("Host", *host).header("Connection", "close");
        for (name, value) in headers.iter() {
            head += &format!("{name}: {value}\r\n");
            req = req.header(*name, *value);
        }
        if *method == "POST" {
            head += "Content-Length: 0\r\n";
        }
        head += "\r\n";
        let live = status_of(&raw(kg.addr, head.as_bytes()).await);
        let (parts, ()) = req.body(()).expect("request").into_parts();
        let report = explain::explain(&snap, &parts, Caller::Credentials);
        assert_eq!(live, *expected, "live {method} {target} Host {host} {headers:?}");
        assert_eq!(
            report.status,
            live,
            "explain disagrees on {method} {target} Host {host}:\n{}",
            report.lines.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 30);
    kg.stop().await;
}

#[test]
fn the_command_prints_each_step_and_exits_by_the_verdict() {
    let dir = tempdir();
    std::fs::write(dir.path().join("keygate.toml"), config("127.0.0.1:9".parse().unwrap())).unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["explain", "-c", "keygate.toml"])
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = run(&["--client", "alice", "GET", "/admin;x"], "");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("route       admin (prefix /admin"), "{out}");
    assert!(out.contains("verdict     403 forbidden"), "{out}");
    let (code, out) = run(&["--client", "alice", "DELETE", "/orders/7"], "");
    assert_eq!(code, Some(1));
    assert!(out.contains("Allow: GET, HEAD") && out.contains("405 method_not_allowed"), "{out}");
    let (code, out) = run(&["--key-from-stdin", "GET", "/orders/7"], &format!("{ALICE}\n"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("of client alice") && out.contains("to upstream main"), "{out}");
    assert!(!out.contains(ALICE), "the key is never printed: {out}");
    let (code, out) = run(&["--client", "bob", "GET", "http://INTERNAL.SVC./x"], "");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("host \"internal.svc\""), "{out}");
}
