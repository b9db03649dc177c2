//! Tunnels (WebSocket upgrades) stay inside keygate's limits: they hold their
//! connection slot, end when idle, at their lifetime and when a reload takes
//! their credential away, are capped per client; and running out of file
//! descriptors does not stop the accept loop.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::ops::{eventually, until_status};
use support::ws::{closed_within, echoes};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

const ALICE: &str = "tunnels-alice-key-0123456789abcdef0123";
const BOB: &str = "tunnels-bob-key-0123456789abcdef012345";
const LIMIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

/// Route `chat` (`/ws`) and `all` (`/`) to `up`; alice may call `alice_routes`,
/// bob every route; `listen` lines go into `[listen]`.
fn config(up: SocketAddr, listen: &str, alice_routes: &str) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"
shutdown_grace = "1s"
{listen}

[admin]
address = "127.0.0.1:0"

[auth]
max_failures_per_minute = 100000

[rate_limit]
per_second = 100000
burst = 100000

[upstreams.main]
servers = ["http://{up}"]

[[routes]]
name = "chat"
path = "/ws"
upstream = "main"

[[routes]]
name = "all"
path = "/"
upstream = "main"

[clients.alice]
routes = [{alice_routes}]
keys = [{{ hash = "{alice}" }}]

[clients.bob]
routes = ["*"]
keys = [{{ hash = "{bob}" }}]
"#,
        alice = hash(ALICE),
        bob = hash(BOB),
    )
}

/// Open a tunnel to the upstream's echo with `key`.
async fn open(addr: SocketAddr, key: &str) -> Result<Ws, WsError> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut().insert("x-api-key", key.parse().expect("header value"));
    let tcp = TcpStream::connect(addr).await?;
    match tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, tcp)).await {
        Ok(opened) => opened.map(|(ws, _)| ws),
        Err(_) => panic!("no answer to the upgrade in time"),
    }
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (n == name && all).then(|| value.parse().ok()).flatten()
    })
}

async fn metrics_at(admin: SocketAddr) -> String {
    let r = get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).expect("UTF-8")
}

async fn gauge(kg: &Keygate, name: &str) -> Option<f64> {
    metric(&metrics_at(kg.admin.expect("admin")).await, name, &[])
}

async fn closed_count(kg: &Keygate, reason: &str) -> Option<f64> {
    metric(&metrics_at(kg.admin.expect("admin")).await, "keygate_tunnels_closed_total", &[("reason", reason)])
}

/// Poll `check` (an async probe) every 10 ms until it holds or `limit` passes.
async fn until<F: std::future::Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn tunnels_hold_their_connection_slot_and_count_as_connections() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "max_connections = 5", "\"chat\"")).await;
    let mut open_ones = Vec::new();
    for _ in 0..20 {
        if let Ok(ws) = open(kg.addr, ALICE).await {
            open_ones.push(ws);
        }
    }
    assert_eq!(open_ones.len(), 5, "tunnels over max_connections were accepted");
    assert_eq!(gauge(&kg, "keygate_connections").await, Some(5.0));
    assert_eq!(gauge(&kg, "keygate_tunnels").await, Some(5.0));
    for ws in &mut open_ones {
        assert!(echoes(ws, "still here").await);
    }
    // Closing one gives its slot back.
    let mut first = open_ones.remove(0);
    let _ = first.close(None).await;
    drop(first);
    assert!(until(LIMIT, || async { gauge(&kg, "keygate_connections").await == Some(4.0) }).await);
    let mut again = open(kg.addr, ALICE).await.expect("a freed slot takes a new tunnel");
    assert!(echoes(&mut again, "again").await);
    assert_eq!(closed_count(&kg, "closed").await, Some(1.0));
    drop((again, open_ones));
    kg.stop().await;
}

