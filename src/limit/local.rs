//! The in-process store: a GCRA budget per client that only this instance
//! counts (lock-free: one atomic compare-and-swap per check).

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

use super::{ceil_secs, Decision, Verdict};
use crate::config::Rate;

type Gcra = governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// An in-process GCRA limiter.
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

    /// The rate this limiter enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Take one request from the budget if it allows.
    pub fn check(&self) -> Decision {
        let limit = self.rate.burst;
        match self.gcra.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                let used = limit - remaining;
                Decision {
                    verdict: Verdict::Allowed,
                    limit,
                    remaining,
                    reset: ceil_secs(self.interval.saturating_mul(used)),
                    retry_after: 0,
                    quota: None,
                }
            }
            Err(not_until) => {
                // The limiter's own clock: a new one would calibrate itself (tens of µs) on every refusal.
                let wait = not_until.wait_time_from(self.gcra.clock().now());
                // Once the next request may pass, the other `burst - 1` refill one interval each.
                let full = wait + self.interval.saturating_mul(limit.saturating_sub(1));
                Decision {
                    verdict: Verdict::RateLimited,
                    limit,
                    remaining: 0,
                    reset: ceil_secs(full),
                    retry_after: ceil_secs(wait).max(1),
                    quota: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused() {
        let l = LocalLimiter::new(Rate { per_second: 1.0, burst: 3 });
        let remaining: Vec<u32> = (0..3).map(|_| l.check().remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let refused = l.check();
        assert_eq!(refused.verdict, Verdict::RateLimited);
        assert_eq!(refused.retry_after, 1);
    }

    #[test]
    fn retry_after_and_reset_round_up() {
        let l = LocalLimiter::new(Rate { per_second: 0.25, burst: 2 });
        let first = l.check();
        assert_eq!((first.remaining, first.reset), (1, 4));
        assert_eq!(l.check().reset, 8);
        let refused = l.check();
        assert!(!refused.allowed());
        assert!((3..=4).contains(&refused.retry_after), "{refused:?}");
        assert!((7..=8).contains(&refused.reset), "{refused:?}");
    }
}
