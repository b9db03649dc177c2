//! The admin listener (`/healthz`, `/readyz`, `/metrics`) and the expiry
//! warnings of `keygate check`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const KEY: &str = "adm-billing-key";
const IDLE_KEY: &str = "adm-idle-key";
const LIMITED_KEY: &str = "adm-limited-key";
/// 2030-01-01T00:00:00Z.
const EXPIRES: i64 = 1_893_456_000;

fn fingerprint(key: &str) -> String {
    keygate::keys::fingerprint(&keygate::keys::digest(key.as_bytes()))
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn config(up: SocketAddr) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[upstreams.main]
servers = ["http://{up}"]

[upstreams.dead]
servers = ["http://{dead}"]
connect_timeout = "1s"

[[routes]]
name = "dead"
path = "/dead"
upstream = "dead"

[[routes]]
name = "all"
path = "/"
upstream = "main"

[clients.billing]
routes = ["*"]
keys = [
  {{ hash = "{key}", expires = "2030-01-01T00:00:00Z" }},
  {{ hash = "{idle}" }},
]

[clients.limited]
routes = ["*"]
rate_limit = {{ per_second = 0.01, burst = 1 }}
keys = [{{ hash = "{limited}" }}]
"#,
        dead = dead_port(),
        key = hash(KEY),
        idle = hash(IDLE_KEY),
        limited = hash(LIMITED_KEY),
    )
}

/// The value of the series `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (n == name && all).then(|| value.parse().ok()).flatten()
    })
}

async fn admin(kg: &Keygate, path: &str) -> Reply {
    get(&format!("http://{}{path}", kg.admin.expect("admin listener")), &[]).await
}

async fn metrics(kg: &Keygate) -> String {
    let r = admin(kg, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")));
    String::from_utf8(r.body.to_vec()).expect("UTF-8")
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_while_serving() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr)).await;
    assert_eq!(admin(&kg, "/healthz").await.status, 200);
    assert_eq!(admin(&kg, "/readyz").await.status, 200);
    assert_eq!(admin(&kg, "/nothing").await.status, 404);
    kg.stop().await;
}

#[tokio::test]
async fn request_series_grow_and_carry_the_client_id() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr)).await;
    let series = [("client", "billing"), ("route", "all"), ("status", "200")];
    let before = metric(&metrics(&kg).await, "keygate_requests_total", &series).unwrap_or(0.0);
    let started = keygate::keys::unix_now();
    for _ in 0..3 {
        assert_eq!(get(&kg.url("/m"), &[("x-api-key", KEY)]).await.status, 200);
    }
    let text = metrics(&kg).await;
    assert_eq!(metric(&text, "keygate_requests_total", &series), Some(before + 3.0), "{text}");
    let count = metric(&text, "keygate_request_duration_seconds_count", &[]).expect("latency histogram");
    assert!(count >= 3.0);
    let key = [("client", "billing"), ("key", &*fingerprint(KEY))];
    let used = metric(&text, "keygate_key_last_used_timestamp_seconds", &key).expect("last used");
    assert!(used >= started as f64, "last used {used}, test started {started}");
    let idle = [("client", "billing"), ("key", &*fingerprint(IDLE_KEY))];
    assert_eq!(
        metric(&text, "keygate_key_last_used_timestamp_seconds", &idle),
        Some(0.0),
        "an unused key shows as never used"
    );
    let start = metric(&text, "keygate_start_time_seconds", &[]).expect("start time");
    assert!(start > 0.0 && start <= used, "started at {start}, key used at {used}");
    kg.stop().await;
}

#[tokio::test]
async fn key_expiry_is_exported_per_client_and_fingerprint() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr)).await;
    let text = metrics(&kg).await;
    let key = [("client", "billing"), ("key", &*fingerprint(KEY))];
    assert_eq!(metric(&text, "keygate_key_expiry_timestamp_seconds", &key), Some(EXPIRES as f64), "{text}");
    let idle = [("client", "billing"), ("key", &*fingerprint(IDLE_KEY))];
    assert_eq!(metric(&text, "keygate_key_expiry_timestamp_seconds", &idle), None, "a key without expires has none");
    kg.stop().await;
}

#[tokio::test]
async fn failures_rate_limits_upstream_errors_and_reloads_are_counted() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr)).await;
    assert_eq!(get(&kg.url("/m"), &[]).await.status, 401);
    assert_eq!(get(&kg.url("/m"), &[("x-api-key", "adm-wrong")]).await.status, 401);
    assert_eq!(get(&kg.url("/m"), &[("x-api-key", LIMITED_KEY)]).await.status, 200);
    assert_eq!(get(&kg.url("/m"), &[("x-api-key", LIMITED_KEY)]).await.status, 429);
    assert_eq!(get(&kg.url("/dead"), &[("x-api-key", KEY)]).await.status, 502);
    let shared = kg.handle.as_ref().expect("running").shared.clone();
    assert!(keygate::reload::reload(&shared, Some(&kg.config_path)));
    std::fs::write(&kg.config_path, "[listen]\naddress = 7\n").expect("break the config");
    assert!(!keygate::reload::reload(&shared, Some(&kg.config_path)));

    let text = metrics(&kg).await;
    let one = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(metric(&text, name, labels), Some(1.0), "{name} {labels:?}\n{text}")
    };
    one("keygate_auth_failures_total", &[("reason", "missing_api_key")]);
    one("keygate_auth_failures_total", &[("reason", "invalid_api_key")]);
    one("keygate_rate_limited_total", &[("client", "limited")]);
    one("keygate_upstream_errors_total", &[("upstream", "dead"), ("kind", "connect")]);
    one("keygate_config_reloads_total", &[("result", "ok")]);
    one("keygate_config_reloads_total", &[("result", "error")]);
    one("keygate_requests_total", &[("client", "limited"), ("status", "429")]);
    kg.stop().await;
}

