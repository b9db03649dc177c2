//! Client budgets: stores behind one interface. The request path calls
//! [`Limiter::check`] once and reads one [`Decision`]; it does not know which
//! store answered.
//!
//! - [`local`]: this instance's GCRA (governor), answered at once;
//! - [`quota`]: calendar quotas (UTC hour, day, month), counted in memory;
//! - [`redis`]: the GCRA and the quota in Redis, one script call per request,
//!   shared by every instance pointing at the same Redis;
//! - [`fallback`]: the Redis store wrapped with what answers when Redis
//!   cannot (this instance's GCRA, allow, or deny), behind a circuit breaker.

pub mod breaker;
pub mod fallback;
pub mod local;
pub mod quota;
pub mod redis;

use std::time::Duration;

pub use fallback::{Fallback, Standby};
pub use local::LocalLimiter;
pub use quota::{Counted, QuotaUse};

use crate::config::{Quota, Rate};
use crate::error::Reject;

/// Whether a request may pass, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The client's rate (GCRA) has no room now.
    RateLimited,
    /// The client has used its quota for this calendar period.
    QuotaExceeded,
    /// The shared store failed and `on_error = "deny"`.
    Unavailable,
}

/// The outcome of one check, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// `RateLimit-Limit`: the burst.
    pub limit: u32,
    /// `RateLimit-Remaining`: requests that would pass right now.
    pub remaining: u32,
    /// `RateLimit-Reset`: whole seconds until the budget is full again.
    pub reset: u64,
    /// `Retry-After` when refused: whole seconds, at least 1.
    pub retry_after: u64,
    /// The client's quota, when it has one (shown in `RateLimit-Policy`).
    pub quota: Option<QuotaUse>,
}

impl Decision {
    /// Whether the request may pass.
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allowed
    }

    /// The refusal to answer with, if the request may not pass.
    pub fn reject(&self) -> Option<Reject> {
        let retry_after = self.retry_after;
        match self.verdict {
            Verdict::Allowed => None,
            Verdict::RateLimited => Some(Reject::RateLimited { retry_after }),
            Verdict::QuotaExceeded => Some(Reject::QuotaExceeded { retry_after }),
            Verdict::Unavailable => Some(Reject::LimiterUnavailable),
        }
    }

    /// A request let through without counting (the store could not count it).
    pub fn uncounted(rate: Rate) -> Decision {
        let limit = rate.burst;
        Decision { verdict: Verdict::Allowed, limit, remaining: limit, reset: 0, retry_after: 0, quota: None }
    }

    /// A request refused because the store could not count it.
    pub fn unavailable(rate: Rate) -> Decision {
        Decision { verdict: Verdict::Unavailable, ..Decision::uncounted(rate) }
    }
}

/// A client's budget: its rate, and its quota if it has one.
#[derive(Debug)]
pub enum Limiter {
    /// This instance's GCRA alone: answers without waiting or allocating.
    Local(LocalLimiter),
    /// This instance's GCRA and an in-memory quota.
    Counted(Counted),
    /// Redis (the rate, the quota or both), with a fallback when it fails.
    Shared(Fallback),
}

impl Limiter {
    /// Take one request from the budget if it allows.
    pub async fn check(&self) -> Decision {
        match self {
            Limiter::Local(l) => l.check(),
            Limiter::Counted(c) => c.check(),
            // While Redis is out, the fallback answers at once: no future to box.
            Limiter::Shared(f) if f.is_open() => f.check_open(),
            // Boxed so the request's future stays small for the local stores.
            Limiter::Shared(f) => Box::pin(f.check()).await,
        }
    }

    /// The rate this limiter enforces.
    pub fn rate(&self) -> Rate {
        match self {
            Limiter::Local(l) => l.rate(),
            Limiter::Counted(c) => c.rate(),
            Limiter::Shared(f) => f.rate(),
        }
    }

    /// The quota this limiter enforces.
    pub fn quota(&self) -> Option<Quota> {
        match self {
            Limiter::Local(_) => None,
            Limiter::Counted(c) => Some(c.quota()),
            Limiter::Shared(f) => f.quota(),
        }
    }

    /// Whether the state is in this process (and worth keeping across a reload).
    pub fn is_local(&self) -> bool {
        !matches!(self, Limiter::Shared(_))
    }
}

/// Whole seconds in `d`, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
