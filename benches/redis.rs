//! The Redis store's call path: one `Limiter::check()` against a real
//! `redis-server` on loopback (the script by SHA, one round trip), and the
//! same limiter with its breaker open (the local fallback, no round trip),
//! beside the local store for comparison. Skipped when `redis-server` is not
//! installed.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::config::{OnError, Rate, RedisSettings, Secret};
use keygate::limit::redis::{Link, RedisStore};
use keygate::limit::{Fallback, Limiter, LocalLimiter, Standby};

/// A budget the benchmark never exhausts, so every check takes the allow path.
const OPEN: Rate = Rate { per_second: 1e9, burst: 1_000_000_000 };

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

fn redis_server(port: u16) -> Option<Server> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Server(child))
}

fn shared(rt: &tokio::runtime::Runtime, port: u16, id: &str) -> (Arc<Link>, Limiter) {
    let settings = RedisSettings {
        url: Secret(format!("redis://127.0.0.1:{port}/0")),
        password: None,
        timeout: Duration::from_millis(50),
        on_error: OnError::Local,
        key_prefix: "bench".into(),
    };
    let link = rt.block_on(async { Link::start(&settings) }).expect("link");
    let store = RedisStore::new("bench", id, OPEN, true, None, 0);
    let limiter = Limiter::Shared(Fallback::new(link.clone(), store, None, Standby::new(OnError::Local, OPEN)));
    (link, limiter)
}

fn redis_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let port = free_port();
    let Some(_server) = redis_server(port) else {
        eprintln!("redis-server not installed: skipping the Redis benchmarks");
        return;
    };
    let (link, up) = shared(&rt, port, "up");
    let deadline = Instant::now() + Duration::from_secs(10);
    while link.is_open() {
        assert!(Instant::now() < deadline, "redis-server did not answer");
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
    }
    let (down_link, down) = shared(&rt, free_port(), "down");
    assert!(down_link.is_open());
    let local = Limiter::Local(LocalLimiter::new(OPEN));

    let mut g = c.benchmark_group("store_check");
    g.bench_function("local", |b| b.iter(|| black_box(rt.block_on(local.check()))));
    g.bench_function("redis_script", |b| b.iter(|| black_box(rt.block_on(up.check()))));
    g.bench_function("redis_breaker_open_fallback", |b| b.iter(|| black_box(rt.block_on(down.check()))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = redis_store
}
criterion_main!(benches);
