//! The rate-limit check on the request path: one client's GCRA limiter
//! (single-threaded, two threads on one hot client, two threads over many
//! clients), and the failed-auth throttle lookup every request makes.
//!
//! The check is called as the request path calls it: `Limiter::check()`, a
//! future that is ready at once for the local stores, polled once here.
//!
//! The two-thread cases report wall time per check on each thread: both
//! threads run `iters` checks at once, so equal numbers mean no contention.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use keygate::config::Rate;
use keygate::limit::{Decision, Limiter, LocalLimiter};
use keygate::proxy::throttle::FailureThrottle;

/// A budget the benchmark never exhausts, so every check takes the allow path.
const OPEN: Rate = Rate { per_second: 1e9, burst: 1_000_000_000 };
const CLIENTS: usize = 1000;

/// Run `work(thread, iters)` on two threads at once; the wall time taken.
fn two_threads(iters: u64, work: impl Fn(usize, u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let work = &work;
            s.spawn(move || work(t, iters));
        }
    });
    start.elapsed()
}

fn local(rate: Rate) -> Arc<Limiter> {
    Arc::new(Limiter::Local(LocalLimiter::new(rate)))
}

/// One check, as the request path makes it (the local future is ready at once).
fn check(l: &Limiter) -> Option<Decision> {
    l.check().now_or_never()
}

fn limiter(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter_check");
    let one = local(OPEN);
    g.bench_function("single_thread", |b| b.iter(|| black_box(check(&one))));

    let refused = local(Rate { per_second: 1e-6, burst: 1 });
    check(&refused);
    g.bench_function("single_thread_refused", |b| b.iter(|| black_box(check(&refused))));

    g.bench_function("two_threads_one_hot_client", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |_, n| {
                for _ in 0..n {
                    black_box(check(&one));
                }
            })
        })
    });

    let many: Vec<Arc<Limiter>> = (0..CLIENTS).map(|_| local(OPEN)).collect();
    g.bench_function("two_threads_many_clients", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |t, n| {
                // The threads walk the clients from opposite ends, as unrelated callers would.
                for i in 0..n as usize {
                    let at = if t == 0 { i % CLIENTS } else { CLIENTS - 1 - i % CLIENTS };
                    black_box(check(&many[at]));
                }
            })
        })
    });
    g.finish();
}

fn throttle(c: &mut Criterion) {
    let mut g = c.benchmark_group("failure_throttle");
    let empty = FailureThrottle::default();
    let caller = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    g.bench_function("blocked_empty_table", |b| b.iter(|| black_box(empty.blocked(black_box(caller), 20))));
    let busy = FailureThrottle::default();
    for i in 0..10_000u32 {
        busy.record_failure(IpAddr::V4(Ipv4Addr::from(i)), 20);
    }
    g.bench_function("blocked_10k_addresses", |b| b.iter(|| black_box(busy.blocked(black_box(caller), 20))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = limiter, throttle
}
criterion_main!(benches);
