//! One server's health: passive ejection after consecutive failures, the
//! verdict of active checks, and requests in flight. Lock-free atomics, read
//! on every pick; shared across reloads while the server stays configured.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::HealthPolicy;

/// Why a server stopped getting traffic, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `max_fails` consecutive connect or transport failures.
    Passive,
    /// `unhealthy` consecutive failed active checks.
    HealthCheck,
}

impl Cause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Passive => "passive",
            Cause::HealthCheck => "health_check",
        }
    }
}

/// Metric handles of one server, set once published.
#[derive(Debug)]
pub struct ServerMetrics {
    pub up: Gauge<i64, AtomicI64>,
    pub ejected_passive: Counter,
    pub ejected_checks: Counter,
}

/// The health of one server.
#[derive(Debug, Default)]
pub struct Health {
    /// Consecutive connect or transport failures.
    fails: AtomicU32,
    /// Until when (ms on [`clock_ms`]) the server is skipped; 0: not ejected.
    ejected_until: AtomicU64,
    /// Set by active checks.
    down: AtomicBool,
    /// Active checks in a row that passed (> 0) or failed (< 0).
    streak: AtomicI64,
    /// Times this server was taken out of rotation.
    ejections: AtomicU64,
    /// Requests in flight, counted for `least_requests` only.
    in_flight: AtomicU32,
    pub(super) metrics: OnceLock<ServerMetrics>,
}

/// Milliseconds since the first call, never 0 (0 means "not ejected").
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let ms = START.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

impl Health {
    /// Whether a request may go to this server now. Once an ejection is
    /// over, the first caller re-arms it and sends the one trial request:
    /// its success clears the ejection, its failure keeps it.
    pub fn usable(&self, fail_timeout: Duration) -> bool {
        if self.down.load(Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Relaxed);
        if until == 0 {
            return true;
        }
        let now = clock_ms();
        if now < until {
            return false;
        }
        let rearmed = now.saturating_add(millis(fail_timeout));
        self.ejected_until.compare_exchange(until, rearmed, Relaxed, Relaxed).is_ok()
    }

    /// Whether this server takes traffic (not ejected, not checked down).
    pub fn is_up(&self) -> bool {
        !self.down.load(Relaxed) && self.ejected_until.load(Relaxed) == 0
    }

    /// A response head arrived: the failure streak ends.
    pub fn success(&self) {
        // Loads first: a shared cache line is written only on a change.
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Relaxed);
        }
        if self.ejected_until.load(Relaxed) != 0 {
            self.ejected_until.store(0, Relaxed);
            self.publish();
        }
    }

    /// A connect or transport failure; returns true when it ejected the server.
    pub fn failure(&self, policy: &HealthPolicy) -> bool {
        if policy.max_fails == 0 {
            return false;
        }
        let fails = self.fails.fetch_add(1, Relaxed).saturating_add(1);
        if fails < policy.max_fails {
            return false;
        }
        let until = clock_ms().saturating_add(millis(policy.fail_timeout));
        // A failed trial re-arms the ejection without counting a new one.
        let was = self.ejected_until.swap(until, Relaxed);
        if was != 0 {
            return false;
        }
        self.count_ejection(Cause::Passive);
        true
    }

    /// Record an active check's result; returns the new state when it changed.
    pub fn checked(&self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let streak = match passed {
            true => self.streak.load(Relaxed).max(0) + 1,
            false => self.streak.load(Relaxed).min(0) - 1,
        };
        self.streak.store(streak, Relaxed);
        let down = self.down.load(Relaxed);
        if down && passed && streak >= i64::from(healthy) {
            self.down.store(false, Relaxed);
            self.publish();
            return Some(true);
        }
        if !down && !passed && -streak >= i64::from(unhealthy) {
            self.down.store(true, Relaxed);
            self.count_ejection(Cause::HealthCheck);
            return Some(false);
        }
        None
    }

    /// Forget the checks' verdict (the upstream no longer checks).
    pub fn clear_checks(&self) {
        self.streak.store(0, Relaxed);
        if self.down.swap(false, Relaxed) {
            self.publish();
        }
    }

    fn count_ejection(&self, cause: Cause) {
        self.ejections.fetch_add(1, Relaxed);
        if let Some(m) = self.metrics.get() {
            match cause {
                Cause::Passive => m.ejected_passive.inc(),
                Cause::HealthCheck => m.ejected_checks.inc(),
            };
        }
        self.publish();
    }

    /// Set the `up` gauge from the state.
    pub(super) fn publish(&self) {
        if let Some(m) = self.metrics.get() {
            m.up.set(i64::from(self.is_up()));
        }
    }

    /// What `/upstreams` shows.
    pub fn report(&self) -> Report {
        let until = self.ejected_until.load(Relaxed);
        Report {
            state: match (self.down.load(Relaxed), until) {
                (true, _) => "down",
                (false, 0) => "up",
                (false, _) => "ejected",
            },
            consecutive_failures: self.fails.load(Relaxed),
            ejected_for_ms: until.saturating_sub(clock_ms()),
            ejections: self.ejections.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
        }
    }

    /// Count a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }
}

