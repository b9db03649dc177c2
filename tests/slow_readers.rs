//! Slow readers and reloads: `send_timeout`, back-pressure towards the
//! upstream, the in-flight caps, connections that must not keep an old
//! configuration alive, and reloads that must not stall the runtime.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::flood::{self, Flood, BIG};
use support::ops::eventually;
use support::tls::{client_config, listen_tls, Ca, Offer, TlsConn};
use support::*;
use tokio::net::TcpStream;

const KEY: &str = "slow-readers-billing-4b1e";
const OTHER_KEY: &str = "slow-readers-orders-90d3";

/// One route to `up`, clients `billing` (with `billing_extra` in its table)
/// and `orders`; `listen_extra` goes into `[listen]`.
fn config(up: SocketAddr, listen_extra: &str, billing_extra: &str) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"
idle_timeout = "60s"
{listen_extra}

[upstreams.main]
servers = ["http://{up}"]

[[routes]]
name = "all"
path = "/"
upstream = "main"

[clients.billing]
routes = ["*"]
keys = [{{ hash = "{billing}" }}]
{billing_extra}

[clients.orders]
routes = ["*"]
keys = [{{ hash = "{orders}" }}]
"#,
        billing = hash(KEY),
        orders = hash(OTHER_KEY),
    )
}

fn open_connections(kg: &Keygate) -> i64 {
    kg.handle.as_ref().expect("running").shared.metrics.connections.get()
}

/// How a caller asks for `/big` and then reads nothing.
#[derive(Debug, Clone, Copy)]
enum Ask {
    Http1,
    /// A window as large as HTTP/2 allows: keygate writes until the socket is full.
    Http2WideWindow,
    /// The protocol's 64 KiB window, never opened further: no write ever
    /// waits, the response's frames wait for the caller instead.
    Http2ClosedWindow,
}

async fn ask(how: Ask, addr: SocketAddr, path: &str) -> TcpStream {
    match how {
        Ask::Http1 => flood::h1_ask(addr, path, KEY).await,
        Ask::Http2WideWindow => flood::h2_ask(addr, path, KEY, Some(i32::MAX as u32)).await,
        Ask::Http2ClosedWindow => flood::h2_ask(addr, path, KEY, None).await,
    }
}

#[tokio::test]
async fn a_caller_that_never_reads_is_disconnected_after_send_timeout() {
    let up = Flood::start().await;
    let kg = Keygate::start(&config(up.addr, "send_timeout = \"1s\"", "")).await;
    for how in [Ask::Http1, Ask::Http2WideWindow, Ask::Http2ClosedWindow] {
        let start = Instant::now();
        let mut tcp = ask(how, kg.addr, "/big").await;
        assert!(eventually(Duration::from_secs(5), || open_connections(&kg) == 1).await, "{how:?}: not counted");
        let closed = eventually(Duration::from_secs(6), || open_connections(&kg) == 0).await;
        assert!(closed, "{how:?}: still open after {:?} with send_timeout = 1s", start.elapsed());
        assert!(start.elapsed() >= Duration::from_millis(900), "{how:?}: cut before the deadline");
        let (read, ended) = flood::drain(&mut tcp, Duration::from_secs(10), u64::MAX).await;
        assert!(ended && read < BIG, "{how:?}: the caller's side ended: {ended}, {read} bytes");
    }
    // A caller that reads gets its whole response on the same settings.
    let mut tcp = flood::h1_ask(kg.addr, "/big", KEY).await;
    let (read, closed) = flood::drain(&mut tcp, Duration::from_secs(60), BIG).await;
    assert!(read >= BIG && !closed, "a reading caller got {read} bytes, closed: {closed}");
    kg.stop().await;
}

#[tokio::test]
async fn a_caller_that_reads_nothing_stalls_the_upstream_with_little_held_in_between() {
    for how in [Ask::Http1, Ask::Http2WideWindow] {
        let up = Flood::start().await;
        let kg = Keygate::start(&config(up.addr, "send_timeout = \"60s\"", "")).await;
        let tcp = ask(how, kg.addr, "/big").await;
        let written = up.stalled(Duration::from_secs(30)).await.expect("the upstream's writes stall");
        assert!(written < BIG / 4, "{how:?}: the upstream wrote {written} of {BIG} bytes");
        // What the upstream wrote is in kernel buffers (both connections'
        // send and receive queues) or in keygate's own buffers.
        let kernel = flood::kernel_queued(&[up.addr.port(), kg.addr.port()]);
        let in_keygate = written.saturating_sub(kernel);
        assert!(
            in_keygate < 256 * 1024,
            "{how:?}: keygate holds {in_keygate} bytes ({written} written, {kernel} in the kernel)"
        );
        drop(tcp);
        kg.stop().await;
    }
}

