//! The real client address (issue 12): `X-Forwarded-For` and the PROXY
//! protocol (v1, v2; plain and TLS listeners) are believed from trusted
//! proxies only, and the client address is what the throttle counts, what
//! the upstream's `X-Forwarded-For` ends with and what the access log shows.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ppp::v2;
use rustls::pki_types::ServerName;
use support::tls::{client_config, listen_tls, Ca, Offer};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

const KEY: &str = "client-address-key-7c1e0b9d3a5f2468";
const LIMIT: Duration = Duration::from_secs(10);

/// A gateway trusting 127.0.0.1 and 10.0.0.0/8, with `listen` lines added
/// to its `[listen]` table and `rest` appended.
fn config(up: SocketAddr, listen: &str, rest: &str) -> String {
    let trusted = "address = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n";
    basic_config(up, KEY, rest).replacen("address = \"127.0.0.1:0\"\n", &format!("{trusted}{listen}"), 1)
}

/// A TCP connection to `addr` from loopback address `local`.
async fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{local}:0").parse().expect("address")).expect("bind");
    let tcp = tokio::time::timeout(LIMIT, socket.connect(addr)).await.expect("in time").expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

fn request(key: &str, xff: &[&str]) -> String {
    let mut r = format!("GET /r HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n");
    for line in xff {
        r += &format!("X-Forwarded-For: {line}\r\n");
    }
    r + "\r\n"
}

/// Write `bytes`, then read until the server closes (bounded).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, bytes: &[u8]) -> String {
    // A refused connection may be closed before the write: what is read decides.
    let _ = io.write_all(bytes).await;
    let mut out = Vec::new();
    // A reset (a refused connection) or a TLS close without close_notify
    // ends the reading as a close does.
    let _ = tokio::time::timeout(LIMIT, io.read_to_end(&mut out)).await.expect("the server ends the connection");
    String::from_utf8_lossy(&out).into_owned()
}

async fn status_from(local: &str, addr: SocketAddr, key: &str, xff: &[&str]) -> String {
    let reply = exchange(connect_from(local, addr).await, request(key, xff).as_bytes()).await;
    reply.get(9..12).unwrap_or("none").to_string()
}

fn last_xff(up: &Upstream) -> String {
    let last = up.last();
    let all: Vec<&str> = last.headers.get_all("x-forwarded-for").iter().map(|v| v.to_str().expect("ascii")).collect();
    assert_eq!(all.len(), 1, "one X-Forwarded-For line: {all:?}");
    all[0].to_string()
}

#[tokio::test]
async fn forwarded_for_is_read_and_kept_from_trusted_peers_only() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "", "")).await;
    // (peer, the caller's X-Forwarded-For lines, what the upstream gets)
    let cases: &[(&str, &[&str], &str)] = &[
        ("127.0.0.1", &["203.0.113.9"], "203.0.113.9, 127.0.0.1"),
        ("127.0.0.1", &["198.51.100.1, 203.0.113.9"], "198.51.100.1, 203.0.113.9, 127.0.0.1"),
        ("127.0.0.1", &["198.51.100.1", "203.0.113.9"], "198.51.100.1, 203.0.113.9, 127.0.0.1"),
        ("127.0.0.1", &[], "127.0.0.1"),
        ("127.0.0.2", &["203.0.113.9"], "127.0.0.2"),
        ("127.0.0.2", &["127.0.0.1, 10.0.0.1"], "127.0.0.2"),
        ("127.0.0.2", &[], "127.0.0.2"),
    ];
    for (peer, xff, want) in cases {
        assert_eq!(status_from(peer, kg.addr, KEY, xff).await, "200", "{peer} {xff:?}");
        assert_eq!(last_xff(&up), *want, "from {peer} with {xff:?}");
    }
    kg.stop().await;
}

#[tokio::test]
async fn keygate_trusted_proxies_replaces_the_file_list() {
    let up = Upstream::start().await;
    let env = [("KEYGATE_TRUSTED_PROXIES".to_string(), "127.0.0.2, 10.0.0.0/8".to_string())].into();
    let kg = Keygate::start_with_env(&config(up.addr, "", ""), &env).await;
    assert_eq!(status_from("127.0.0.2", kg.addr, KEY, &["203.0.113.9"]).await, "200");
    assert_eq!(last_xff(&up), "203.0.113.9, 127.0.0.2", "127.0.0.2 is trusted now");
    assert_eq!(status_from("127.0.0.1", kg.addr, KEY, &["203.0.113.9"]).await, "200");
    assert_eq!(last_xff(&up), "127.0.0.1", "and the file's 127.0.0.1 no longer");
    kg.stop().await;
}