#[tokio::test]
async fn idle_tunnel_is_closed_and_a_talking_one_is_not() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "tunnel_idle_timeout = \"300ms\"", "\"chat\"")).await;
    let mut talking = open(kg.addr, BOB).await.expect("tunnel");
    let mut silent = open(kg.addr, ALICE).await.expect("tunnel");
    assert!(echoes(&mut silent, "one message, then nothing").await);
    let quiet_since = Instant::now();
    // Bytes every 100 ms keep a tunnel open past three idle timeouts, while
    // the silent one is closed after one.
    let talk = async {
        while quiet_since.elapsed() < Duration::from_millis(900) {
            assert!(echoes(&mut talking, "keep-alive").await, "a talking tunnel was closed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Measured from the silent tunnel's last byte (closed_within starts at once).
    let (closed, ()) = tokio::join!(closed_within(&mut silent, LIMIT), talk);
    let after = closed.expect("the idle tunnel was not closed");
    // keygate saw the last byte a little before the test did.
    assert!(after >= Duration::from_millis(200), "closed before its idle timeout: {after:?}");
    assert!(after < Duration::from_millis(900), "closed late: {after:?}");
    assert!(until(LIMIT, || async { closed_count(&kg, "idle").await == Some(1.0) }).await);
    assert!(echoes(&mut talking, "still open").await);
    drop(talking);
    kg.stop().await;
}

#[tokio::test]
async fn idle_timeout_defaults_to_listen_idle_timeout() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "idle_timeout = \"300ms\"", "\"chat\"")).await;
    let mut ws = open(kg.addr, ALICE).await.expect("tunnel");
    let took = closed_within(&mut ws, LIMIT).await.expect("closed by idle_timeout");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    kg.stop().await;
}

#[tokio::test]
async fn busy_tunnel_is_closed_at_its_max_lifetime() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "tunnel_max_lifetime = \"500ms\"", "\"chat\"")).await;
    let mut ws = open(kg.addr, ALICE).await.expect("tunnel");
    let opened = Instant::now();
    while echoes(&mut ws, "busy").await {
        assert!(opened.elapsed() < LIMIT, "the tunnel outlived its lifetime");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(opened.elapsed() >= Duration::from_millis(450), "closed early: {:?}", opened.elapsed());
    assert!(until(LIMIT, || async { closed_count(&kg, "lifetime").await == Some(1.0) }).await);
    kg.stop().await;
}

#[tokio::test]
async fn reload_that_takes_the_key_or_the_route_away_closes_the_tunnel() {
    let up = Upstream::start().await;
    let base = config(up.addr, "", "\"chat\", \"all\"");
    let renamed = base.replace("name = \"chat\"", "name = \"talk\"").replace("\"chat\", \"all\"", "\"all\"");
    // (change, whether alice's tunnel must close, whether bob's must)
    let cases = [
        ("key removed", base.replace(&hash(ALICE), &hash("tunnels-alice-new-key-0123456789abcdef")), true, false),
        ("route permission removed", base.replace("\"chat\", \"all\"", "\"all\""), true, false),
        ("client removed", base.replace("[clients.alice]", "[clients.carol]"), true, false),
        // A tunnel is bound to its route by name: renamed is removed, for bob too.
        ("route renamed", renamed, true, true),
        ("unrelated change", base.replace("per_second = 100000", "per_second = 99999"), false, false),
    ];
    for (what, changed, alice_closes, bob_closes) in cases {
        assert_ne!(changed, base, "{what}: the change did not apply");
        let kg = Keygate::start(&base).await;
        let mut alice = open(kg.addr, ALICE).await.expect("alice's tunnel");
        let mut bob = open(kg.addr, BOB).await.expect("bob's tunnel");
        std::fs::write(&kg.config_path, &changed).expect("write config");
        let shared = kg.handle.as_ref().expect("running").shared.clone();
        assert!(keygate::reload::reload(&shared, Some(&kg.config_path)), "{what}: reload refused");
        for (who, ws, closes) in [("alice", &mut alice, alice_closes), ("bob", &mut bob, bob_closes)] {
            if closes {
                assert!(closed_within(ws, LIMIT).await.is_some(), "{what}: {who}'s tunnel survived the reload");
            } else {
                assert!(echoes(ws, "kept").await, "{what}: {who}'s tunnel was closed");
            }
        }
        let revoked = f64::from(u8::from(alice_closes) + u8::from(bob_closes));
        let counted = until(LIMIT, || async { closed_count(&kg, "revoked").await.unwrap_or(0.0) == revoked });
        assert!(counted.await, "{what}: revoked tunnels not counted");
        drop((alice, bob));
        kg.stop().await;
    }
}

