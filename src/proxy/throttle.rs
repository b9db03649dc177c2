//! The failed-authentication throttle: counts failed authentications per
//! client address and answers an address that has failed too often with 429
//! instead of 401. It is consulted only after a failed key lookup, so a valid
//! credential always passes it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Counts failed authentications per address (IPv6 per /64) with a GCRA:
/// `per_minute` failures in any 60 seconds.
#[derive(Debug)]
pub struct FailureThrottle {
    /// Theoretical arrival time of the next failure, per address, since `epoch`.
    tat: DashMap<IpAddr, Duration>,
    /// Addresses tracked now (`keygate_failure_throttle_entries`).
    entries: Gauge<i64, AtomicI64>,
    /// Addresses evicted at the cap (`keygate_failure_throttle_evictions_total`).
    evictions: Counter<u64, AtomicU64>,
    epoch: Instant,
    cap: usize,
    /// Held while evicting, so concurrent failures at the cap sweep once.
    evicting: Mutex<()>,
    /// Set from the first eviction until the table is half empty again: the
    /// episode is logged once, not once per eviction.
    episode: AtomicBool,
}

/// The most addresses tracked at once (about 6 MiB); at the cap the oldest
/// entries are evicted to make room.
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
            entries: Gauge::default(),
            evictions: Counter::default(),
            epoch: Instant::now(),
            cap: cap.max(1),
            evicting: Mutex::new(()),
            episode: AtomicBool::new(false),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// If `addr` may not fail again now (it has used its `per_minute`
    /// failures), the whole seconds until it may.
    pub fn blocked(&self, addr: IpAddr, per_minute: u32) -> Option<u64> {
        if self.entries.get() == 0 {
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
        if self.tat.insert(key, now + interval).is_none() && self.entries.inc() >= self.cap as i64 {
            self.evict(now);
        }
    }

    /// Make room at the cap: forget recovered addresses, then the oldest
    /// eighth of the table — the entries with the least backlog, so blocked
    /// addresses are the last to go. One sweep per eighth of the cap keeps
    /// a flood from very many addresses at a constant cost per failure.
    fn evict(&self, now: Duration) {
        let Ok(_sweeping) = self.evicting.try_lock() else { return };
        if self.len() < self.cap {
            return;
        }
        let target = self.cap - self.cap.div_ceil(8);
        let mut tats: Vec<Duration> = self.tat.iter().map(|e| *e.value()).filter(|t| *t > now).collect();
        let threshold = match tats.len().checked_sub(target + 1) {
            Some(nth) => *tats.select_nth_unstable(nth).1,
            None => now,
        };
        let before = self.tat.len();
        self.tat.retain(|_, tat| *tat > threshold);
        let after = self.tat.len();
        self.entries.set(after as i64);
        let evicted = tats.iter().filter(|t| **t <= threshold).count().min(before - after);
        self.evictions.inc_by(evicted as u64);
        if evicted > 0 && !self.episode.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: "keygate::audit", cap = self.cap, evicted,
                "failed-authentication throttle full: evicting the oldest addresses");
        }
    }

    /// Forget addresses that have fully recovered.
    pub fn prune(&self) {
        let now = self.now();
        self.tat.retain(|_, tat| *tat > now);
        let len = self.tat.len();
        self.entries.set(len as i64);
        if len <= self.cap / 2 && self.episode.swap(false, Ordering::Relaxed) {
            tracing::info!(target: "keygate::audit", entries = len, "failed-authentication throttle no longer full");
        }
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        usize::try_from(self.entries.get()).unwrap_or(0)
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Addresses evicted at the cap since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.get()
    }

    /// The table-size gauge and the eviction counter, to register in `/metrics`.
    pub fn metrics(&self) -> (Gauge<i64, AtomicI64>, Counter<u64, AtomicU64>) {
        (self.entries.clone(), self.evictions.clone())
    }
}

/// The throttle's window: `per_minute` failures per this long.
const WINDOW: Duration = Duration::from_secs(60);

fn interval(per_minute: u32) -> Duration {
    WINDOW / per_minute.max(1)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// IPv4 per address; IPv6 per /64, the block one host usually holds.
fn bucket(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::from([a, b, c, d, 0, 0, 0, 0])
        }
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
        assert_eq!(t.tat.len(), t.len());
    }

    #[test]
    fn new_addresses_are_tracked_at_the_cap() {
        let t = FailureThrottle::with_cap(100);
        for i in 0..10_000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(i));
            t.record_failure(a, 1);
            assert!(t.blocked(a, 1).is_some(), "address {i} is throttled although the table is full");
        }
        assert!(t.evictions() >= 9_900, "{}", t.evictions());
    }

    #[test]
    fn eviction_takes_the_oldest_and_keeps_the_blocked() {
        let t = FailureThrottle::with_cap(8);
        let blocked = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        for _ in 0..3 {
            t.record_failure(blocked, 3);
        }
        for i in 1..=20u32 {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(i)), 3);
        }
        assert!(t.blocked(blocked, 3).is_some(), "the address with the largest backlog stays");
        assert!(!t.tat.contains_key(&IpAddr::V4(Ipv4Addr::from(1))), "the oldest single failure went first");
        assert!(t.tat.contains_key(&IpAddr::V4(Ipv4Addr::from(20))), "the newest stays");
        assert!(t.len() <= 8);
    }

    #[test]
    fn an_eviction_episode_starts_once_and_ends_when_half_empty() {
        let t = FailureThrottle::with_cap(8);
        for i in 0..40u32 {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(i)), 1);
            assert_eq!(t.episode.load(Ordering::Relaxed), i >= 8, "after address {i}");
        }
        t.prune();
        assert!(t.episode.load(Ordering::Relaxed), "still full: the episode goes on");
        // As if every address had recovered.
        t.tat.retain(|ip, _| *ip == IpAddr::V4(Ipv4Addr::from(39)));
        t.prune();
        assert!(!t.episode.load(Ordering::Relaxed), "the table is empty: the episode is over");
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
    fn pruning_forgets_recovered_addresses() {
        let t = FailureThrottle::with_cap(10);
        for i in 0..5u32 {
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
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(bucket(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