#[tokio::test]
async fn the_throttle_counts_the_client_behind_a_trusted_proxy_and_the_peer_otherwise() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "", "[auth]\nmax_failures_per_minute = 2\n")).await;
    let addr = kg.addr;
    let behind = |xff: &'static str| async move { status_from("127.0.0.1", addr, "wrong", &[xff]).await };
    assert_eq!(behind("203.0.113.9").await, "401");
    assert_eq!(behind("198.51.100.1, 203.0.113.9").await, "401", "the right-most untrusted hop is the client");
    assert_eq!(behind("203.0.113.9, 10.1.1.1").await, "429", "trusted hops are skipped");
    assert_eq!(behind("198.51.100.7").await, "401", "another client behind the same proxy is not blocked");
    assert_eq!(status_from("127.0.0.1", addr, KEY, &["203.0.113.9"]).await, "200", "a valid key passes");
    // An untrusted peer cannot name someone else: it is counted itself.
    for _ in 0..2 {
        assert_eq!(status_from("127.0.0.2", kg.addr, "wrong", &["198.51.100.8"]).await, "401");
    }
    assert_eq!(status_from("127.0.0.2", kg.addr, "wrong", &["192.0.2.200"]).await, "429");
    assert_eq!(behind("198.51.100.8").await, "401", "the untrusted peer's header blocked no one");
    kg.stop().await;
}

