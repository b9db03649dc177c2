//! The throttle on failed authentication per remote address. Client
//! budgets (local, Redis, quotas) live in [`crate::limit`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::limit::ceil_secs;
pub use crate::limit::{Decision, Limiter, LocalLimiter};

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