#[tokio::test]
async fn metrics_never_hold_a_plain_key() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr)).await;
    for key in [KEY, LIMITED_KEY, "adm-wrong-key"] {
        let _ = get(&kg.url("/m"), &[("x-api-key", key)]).await;
    }
    let text = metrics(&kg).await;
    assert!(text.contains(&fingerprint(KEY)), "keys are named by fingerprint");
    for key in [KEY, IDLE_KEY, LIMITED_KEY, "adm-wrong-key"] {
        assert!(!text.contains(key), "plain key {key} in /metrics");
        let full = hash(key);
        assert!(!text.contains(full.trim_start_matches("sha256:")), "a whole key hash in /metrics");
    }
    kg.stop().await;
}

fn rfc3339_in(d: Duration) -> String {
    let at = time::OffsetDateTime::now_utc() + d;
    at.replace_nanosecond(0).unwrap_or(at).format(&time::format_description::well_known::Rfc3339).expect("format")
}

#[test]
fn check_warns_about_keys_expiring_within_14_days() {
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    let soon = rfc3339_in(Duration::from_secs(3 * 24 * 3600 + 600));
    let later = rfc3339_in(Duration::from_secs(60 * 24 * 3600));
    let gone = "2020-01-01T00:00:00Z";
    let keys = [("adm-soon", soon.as_str()), ("adm-later", later.as_str()), ("adm-gone", gone)]
        .map(|(k, at)| format!("{{ hash = \"{}\", expires = \"{at}\" }}, ", hash(k)))
        .concat();
    let text = basic_config("127.0.0.1:9".parse().expect("addr"), "adm-check", "")
        .replace("keys = [{ hash", &format!("keys = [{keys}{{ hash"));
    std::fs::write(&path, text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "-c"])
        .arg(&path)
        .env_clear()
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "a warning is not an error: {stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 2, "the key expiring within 14 days and the expired one, not the later one: {stderr}");
    assert!(
        warnings[0].contains("clients.billing.keys[0].expires") && warnings[0].contains("expires in 3 days"),
        "{stderr}"
    );
    assert!(warnings[1].contains("clients.billing.keys[2].expires") && warnings[1].contains("has expired"), "{stderr}");
}

/// One keep-alive request on `tcp`; the response's status line.
async fn exchange(tcp: &mut tokio::net::TcpStream, key: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let req = format!("GET /parked HTTP/1.1\r\nHost: kg\r\nX-API-Key: {key}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    read_response(tcp).await.lines().next().unwrap_or_default().to_string()
}

/// Poll `/metrics` until `name` reads `want` (bounded).
async fn until_metric(kg: &Keygate, name: &str, want: f64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if metric(&metrics(kg).await, name, &[]) == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn idle_keep_alive_connection_is_parked_served_again_and_closed_by_the_drain() {
    let up = Upstream::start().await;
    let mut kg = Keygate::start(&config(up.addr)).await;
    let mut tcp = tokio::net::TcpStream::connect(kg.addr).await.expect("connect");
    let status = exchange(&mut tcp, KEY).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(until_metric(&kg, "keygate_connections", 1.0).await);
    assert!(until_metric(&kg, "keygate_parked_connections", 1.0).await, "the idle connection is parked");
    // The parked socket is served again, on the same connection.
    let status = exchange(&mut tcp, KEY).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(up.count(), 2);
    assert!(until_metric(&kg, "keygate_parked_connections", 1.0).await, "parked again");
    // A drain closes parked connections at once, well within the 30 s grace.
    let handle = kg.handle.take().expect("running");
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), handle.wait()).await.expect("drained at once");
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut rest));
    assert!(eof.await.is_ok(), "the parked connection is closed");
}

#[tokio::test]
async fn closed_connections_leave_the_connection_gauge() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr)).await;
    let mut a = tokio::net::TcpStream::connect(kg.addr).await.expect("connect");
    let mut b = tokio::net::TcpStream::connect(kg.addr).await.expect("connect");
    assert_eq!(exchange(&mut a, KEY).await, "HTTP/1.1 200 OK");
    assert_eq!(exchange(&mut b, KEY).await, "HTTP/1.1 200 OK");
    assert!(until_metric(&kg, "keygate_connections", 2.0).await);
    drop(a);
    assert!(until_metric(&kg, "keygate_connections", 1.0).await);
    drop(b);
    assert!(until_metric(&kg, "keygate_connections", 0.0).await);
    kg.stop().await;
}
