//! Rate limits: a GCRA budget per client, and a throttle on failed
//! authentication per remote address.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

use crate::config::Rate;

/// The outcome of one rate-limit check, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `RateLimit-Limit`: the burst.
    pub limit: u32,
    /// `RateLimit-Remaining`: requests that would pass right now.
    pub remaining: u32,
    /// `RateLimit-Reset`: whole seconds until the budget is full again.
    pub reset: u64,
    /// `Retry-After` when refused: whole seconds, at least 1.
    pub retry_after: u64,
}

/// A client's budget. Behind a trait so a shared store (e.g. Redis) can
/// replace the in-process one without touching the request path.
pub trait Limiter: Send + Sync + fmt::Debug {
    /// Take one request from the budget if it allows.
    fn check(&self) -> Decision;
    /// The rate this limiter enforces.
    fn rate(&self) -> Rate;
}

type Gcra = governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// An in-process GCRA limiter (lock-free: one atomic compare-and-swap per check).
pub struct LocalLimiter {
    gcra: Gcra,
    rate: Rate,
    interval: Duration,
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter").field("rate", &self.rate).finish()
    }
}

impl LocalLimiter {
    /// A full budget for `rate`.
    pub fn new(rate: Rate) -> LocalLimiter {
        let interval = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        let quota =
            Quota::with_period(interval).unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX)).allow_burst(burst);
        let gcra = governor::RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>();
        LocalLimiter { gcra, rate, interval }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limiter for LocalLimiter {
    fn check(&self) -> Decision {
        let limit = self.rate.burst;
        match self.gcra.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                let used = limit - remaining;
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset: ceil_secs(self.interval.saturating_mul(used)),
                    retry_after: 0,
                }
            }
            Err(not_until) => {
                // The limiter's own clock: a new one would calibrate itself (tens of µs) on every refusal.
                let wait = not_until.wait_time_from(self.gcra.clock().now());
                // Once the next request may pass, the other `burst - 1` refill one interval each.
                let full = wait + self.interval.saturating_mul(limit.saturating_sub(1));
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset: ceil_secs(full),
                    retry_after: ceil_secs(wait).max(1),
                }
            }
        }
    }

    fn rate(&self) -> Rate {
        self.rate
    }
}

/// Counts failed authentications per remote address (IPv6 per /64) and
/// refuses an address that has failed too often, until it recovers.
#[derive(Debug)]
pub struct FailureThrottle {
    /// Theoretical arrival time of the next failure, per address, since `epoch`.
    tat: DashMap<IpAddr, Duration>,
    entries: AtomicUsize,
    epoch: Instant,
    cap: usize,
    /// When a full table was last pruned (nanoseconds since `epoch`), so a
    /// flood at the cap costs one sweep per second, not one per failure.
    last_prune: AtomicU64,
}

/// The most addresses tracked at once (about 6 MiB): beyond it, new addresses
/// are not tracked until pruning frees room.
pub const FAILURE_TABLE_CAP: usize = 100_000;

impl Default for FailureThrottle {
    fn default() -> Self {
        FailureThrottle::with_cap(FAILURE_TABLE_CAP)
    }
}