/// Status and `error` code of a GET of `/small` with `key`.
async fn small(kg: &Keygate, key: &str) -> (u16, String) {
    let reply = get(&kg.url("/small"), &[("x-api-key", key)]).await;
    let code = if reply.status == 200 { String::new() } else { reply.json()["error"].as_str().unwrap_or("").into() };
    if reply.status == 503 {
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    (reply.status.as_u16(), code)
}

#[tokio::test]
async fn in_flight_caps_answer_503_overloaded_until_a_response_ends() {
    let overloaded = (503, "overloaded".to_string());
    let ok = (200, String::new());
    // (name, [listen] lines, billing's table lines, orders' result while billing is at its cap)
    let cases = [
        ("global cap", "max_in_flight = 1", "", &overloaded),
        ("default per-client cap", "max_in_flight_per_client = 1", "", &ok),
        ("the client's own cap", "", "max_in_flight = 1", &ok),
        ("the client's own cap over the default", "max_in_flight_per_client = 5", "max_in_flight = 1", &ok),
    ];
    for (name, listen, billing, orders_gets) in cases {
        let up = Flood::start().await;
        let kg = Keygate::start(&config(up.addr, listen, billing)).await;
        assert_eq!(small(&kg, KEY).await, ok, "{name}: under the cap");
        // A response being sent (to a caller that does not read) holds its slot.
        let held = flood::h1_ask(kg.addr, "/big", KEY).await;
        assert!(eventually(Duration::from_secs(5), || up.written() > 0).await, "{name}: not forwarded");
        assert_eq!(small(&kg, KEY).await, overloaded, "{name}: billing at its cap");
        assert_eq!(&small(&kg, OTHER_KEY).await, orders_gets, "{name}: orders");
        drop(held);
        let start = Instant::now();
        let mut freed = false;
        while !freed && start.elapsed() < Duration::from_secs(10) {
            freed = small(&kg, KEY).await == ok;
        }
        assert!(freed, "{name}: the slot came back when the response ended");
        kg.stop().await;
    }
}

/// A kept-alive client connection of either protocol.
enum Conn {
    Plain1(http1::SendRequest<Empty<Bytes>>),
    Plain2(http2::SendRequest<Empty<Bytes>>),
    Tls(TlsConn),
}

impl Conn {
    async fn plain(addr: SocketAddr, h2: bool) -> Conn {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.expect("h2");
            tokio::spawn(conn);
            Conn::Plain2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.expect("h1");
            tokio::spawn(conn);
            Conn::Plain1(sender)
        }
    }

    async fn status(&mut self) -> u16 {
        let req =
            || Request::get("/x").header("host", "gate").header("x-api-key", KEY).body(Empty::new()).expect("req");
        let limit = Duration::from_secs(10);
        let response = match self {
            Conn::Plain1(s) => tokio::time::timeout(limit, s.send_request(req())).await,
            Conn::Plain2(s) => {
                let mut r = req();
                *r.uri_mut() = "http://gate/x".parse().expect("uri");
                tokio::time::timeout(limit, s.send_request(r)).await
            }
            Conn::Tls(c) => return c.get("/x", &[("x-api-key", KEY)]).await.expect("TLS request").status.as_u16(),
        };
        let response = response.expect("in time").expect("response");
        let status = response.status().as_u16();
        response.into_body().collect().await.expect("body");
        status
    }
}

