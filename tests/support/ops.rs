//! Helpers for tests that drive keygate's lifecycle: config files rewritten
//! in place or by rename, bounded polls, status probes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// A gateway with an admin listener, a generous limit and `clients` (id, key).
pub fn gateway(up: SocketAddr, grace: &str, clients: &[(&str, &str)]) -> String {
    let mut s = format!(
        r#"# managed by the lifecycle tests
[listen]
address = "127.0.0.1:0"
shutdown_grace = "{grace}"

[admin]
address = "127.0.0.1:0"

[auth]
# The tests' polls fail on purpose, all from 127.0.0.1.
max_failures_per_minute = 100000

[rate_limit]
per_second = 100000
burst = 100000

[upstreams.main]
servers = ["http://{up}"]

[[routes]]
name = "all"
path = "/"
upstream = "main"
"#
    );
    for (id, key) in clients {
        s += &format!(
            "\n[clients.{id}] # the {id} service\nroutes = [\"*\"]\nkeys = [\n  {{ hash = \"{}\" }}, # first key\n]\n",
            hash(key)
        );
    }
    s
}

/// Replace `path` the way deployment tools do: write a sibling, rename over.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// The status of GET `url` with `key`, or `None` if no answer came in 5 s.
pub async fn status(url: &str, key: &str) -> Option<u16> {
    status_via(&client(), url, key).await
}

pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// [`status`] through `client`, reading the body so a kept-alive connection is reused.
pub async fn status_via(client: &HttpClient, url: &str, key: &str) -> Option<u16> {
    use http_body_util::BodyExt;
    let req = http::Request::get(url).header("x-api-key", key).body(Default::default()).expect("request");
    let exchange = async {
        let res = client.request(req).await.ok()?;
        let status = res.status().as_u16();
        res.into_body().collect().await.ok()?;
        Some(status)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok()?
}

/// Poll until GET `url` with `key` answers `want`; the time it took, or `None` past `limit`.
pub async fn until_status(url: &str, key: &str, want: u16, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if status(url, key).await == Some(want) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Poll `check` every 10 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

pub fn serve(
    up: SocketAddr,
    grace: &str,
    clients: &[(&str, &str)],
) -> (tempfile::TempDir, std::path::PathBuf, Process) {
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    replace_file(&path, &gateway(up, grace, clients));
    let kg = Process::serve(Some(&path), &[]);
    (dir, path, kg)
}

pub async fn readyz(admin: SocketAddr) -> Option<u16> {
    let req = http::Request::get(format!("http://{admin}/readyz")).body(Default::default()).expect("request");
    let res = tokio::time::timeout(Duration::from_secs(2), client().request(req)).await.ok()?.ok()?;
    Some(res.status().as_u16())
}

/// Start `/slow/<ms>` over raw HTTP/1.1 keep-alive and wait until the upstream has it.
pub async fn slow_request(kg: &Process, up: &Upstream, ms: u64, key: &str) -> tokio::task::JoinHandle<String> {
    let before = up.count();
    let (addr, req) = (kg.addr, format!("GET /slow/{ms} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"));
    let task = tokio::spawn(async move { raw(addr, req.as_bytes()).await });
    assert!(eventually(Duration::from_secs(5), || up.count() > before).await, "the slow request reached the upstream");
    task
}