/// A server's state as `/upstreams` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// `up`, `ejected` (passive) or `down` (active checks).
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// Time left before the trial request of an ejected server.
    pub ejected_for_ms: u64,
    pub ejections: u64,
    pub in_flight: u32,
}

/// One request in flight to a server; counted down on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Health>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_fails: u32, fail_timeout_ms: u64) -> HealthPolicy {
        HealthPolicy { max_fails, fail_timeout: Duration::from_millis(fail_timeout_ms), ..HealthPolicy::default() }
    }

    #[test]
    fn ejected_after_max_fails_consecutive_failures() {
        let h = Health::default();
        let p = policy(3, 60_000);
        assert!(!h.failure(&p));
        assert!(!h.failure(&p));
        assert!(h.usable(p.fail_timeout));
        assert!(h.failure(&p));
        assert!(!h.usable(p.fail_timeout));
        assert_eq!(h.report().state, "ejected");
        assert_eq!(h.report().ejections, 1);
    }

    #[test]
    fn a_success_ends_the_streak() {
        let h = Health::default();
        let p = policy(2, 60_000);
        assert!(!h.failure(&p));
        h.success();
        assert!(!h.failure(&p));
        assert!(h.is_up());
    }

    #[test]
    fn max_fails_zero_never_ejects() {
        let h = Health::default();
        let p = policy(0, 60_000);
        for _ in 0..100 {
            assert!(!h.failure(&p));
        }
        assert!(h.usable(p.fail_timeout));
    }

    #[test]
    fn one_trial_after_fail_timeout_then_back_or_ejected_again() {
        let h = Health::default();
        let p = policy(1, 1);
        assert!(h.failure(&p));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.usable(Duration::from_secs(60)) {
            assert!(Instant::now() < deadline, "the ejection never ended");
        }
        // The trial is claimed: nobody else gets the server meanwhile.
        assert!(!h.usable(Duration::from_secs(60)));
        assert!(!h.failure(&p), "a failed trial is not a new ejection");
        assert_eq!(h.report().ejections, 1);
        assert!(!h.is_up());
        h.success();
        assert!(h.is_up() && h.usable(p.fail_timeout));
    }

    #[test]
    fn checks_take_a_server_down_and_back_at_their_thresholds() {
        let h = Health::default();
        assert_eq!(h.checked(false, 2, 3), None);
        assert_eq!(h.checked(false, 2, 3), None);
        assert_eq!(h.checked(true, 2, 3), None, "a pass breaks the failing streak");
        assert_eq!(h.checked(false, 2, 3), None);
        assert_eq!(h.checked(false, 2, 3), None);
        assert_eq!(h.checked(false, 2, 3), Some(false));
        assert!(!h.usable(Duration::from_secs(1)));
        assert_eq!(h.report().state, "down");
        assert_eq!(h.checked(true, 2, 3), None);
        assert_eq!(h.checked(true, 2, 3), Some(true));
        assert!(h.usable(Duration::from_secs(1)));
    }

    #[test]
    fn clearing_checks_brings_a_down_server_back() {
        let h = Health::default();
        assert_eq!(h.checked(false, 1, 1), Some(false));
        h.clear_checks();
        assert!(h.is_up());
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let h = Arc::new(Health::default());
        let a = h.start();
        let b = h.start();
        assert_eq!(h.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(h.in_flight(), 0);
    }
}