#[tokio::test]
async fn held_connections_do_not_keep_a_replaced_configuration_alive() {
    let up = Upstream::start().await;
    let dir = tempdir();
    let ca = Ca::new("slow readers CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let plain = config(up.addr, "", "");
    let tls = format!("{plain}\n{}", listen_tls(&cert, &key, None));
    for (name, text) in [("plain", plain), ("TLS", tls)] {
        let kg = Keygate::start(&text).await;
        let mut conns = Vec::new();
        if name == "plain" {
            conns.push(Conn::plain(kg.addr, false).await);
            conns.push(Conn::plain(kg.addr, true).await);
        } else {
            for alpn in [&["http/1.1"][..], &["h2"][..]] {
                let offer = Offer { alpn, ..Offer::default() };
                conns.push(Conn::Tls(TlsConn::connect(kg.addr, client_config(&ca.der(), offer)).await.expect("TLS")));
            }
        }
        for c in &mut conns {
            assert_eq!(c.status().await, 200, "{name}");
        }
        let shared = kg.handle.as_ref().expect("running").shared.clone();
        let old = Arc::downgrade(&shared.snapshot.load_full());
        assert!(keygate::reload::reload(&shared, Some(&kg.config_path)), "{name}: reloaded");
        let freed = eventually(Duration::from_secs(5), || old.upgrade().is_none()).await;
        assert!(freed, "{name}: the replaced snapshot is still alive with {} connections open", conns.len());
        for c in &mut conns {
            assert_eq!(c.status().await, 200, "{name}: the same connections still serve");
        }
        kg.stop().await;
    }
}

/// keygate and this scenario share one thread (a current-thread runtime).
/// A reload is made to wait behind the reload lock (as behind a long build
/// of a large configuration); requests must still be served meanwhile.
// Held on purpose: only the reload's blocking thread ever waits for it.
#[allow(clippy::await_holding_lock)]
async fn reload_under_way() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "", "")).await;
    let shared = kg.handle.as_ref().expect("running").shared.clone();
    let new_key = "slow-readers-added-key-51c8";
    let added = format!("[clients.added]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\" }}]\n", hash(new_key));
    std::fs::write(&kg.config_path, config(up.addr, "", "") + &added).expect("write");
    let lock = shared.reloading.lock().expect("lock");
    let reload = tokio::spawn(keygate::reload::reload_off_runtime(shared.clone(), Some(kg.config_path.clone())));
    for _ in 0..3 {
        assert_eq!(get(&kg.url("/x"), &[("x-api-key", KEY)]).await.status, 200);
    }
    assert!(!reload.is_finished(), "the reload waits for the lock");
    drop(lock);
    assert!(tokio::time::timeout(Duration::from_secs(10), reload).await.expect("in time").expect("joined"));
    assert_eq!(get(&kg.url("/x"), &[("x-api-key", new_key)]).await.status, 200, "applied");
    // A failed reload, also off the runtime, keeps the running configuration.
    std::fs::write(&kg.config_path, "[listen]\nnot_a_field = 1\n").expect("write");
    assert!(!keygate::reload::reload_off_runtime(shared.clone(), Some(kg.config_path.clone())).await);
    assert_eq!(get(&kg.url("/x"), &[("x-api-key", new_key)]).await.status, 200, "kept");
    kg.stop().await;
}

#[test]
fn requests_are_served_while_a_reload_is_under_way() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(reload_under_way());
        let _ = done.send(());
    });
    // Bounded from outside: a reload run on the runtime's only thread would
    // block it, and no timer inside it could fire.
    finished.recv_timeout(Duration::from_secs(60)).expect("the scenario failed, or the runtime thread was blocked");
}

#[test]
fn the_new_limits_are_read_and_checked() {
    let up: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let path = std::path::Path::new("keygate.toml");
    let env = Default::default();
    let listen = "send_timeout = \"5s\"\nmax_in_flight = 7\nmax_in_flight_per_client = 3";
    let c = keygate::config::load_str(&config(up, listen, "max_in_flight = 2"), path, &env).expect("valid");
    assert_eq!(c.listen.send_timeout, Duration::from_secs(5));
    assert_eq!((c.listen.max_in_flight, c.listen.max_in_flight_per_client), (7, 3));
    let by_id = |id: &str| c.clients.iter().find(|cl| cl.id == id).expect("client").max_in_flight;
    assert_eq!((by_id("billing"), by_id("orders")), (Some(2), None));
    let d = keygate::config::load_str(&config(up, "", ""), path, &env).expect("valid");
    assert_eq!(d.listen.send_timeout, Duration::from_secs(60));
    assert_eq!((d.listen.max_in_flight, d.listen.max_in_flight_per_client), (4096, 1024));
    for (listen, billing, field) in [
        ("send_timeout = \"0s\"", "", "listen.send_timeout"),
        ("send_timeout = \"soon\"", "", "listen.send_timeout"),
        ("max_in_flight = 0", "", "listen.max_in_flight"),
        ("max_in_flight_per_client = -1", "", "listen.max_in_flight_per_client"),
        ("", "max_in_flight = 0", "clients.billing.max_in_flight"),
    ] {
        let err = keygate::config::load_str(&config(up, listen, billing), path, &env).expect_err(field).to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}