/// The access log's `remote` is the client address; `peer` names the proxy.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_shows_the_client_address_and_the_proxy() {
    let up = Upstream::start().await;
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config(up.addr, "", "")).expect("write config");
    let p = Process::serve(Some(&path), &[("KEYGATE_LOG_FORMAT", "json"), ("KEYGATE_LOG", "info")]);
    let cases = [("127.0.0.1", "log-trusted", "203.0.113.9"), ("127.0.0.2", "log-untrusted", "127.0.0.2:")];
    for (peer, id, remote) in cases {
        let mut tcp = connect_from(peer, p.addr).await;
        let req = request(KEY, &["203.0.113.9"]).replace("\r\n\r\n", &format!("\r\nX-Request-Id: {id}\r\n\r\n"));
        tcp.write_all(req.as_bytes()).await.expect("write");
        assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
        let line = access_line(&p, id);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let shown = v["remote"].as_str().expect("remote");
        assert!(shown == remote || (remote.ends_with(':') && shown.starts_with(remote)), "{peer}: {v}");
        match peer {
            "127.0.0.1" => assert!(v["peer"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")), "{v}"),
            _ => assert!(v.get("peer").is_none(), "no proxy, no peer: {v}"),
        }
    }
}

fn access_line(p: &Process, request_id: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let out = p.output();
        if let Some(line) = out.lines().find(|l| l.contains("keygate::access") && l.contains(request_id)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no access line for {request_id} in:\n{out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn v2_header(command: v2::Command, addresses: v2::Addresses) -> Vec<u8> {
    v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses).build().expect("v2")
}

/// PROXY headers and the address the upstream should see for each.
fn proxy_headers() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let four: v2::Addresses = ("203.0.113.7:5555".parse().expect("a"), "127.0.0.1:443".parse().expect("a")).into();
    let six: v2::Addresses = ("[2001:db8::7]:5555".parse().expect("a"), "[2001:db8::1]:443".parse().expect("a")).into();
    vec![
        ("v1 tcp4", b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n".to_vec(), "203.0.113.7"),
        ("v1 tcp6", b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n".to_vec(), "2001:db8::7"),
        ("v1 unknown", b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
        ("v2 ipv4", v2_header(v2::Command::Proxy, four), "203.0.113.7"),
        ("v2 ipv6", v2_header(v2::Command::Proxy, six), "2001:db8::7"),
        ("v2 local", v2_header(v2::Command::Local, v2::Addresses::Unspecified), "127.0.0.1"),
    ]
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_on_a_plain_listener() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "proxy_protocol = true\n", "")).await;
    for (name, header, want) in proxy_headers() {
        let mut bytes = header.clone();
        bytes.extend_from_slice(request(KEY, &[]).as_bytes());
        let reply = exchange(connect_from("127.0.0.1", kg.addr).await, &bytes).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{name}: {reply}");
        assert_eq!(last_xff(&up), want, "{name}");
        // The header in two writes, the request in a third.
        let mut tcp = connect_from("127.0.0.1", kg.addr).await;
        let (a, b) = header.split_at(header.len() / 2);
        tcp.write_all(a).await.expect("write");
        tcp.flush().await.expect("flush");
        tcp.write_all(b).await.expect("write");
        let reply = exchange(tcp, request(KEY, &[]).as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{name} split: {reply}");
    }
    kg.stop().await;
}

#[tokio::test]
async fn proxy_protocol_before_tls() {
    let dir = tempdir();
    let ca = Ca::new("client-address CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "proxy_protocol = true\n", &listen_tls(&cert, &key, None))).await;
    let tls = client_config(&ca.der(), Offer { alpn: &["http/1.1"], ..Offer::default() });
    for (name, header, want) in proxy_headers() {
        let mut tcp = connect_from("127.0.0.1", kg.addr).await;
        tcp.write_all(&header).await.expect("write");
        let name_ = ServerName::try_from("localhost").expect("name");
        let stream = tokio::time::timeout(LIMIT, TlsConnector::from(Arc::clone(&tls)).connect(name_, tcp))
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("{name}: handshake: {e}"));
        let reply = exchange(stream, request(KEY, &[]).as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{name}: {reply}");
        assert_eq!(last_xff(&up), want, "{name}");
    }
    kg.stop().await;
}

#[tokio::test]
async fn the_throttle_counts_the_proxy_protocol_source() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "proxy_protocol = true\n", "[auth]\nmax_failures_per_minute = 1\n")).await;
    let addr = kg.addr;
    let from = |source: &'static str, key: &'static str| async move {
        let header = format!("PROXY TCP4 {source} 127.0.0.1 5555 443\r\n");
        let reply = exchange(connect_from("127.0.0.1", addr).await, (header + &request(key, &[])).as_bytes()).await;
        reply.get(9..12).unwrap_or("none").to_string()
    };
    assert_eq!(from("203.0.113.7", "wrong").await, "401");
    assert_eq!(from("203.0.113.7", "wrong").await, "429");
    assert_eq!(from("203.0.113.8", "wrong").await, "401", "another client of the same balancer");
    assert_eq!(from("203.0.113.7", KEY).await, "200");
    kg.stop().await;
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_closes_the_connection() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "proxy_protocol = true\n", "")).await;
    for (name, header, _) in proxy_headers() {
        let mut bytes = header;
        bytes.extend_from_slice(request(KEY, &[]).as_bytes());
        let reply = exchange(connect_from("127.0.0.2", kg.addr).await, &bytes).await;
        assert_eq!(reply, "", "{name} from an untrusted peer");
    }
    let reply = exchange(connect_from("127.0.0.2", kg.addr).await, request(KEY, &[]).as_bytes()).await;
    assert_eq!(reply, "", "no header from an untrusted peer either");
    assert_eq!(up.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn a_malformed_proxy_header_closes_the_connection() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "proxy_protocol = true\n", "")).await;
    let mut long_v1 = b"PROXY TCP4 ".to_vec();
    long_v1.resize(200, b'1');
    let sig = b"\r\n\r\n\0\r\nQUIT\n";
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("no header", Vec::new()),
        ("v1 missing port", b"PROXY TCP4 203.0.113.7 127.0.0.1 5555\r\n".to_vec()),
        ("v1 bad address", b"PROXY TCP4 999.0.113.7 127.0.0.1 5555 443\r\n".to_vec()),
        ("v1 bad protocol", b"PROXY TCP9 203.0.113.7 127.0.0.1 5555 443\r\n".to_vec()),
        ("v1 bare LF", b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\n".to_vec()),
        ("v1 six to four", b"PROXY TCP4 2001:db8::7 127.0.0.1 5555 443\r\n".to_vec()),
        ("v1 too long", long_v1),
        ("v1 lower case", b"proxy TCP4 203.0.113.7 127.0.0.1 5555 443\r\n".to_vec()),
        ("v2 version 3", [&sig[..], b"\x31\x11\x00\x0c", &[0; 12]].concat()),
        ("v2 command 5", [&sig[..], b"\x25\x11\x00\x0c", &[0; 12]].concat()),
        ("v2 short addresses", [&sig[..], b"\x21\x11\x00\x04", &[0; 4]].concat()),
        ("v2 bad signature", [&b"\r\n\r\n\0\r\nQUIT!"[..], b"\x21\x11\x00\x0c", &[0; 12]].concat()),
        ("binary", vec![0x16, 0x03, 0x01, 0x00, 0xff]),
    ];
    for (name, header) in bad {
        let mut bytes = header;
        bytes.extend_from_slice(request(KEY, &[]).as_bytes());
        let reply = exchange(connect_from("127.0.0.1", kg.addr).await, &bytes).await;
        assert_eq!(reply, "", "{name}");
    }
    assert_eq!(up.count(), 0);
    let good = [&b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n"[..], request(KEY, &[]).as_bytes()].concat();
    let reply = exchange(connect_from("127.0.0.1", kg.addr).await, &good).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "still serving: {reply}");
    kg.stop().await;
}