impl FailureThrottle {
    /// A throttle tracking at most `cap` addresses.
    pub fn with_cap(cap: usize) -> FailureThrottle {
        FailureThrottle {
            tat: DashMap::new(),
            entries: AtomicUsize::new(0),
            epoch: Instant::now(),
            cap,
            last_prune: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// If `addr` may not fail again now (it has used its `per_minute`
    /// failures), the whole seconds until it may.
    pub fn blocked(&self, addr: IpAddr, per_minute: u32) -> Option<u64> {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let tat = *self.tat.get(&bucket(addr))?;
        // GCRA: one more failure is allowed while the backlog leaves room for it.
        let room = WINDOW - interval(per_minute);
        let ahead = tat.saturating_sub(self.now());
        (ahead > room).then(|| ceil_secs(ahead - room).max(1))
    }

    /// Count one failed authentication from `addr`.
    pub fn record_failure(&self, addr: IpAddr, per_minute: u32) {
        let interval = interval(per_minute);
        let now = self.now();
        let key = bucket(addr);
        if let Some(mut tat) = self.tat.get_mut(&key) {
            *tat = (*tat).max(now) + interval;
            return;
        }
        if self.entries.load(Ordering::Relaxed) >= self.cap {
            self.prune_at_cap(now);
            if self.entries.load(Ordering::Relaxed) >= self.cap {
                return;
            }
        }
        if self.tat.insert(key, now + interval).is_none() {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forget addresses that have fully recovered.
    pub fn prune(&self) {
        let now = self.now();
        self.last_prune.store(nanos(now), Ordering::Relaxed);
        self.tat.retain(|_, tat| *tat > now);
        self.entries.store(self.tat.len(), Ordering::Relaxed);
    }

    /// Prune a full table, at most once a second.
    fn prune_at_cap(&self, now: Duration) {
        let last = self.last_prune.load(Ordering::Relaxed);
        let due = nanos(now).saturating_sub(last) >= 1_000_000_000;
        let won =
            due && self.last_prune.compare_exchange(last, nanos(now), Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if won {
            self.prune();
        }
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The throttle's window: `per_minute` failures per this long.
const WINDOW: Duration = Duration::from_secs(60);

fn interval(per_minute: u32) -> Duration {
    WINDOW / per_minute.max(1)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// IPv4 per address; IPv6 per /64, the block one host usually holds.
fn bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn burst_then_refused() {
        let l = LocalLimiter::new(Rate { per_second: 1.0, burst: 3 });
        let remaining: Vec<u32> = (0..3).map(|_| l.check().remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let refused = l.check();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 1);
    }

    #[test]
    fn throttle_trips_at_limit() {
        let t = FailureThrottle::default();
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        for _ in 0..4 {
            assert_eq!(t.blocked(a, 5), None);
            t.record_failure(a, 5);
        }
        assert_eq!(t.blocked(a, 5), None);
        t.record_failure(a, 5);
        assert!(t.blocked(a, 5).is_some_and(|s| (1..=12).contains(&s)));
        assert_eq!(t.blocked(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 5), None);
    }

    #[test]
    fn table_stays_within_cap() {
        let t = FailureThrottle::with_cap(1000);
        for i in 0..50_000u32 {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(i)), 20);
        }
        assert!(t.len() <= 1000);
    }

    #[test]
    fn retry_after_and_reset_round_up() {
        let l = LocalLimiter::new(Rate { per_second: 0.25, burst: 2 });
        let first = l.check();
        assert_eq!((first.remaining, first.reset), (1, 4));
        assert_eq!(l.check().reset, 8);
        let refused = l.check();
        assert!(!refused.allowed);
        assert!((3..=4).contains(&refused.retry_after), "{refused:?}");
        assert!((7..=8).contains(&refused.reset), "{refused:?}");
    }

    #[test]
    fn ipv6_flood_stays_within_cap() {
        let t = FailureThrottle::with_cap(500);
        for i in 0..20_000u16 {
            let a: IpAddr = IpAddr::from([0x2001, 0xdb8, i, 0, 0, 0, 0, 1]);
            t.record_failure(a, 20);
            assert!(t.blocked(a, 20).is_none());
        }
        assert!(t.len() <= 500);
        assert!(t.tat.len() <= 500);
    }

    #[test]
    fn pruning_frees_room_for_new_addresses() {
        let t = FailureThrottle::with_cap(10);
        for i in 0..10u32 {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(i)), u32::MAX);
        }
        let start = Instant::now();
        while t.now() <= *t.tat.iter().map(|e| *e.value()).max().get_or_insert_default() {
            assert!(start.elapsed() < Duration::from_secs(1));
            std::hint::spin_loop();
        }
        t.prune();
        assert!(t.is_empty());
        let a = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
        for _ in 0..2 {
            t.record_failure(a, 2);
        }
        assert!(t.blocked(a, 2).is_some());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
    }
}