#[tokio::test]
async fn each_client_holds_at_most_max_tunnels_per_client() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "max_tunnels_per_client = 2", "\"chat\"")).await;
    let mut first = open(kg.addr, ALICE).await.expect("first tunnel");
    let _second = open(kg.addr, ALICE).await.expect("second tunnel");
    match open(kg.addr, ALICE).await {
        Err(WsError::Http(res)) => {
            assert_eq!(res.status(), 429);
            let body: serde_json::Value = serde_json::from_slice(res.body().as_deref().unwrap_or_default())
                .unwrap_or_else(|e| panic!("JSON body: {e}"));
            assert_eq!(body["error"], "too_many_tunnels");
        }
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("a third tunnel was opened"),
    }
    let _bob = open(kg.addr, BOB).await.expect("another client is not limited by alice's tunnels");
    let _ = first.close(None).await;
    drop(first);
    assert!(until(LIMIT, || async { open(kg.addr, ALICE).await.is_ok() }).await, "a closed tunnel freed no place");
    // Plain requests are not tunnels: they pass.
    assert_eq!(get(&kg.url("/ws/plain"), &[("x-api-key", ALICE)]).await.status, 200);
    kg.stop().await;
}

/// keygate as a child process with at most `fds` open files; stderr collected.
struct Limited {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Limited {
    fn serve(config: &Path, fds: u32) -> Limited {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\" serve -c \"$1\""))
            .arg(env!("CARGO_BIN_EXE_keygate"))
            .arg(config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keygate");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push_str(&(line + "\n"));
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut addr, mut admin) = (None, None);
        for line in out.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                addr = rest.split("://").nth(1).and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.trim().strip_prefix("admin:") {
                admin = rest.trim().parse().ok();
                break;
            }
        }
        // Read on (the access log goes to stdout): a closed pipe would fail its writes.
        std::thread::spawn(move || out.map_while(Result::ok).for_each(drop));
        let (Some(addr), Some(admin)) = (addr, admin) else {
            let _ = child.kill();
            panic!("keygate did not start: {}", stderr.lock().expect("lock"));
        };
        Limited { child, addr, admin, stderr }
    }

    fn log_lines(&self, needle: &str) -> usize {
        self.stderr.lock().expect("lock").lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let up = Upstream::start().await;
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    // Held connections must outlast the test's hold.
    std::fs::write(&path, config(up.addr, "header_read_timeout = \"60s\"", "\"chat\", \"all\"")).expect("write");
    let kg = Limited::serve(&path, 64);
    let url = format!("http://{}/", kg.addr);
    assert!(until_status(&url, ALICE, 200, LIMIT).await.is_some(), "not serving before the test");
    // That request's connection closed: no descriptor frees up by itself during the hold.
    let quiet = || async { metric(&metrics_at(kg.admin).await, "keygate_connections", &[]) == Some(0.0) };
    assert!(until(LIMIT, quiet).await);
    let mut held = Vec::new();
    let exhausted = async {
        for _ in 0..200 {
            // Past keygate's descriptors the kernel's backlog takes them (and may refuse some).
            if let Ok(tcp) = TcpStream::connect(kg.addr).await {
                held.push(tcp);
            }
            if kg.log_lines("backing off") > 0 {
                return true;
            }
            tokio::task::yield_now().await;
        }
        eventually(LIMIT, || kg.log_lines("backing off") > 0).await
    };
    assert!(exhausted.await, "keygate never ran out of descriptors: {}", kg.stderr.lock().expect("lock"));
    // Hold the exhaustion a while: several accepts fail in this one episode.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    assert!(until_status(&url, ALICE, 200, LIMIT).await.is_some(), "not serving again after descriptors were freed");
    let text = metrics_at(kg.admin).await;
    let failed = metric(&text, "keygate_accept_errors_total", &[("reason", "fd_exhausted")]).unwrap_or(0.0);
    assert!(failed >= 2.0, "failures not counted: {failed}\n{text}");
    assert_eq!(
        kg.log_lines("backing off"),
        1,
        "logged more than once per episode:\n{}",
        kg.stderr.lock().expect("lock")
    );
    // The episode ends with the first accept after a quiet spell.
    let ended = until(LIMIT, || async {
        support::ops::status(&url, ALICE).await == Some(200) && kg.log_lines("accepting connections again") == 1
    });
    assert!(ended.await, "the episode's end was not logged");
    assert_eq!(kg.log_lines("backing off"), 1);
}

