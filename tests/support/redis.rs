//! A real `redis-server` on a free loopback port, persistence off, killed by
//! PID on drop; and keygate started with its quota clock moved.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{tempdir, Keygate};

/// A `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    /// `--tls-*` arguments: the server speaks only TLS on `port`.
    tls: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start one on a free port, without a password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// Start one that requires `password` (`requirepass`).
    pub fn start_with(password: Option<&str>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let password = password.map(str::to_string);
        let mut server = RedisServer { port, password, tls: Vec::new(), child: None, dir: tempdir() };
        server.restart();
        server
    }

    /// Start one that speaks only TLS, with `cert` and `key` (clients are not asked for certificates).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let tls = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut server = RedisServer { port, password: None, tls, child: None, dir: tempdir() };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Start (again) on the same port, empty; wait until it answers PING.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        cmd.arg("--dir").arg(self.dir.path());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.tls);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill it (SIGKILL by PID) and wait until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it answers PING (with a password, NOAUTH counts as answering).
    fn answers(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
        let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
        if !self.tls.is_empty() {
            return true;
        }
        let mut buf = [0u8; 64];
        tcp.write_all(b"PING\r\n").is_ok() && tcp.read(&mut buf).is_ok_and(|n| n > 0)
    }

    /// A synchronous client connection (authenticated if needed).
    pub fn connection(&self) -> redis::Connection {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => self.url(),
        };
        redis::Client::open(url).and_then(|c| c.get_connection()).expect("redis connection")
    }

    /// Every key that matches `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS").arg(pattern).query(&mut self.connection()).expect("KEYS")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// keygate in process, its quota clock moved by `offset` seconds.
pub async fn start_with_clock(toml: &str, env: &BTreeMap<String, String>, offset: i64) -> Keygate {
    let dir = tempdir();
    let config_path = dir.path().join("keygate.toml");
    std::fs::write(&config_path, toml).expect("write config");
    let mut config = keygate::config::load(Some(&config_path), env).unwrap_or_else(|e| panic!("config: {e}"));
    config.limits.clock_offset = offset;
    let handle = keygate::app::start(config).await.expect("start keygate");
    Keygate { addr: handle.addr, admin: handle.admin, handle: Some(handle), dir, config_path }
}
