//! Test support: a recording upstream, keygate on port 0 (in process or as
//! the real binary), and small clients. Every server binds 127.0.0.1:0.
#![allow(dead_code, unused_imports)]

pub mod failover;
pub mod flood;
pub mod grpc;
pub mod grpc_client;
pub mod jwks;
pub mod ops;
#[path = "redis.rs"]
pub mod redis_server;
pub mod scripted;
pub mod tls;
pub mod upstream;
pub mod ws;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use upstream::{Received, Upstream};

/// A plain key and its `sha256:` hash line.
pub fn hash(key: &str) -> String {
    keygate::keys::format_hash(&keygate::keys::digest(key.as_bytes()))
}

/// A temporary folder removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// keygate running inside the test process.
pub struct Keygate {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub handle: Option<keygate::app::Handle>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Keygate {
    /// Start keygate with `toml` (its `[listen]` address should be 127.0.0.1:0).
    pub async fn start(toml: &str) -> Keygate {
        Keygate::start_with_env(toml, &BTreeMap::new()).await
    }

    /// Start keygate with `toml` and the given environment.
    pub async fn start_with_env(toml: &str, env: &BTreeMap<String, String>) -> Keygate {
        let dir = tempdir();
        let config_path = dir.path().join("keygate.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let config = keygate::config::load(Some(&config_path), env).unwrap_or_else(|e| panic!("config: {e}"));
        let handle = keygate::app::start(config).await.expect("start keygate");
        Keygate { addr: handle.addr, admin: handle.admin, handle: Some(handle), dir, config_path }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stop and wait for the drain.
    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.wait().await;
        }
    }
}

/// A gateway config: listen on 127.0.0.1:0, upstream `main` over `servers`
/// (with `upstream_extra` lines in its table), route `all` (`/`) to it; `rest`
/// (clients, other tables) is appended.
pub fn gateway_config(servers: &[SocketAddr], upstream_extra: &str, rest: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"http://{s}\"")).collect();
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.main]
servers = [{servers}]
{upstream_extra}

[[routes]]
name = "all"
path = "/"
upstream = "main"

{rest}
"#,
        servers = servers.join(", ")
    )
}

/// The table of client `billing`, allowed on every route, holding `key`.
pub fn billing_client(key: &str) -> String {
    format!("[clients.billing]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\" }}]\n", hash(key))
}

/// A minimal gateway config in front of `upstream` with one client `billing`
/// holding `key`, allowed on every route; `extra` is appended.
pub fn basic_config(upstream: SocketAddr, key: &str, extra: &str) -> String {
    gateway_config(&[upstream], "", &format!("{}{extra}", billing_client(key)))
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Send `req` with a 10 s bound and read the whole response.
pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let fut = client().request(req);
    let res = tokio::time::timeout(Duration::from_secs(10), fut).await.expect("response in time").expect("response");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// GET `url` with `headers`.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::new())).expect("request")).await
}

/// Write `raw` to `addr` and read until the server closes or 5 s pass.
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The keygate binary running as a child process; killed on drop.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Run `keygate serve -c config` with `env` (and nothing else of the test's
    /// environment but PATH) and wait for its startup summary.
    pub fn serve(config: Option<&Path>, env: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.arg("serve");
        if let Some(c) = config {
            cmd.arg("-c").arg(c);
        }
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn keygate");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        pump(child.stdout.take(), stdout.clone(), Some(tx));
        pump(child.stderr.take(), stderr.clone(), None);
        let (addr, admin) = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("keygate did not start: {}", stderr.lock().map(|s| s.clone()).unwrap_or_default())
        });
        Process { child, addr, admin, stdout, stderr }
    }

    /// Everything printed so far, stdout then stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout.lock().expect("lock"), self.stderr.lock().expect("lock"))
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(ok.success());
    }

    /// Wait for exit (bounded) and return the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ready = std::sync::mpsc::Sender<(SocketAddr, Option<SocketAddr>)>;

fn pump(stream: Option<impl std::io::Read + Send + 'static>, sink: Arc<Mutex<String>>, ready: Option<Ready>) {
    let Some(stream) = stream else { return };
    std::thread::spawn(move || {
        let mut addr = None;
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                addr = rest.split("://").nth(1).and_then(|a| a.parse().ok());
            }
            if let (Some(rest), Some(tx), Some(a)) = (line.trim().strip_prefix("admin:"), ready.as_ref(), addr) {
                let _ = tx.send((a, rest.trim().parse().ok()));
            }
            if let (Some((a, admin)), Some(tx)) = (json_summary(&line), ready.as_ref()) {
                let _ = tx.send((a, admin));
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
}

/// The addresses in the JSON start-up summary (`KEYGATE_LOG_FORMAT=json`).
fn json_summary(line: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if v["target"] != "keygate::startup" {
        return None;
    }
    let addr = v["listen"].as_str()?.split("://").nth(1)?.parse().ok()?;
    Some((addr, v["admin"].as_str().and_then(|a| a.parse().ok())))
}

/// Read one response head and its `Content-Length` body from a kept-alive connection.
pub async fn read_response(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let n = tokio::time::timeout(left, tcp.read(&mut buf)).await.expect("response in time").expect("read");
        assert!(n > 0, "connection closed before a full response: {text:?}");
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
}