#[tokio::test]
async fn revoked_key_gets_401_on_an_open_http2_connection() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = Upstream::start().await;
    let base = config(up.addr, "", "\"chat\", \"all\"");
    let kg = Keygate::start(&base).await;
    let tcp = TcpStream::connect(kg.addr).await.expect("connect");
    let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp));
    let (mut h2, conn) = tokio::time::timeout(LIMIT, handshake).await.expect("in time").expect("HTTP/2");
    let driven = tokio::spawn(conn);
    let request = || {
        let req = http::Request::get(format!("http://{}/h2", kg.addr)).header("x-api-key", ALICE);
        req.body(Empty::<bytes::Bytes>::new()).expect("request")
    };
    let status = |r: Result<http::Response<_>, hyper::Error>| r.map(|r| r.status().as_u16()).ok();
    assert_eq!(status(h2.send_request(request()).await), Some(200));
    std::fs::write(&kg.config_path, base.replace(&hash(ALICE), &hash("tunnels-alice-new-key-0123456789abcdef")))
        .expect("write config");
    let shared = kg.handle.as_ref().expect("running").shared.clone();
    assert!(keygate::reload::reload(&shared, Some(&kg.config_path)));
    // The same connection: each stream is authenticated against the snapshot of its own time.
    assert_eq!(status(h2.send_request(request()).await), Some(401));
    assert!(!driven.is_finished(), "the connection was not kept");
    kg.stop().await;
}

#[tokio::test]
async fn reload_that_changes_the_certificate_binding_closes_the_tunnel() {
    use support::tls::{client_config, listen_tls, Ca, Offer};
    let up = Upstream::start().await;
    let certs = tempdir();
    let ca = Ca::new("tunnels test CA");
    let ca_path = ca.write(certs.path(), "ca.pem");
    let (cert, key) = ca.server().write(certs.path(), "server");
    let alice_cert = ca.client("alice");
    let base = config(up.addr, "", "\"chat\", \"all\"")
        .replace("[admin]", &format!("{}\n[admin]", listen_tls(&cert, &key, Some(&ca_path))))
        .replace("[clients.alice]\n", "[clients.alice]\ntls_subjects = [\"CN=alice\"]\n");
    let kg = Keygate::start(&base).await;
    let tls = client_config(&ca.der(), Offer { cert: Some(&alice_cert), alpn: &["http/1.1"], ..Offer::default() });
    let tcp = TcpStream::connect(kg.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.expect("TLS handshake");
    let mut req = format!("wss://localhost:{}/ws", kg.addr.port()).into_client_request().expect("request");
    req.headers_mut().insert("x-api-key", ALICE.parse().expect("value"));
    let opened = tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, stream)).await.expect("in time");
    let (mut ws, _) = opened.expect("alice's tunnel over mTLS");
    assert!(echoes(&mut ws, "bound").await);
    std::fs::write(&kg.config_path, base.replace("CN=alice\"", "CN=alice-batch\"")).expect("write config");
    let shared = kg.handle.as_ref().expect("running").shared.clone();
    assert!(keygate::reload::reload(&shared, Some(&kg.config_path)));
    assert!(closed_within(&mut ws, LIMIT).await.is_some(), "the tunnel survived a binding it no longer meets");
    kg.stop().await;
}

#[test]
fn check_refuses_bad_tunnel_limits_naming_file_line_and_field() {
    let up: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let cases = [
        ("tunnel_idle_timeout = \"0s\"", "listen.tunnel_idle_timeout"),
        ("tunnel_idle_timeout = \"soon\"", "listen.tunnel_idle_timeout"),
        ("tunnel_max_lifetime = \"0ms\"", "listen.tunnel_max_lifetime"),
        ("max_tunnels_per_client = 0", "listen.max_tunnels_per_client"),
        ("max_tunnels_per_client = -3", "listen.max_tunnels_per_client"),
    ];
    for (line, field) in cases {
        let text = config(up, line, "\"chat\"");
        let path = Path::new("keygate.toml");
        let err = keygate::config::load_str(&text, path, &Default::default()).expect_err(line).to_string();
        assert!(err.contains("keygate.toml:4:") && err.contains(field), "{line}: {err}");
    }
    let text = config(up, "tunnel_max_lifetime = \"24h\"\nmax_tunnels_per_client = 3", "\"chat\"");
    let listen = keygate::config::load_str(&text, Path::new("k.toml"), &Default::default()).expect("valid").listen;
    assert_eq!(listen.tunnel_max_lifetime, Duration::from_secs(86_400));
    assert_eq!(listen.max_tunnels_per_client, 3);
    assert_eq!(listen.tunnel_idle_timeout, listen.idle_timeout, "the idle default follows idle_timeout");
}