#[tokio::test]
async fn a_proxy_header_must_arrive_within_the_header_read_timeout() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "proxy_protocol = true\nheader_read_timeout = \"300ms\"\n", "")).await;
    let started = Instant::now();
    let reply = exchange(connect_from("127.0.0.1", kg.addr).await, b"PROXY TCP4 203.0.113.7").await;
    assert_eq!(reply, "");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
    kg.stop().await;
}

/// `keygate check` on the test config, its `trusted_proxies` line replaced by `line`.
fn check(line: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempdir();
    let text = config("127.0.0.1:9".parse().expect("address"), "", "").replacen(
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n",
        line,
        1,
    );
    std::fs::write(dir.path().join("keygate.toml"), text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "-c", "keygate.toml"])
        .current_dir(dir.path())
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run check");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_validates_trusted_proxies_and_the_proxy_protocol_switch() {
    let ok = check("trusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.1\", \"::1\"]\n", &[]);
    assert_eq!(ok.0, Some(0), "{}", ok.1);
    // Line 3 of the file; the column is the entry's.
    let cases: &[(&str, &str)] = &[
        ("trusted_proxies = [\"10.0.0.0/33\"]\n", "keygate.toml:3:20: listen.trusted_proxies[0]: \"10.0.0.0/33\" is not a network"),
        ("trusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n", "keygate.toml:3:34: listen.trusted_proxies[1]: \"lb.internal\" is not a network"),
        ("trusted_proxies = [\"10.0.0.1/8\"]\n", "keygate.toml:3:20: listen.trusted_proxies[0]: \"10.0.0.1/8\" has host bits set: did you mean \"10.0.0.0/8\"?"),
        ("proxy_protocol = true\n", "listen.proxy_protocol: is on, but listen.trusted_proxies"),
    ];
    for (line, want) in cases {
        let (code, stderr) = check(line, &[]);
        assert_eq!(code, Some(2), "{line}: {stderr}");
        assert!(stderr.lines().any(|l| l.starts_with(want)), "want {want}\ngot {stderr}");
    }
    let (code, stderr) = check("", &[("KEYGATE_TRUSTED_PROXIES", "10.0.0.0/8, nope")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("KEYGATE_TRUSTED_PROXIES: \"nope\" is not a network"), "{stderr}");
    let (code, stderr) = check("", &[("KEYGATE_PROXY_PROTOCOL", "maybe")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("KEYGATE_PROXY_PROTOCOL: must be true or false"), "{stderr}");
    let (code, stderr) = check("", &[("KEYGATE_PROXY_PROTOCOL", "true"), ("KEYGATE_TRUSTED_PROXIES", "")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("listen.proxy_protocol: is on, but listen.trusted_proxies"), "{stderr}");
    let (code, stderr) = check("", &[("KEYGATE_PROXY_PROTOCOL", "true"), ("KEYGATE_TRUSTED_PROXIES", "10.0.0.0/8")]);
    assert_eq!(code, Some(0), "{stderr}");
}
