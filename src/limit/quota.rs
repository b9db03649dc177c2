//! Quotas: the number of allowed requests a client may make per calendar
//! period (UTC hour, day or month), and the in-memory store that counts them
//! when no Redis is configured (each instance alone; a restart resets it).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use time::{Date, Month, OffsetDateTime};

use super::{Decision, LocalLimiter, Verdict};
use crate::config::{Period, Quota, Rate};

/// Where a client stands in its quota, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the period ends (and the quota is full again).
    pub reset: u64,
    /// The period's nominal length in seconds (`w=` in `RateLimit-Policy`).
    pub window: u64,
}

/// One calendar period: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// Whole seconds from `now` to the period's end, at least 1.
    pub fn left(&self, now: i64) -> u64 {
        u64::try_from(self.end - now).unwrap_or(0).max(1)
    }
}

impl Period {
    /// The nominal length in seconds (a month counts as 30 days).
    pub fn nominal(self) -> u64 {
        match self {
            Period::Hour => 3600,
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        }
    }

    /// The lower-case name, as in the configuration and in Redis keys.
    pub fn name(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The calendar period (UTC) that holds `now` (Unix seconds).
    pub fn window(self, now: i64) -> Window {
        let fixed = |len: i64| {
            let start = now.div_euclid(len) * len;
            Window { start, end: start + len }
        };
        match self {
            Period::Hour => fixed(3600),
            Period::Day => fixed(86_400),
            Period::Month => month(now).unwrap_or_else(|| fixed(86_400)),
        }
    }
}

fn month(now: i64) -> Option<Window> {
    let at = OffsetDateTime::from_unix_timestamp(now).ok()?;
    let first = |year: i32, month: Month| -> Option<i64> {
        Some(Date::from_calendar_date(year, month, 1).ok()?.midnight().assume_utc().unix_timestamp())
    };
    let (year, month) = (at.year(), at.month());
    let next_year = if month == Month::December { year.checked_add(1)? } else { year };
    Some(Window { start: first(year, month)?, end: first(next_year, month.next())? })
}

/// The time quotas read: the wall clock in UTC, moved by `offset` seconds
/// (0 except in tests that cross a period's end).
pub fn now(offset: i64) -> i64 {
    crate::keys::unix_now().saturating_add(offset)
}

/// Put the quota beside a rate decision: the `RateLimit-*` numbers describe
/// whichever of the two is nearer to running out.
pub fn combine(mut d: Decision, q: QuotaUse) -> Decision {
    d.quota = Some(q);
    if q.remaining < u64::from(d.remaining) || d.verdict == Verdict::QuotaExceeded {
        d.limit = u32::try_from(q.limit).unwrap_or(u32::MAX);
        d.remaining = u32::try_from(q.remaining).unwrap_or(u32::MAX);
        d.reset = q.reset;
    }
    d
}

/// `RateLimit-Policy` for a client with a quota: the quota and its period's
/// nominal length, e.g. `100000;w=86400;name="quota"`. The `RateLimit-*`
/// numbers describe whichever of rate and quota is nearer to running out.
pub fn policy(q: &QuotaUse) -> http::HeaderValue {
    let text = format!("{};w={};name=\"quota\"", q.limit, q.window);
    http::HeaderValue::from_str(&text).unwrap_or(http::HeaderValue::from_static("quota"))
}

/// The decision for a request beyond its quota.
pub fn exceeded(rate: Rate, q: QuotaUse) -> Decision {
    let refused = Decision { verdict: Verdict::QuotaExceeded, retry_after: q.reset, ..Decision::uncounted(rate) };
    combine(refused, q)
}

/// This instance's GCRA and an in-memory quota counter.
#[derive(Debug)]
pub struct Counted {
    rate: LocalLimiter,
    quota: Quota,
    clock_offset: i64,
    /// The start of the period `used` counts.
    period: AtomicI64,
    used: AtomicU64,
}

impl Counted {
    /// A fresh count for `quota` beside a fresh budget for `rate`.
    pub fn new(rate: Rate, quota: Quota, clock_offset: i64) -> Counted {
        Counted {
            rate: LocalLimiter::new(rate),
            quota,
            clock_offset,
            period: AtomicI64::new(i64::MIN),
            used: AtomicU64::new(0),
        }
    }

    /// The rate enforced.
    pub fn rate(&self) -> Rate {
        self.rate.rate()
    }

    /// The quota enforced.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Reserve one request in the quota, then take it from the rate; a
    /// request the rate refuses gives its reservation back (quotas count
    /// allowed requests only).
    pub fn check(&self) -> Decision {
        let now = now(self.clock_offset);
        let window = self.quota.per.window(now);
        self.roll(window.start);
        let limit = self.quota.requests;
        let used = self.used.fetch_add(1, Ordering::Relaxed);
        let usage = |used: u64| QuotaUse {
            limit,
            remaining: limit.saturating_sub(used),
            reset: window.left(now),
            window: self.quota.per.nominal(),
        };
        if used >= limit {
            self.used.fetch_sub(1, Ordering::Relaxed);
            return exceeded(self.rate(), usage(limit));
        }
        let d = self.rate.check();
        if !d.allowed() {
            self.used.fetch_sub(1, Ordering::Relaxed);
            return combine(d, usage(used));
        }
        combine(d, usage(used + 1))
    }

    /// Start counting afresh when a new period has begun.
    fn roll(&self, start: i64) {
        let seen = self.period.load(Ordering::Relaxed);
        if seen != start && self.period.compare_exchange(seen, start, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.used.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        crate::keys::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn calendar_periods_in_utc() {
        let cases = [
            (Period::Hour, "2026-12-01T21:30:00Z", "2026-12-01T21:00:00Z", "2026-12-01T22:00:00Z"),
            (Period::Day, "2026-12-01T23:59:59Z", "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"),
            (Period::Day, "2026-12-02T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"),
            (Period::Month, "2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            (Period::Month, "2028-02-10T00:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
            (Period::Month, "2027-02-28T12:00:00Z", "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"),
        ];
        for (per, now, start, end) in cases {
            assert_eq!(per.window(at(now)), Window { start: at(start), end: at(end) }, "{per:?} {now}");
        }
    }

    #[test]
    fn retry_after_runs_to_the_period_end() {
        let w = Period::Day.window(at("2026-12-01T23:59:30Z"));
        assert_eq!(w.left(at("2026-12-01T23:59:30Z")), 30);
        assert_eq!(w.left(w.end), 1, "never 0");
    }

    #[test]
    fn quota_counts_allowed_requests_only() {
        let c = Counted::new(Rate { per_second: 1e-6, burst: 2 }, Quota { requests: 3, per: Period::Day }, 0);
        assert!(c.check().allowed());
        assert!(c.check().allowed());
        let refused = c.check();
        assert_eq!(refused.verdict, Verdict::RateLimited, "the rate runs out first");
        assert_eq!(c.used.load(Ordering::Relaxed), 2, "a refused request is not counted");
    }

    #[test]
    fn quota_exhausted_refuses_until_the_period_ends() {
        let c = Counted::new(Rate { per_second: 1e6, burst: 100 }, Quota { requests: 2, per: Period::Hour }, 0);
        let first = c.check();
        assert_eq!((first.limit, first.remaining), (2, 1), "the quota is nearer to running out");
        assert!(c.check().allowed());
        let refused = c.check();
        assert_eq!(refused.verdict, Verdict::QuotaExceeded);
        assert!((1..=3600).contains(&refused.retry_after), "{refused:?}");
        assert_eq!(refused.quota.map(|q| q.remaining), Some(0));
        c.roll(i64::MAX);
        assert!(c.check().allowed(), "a new period starts afresh");
    }
}
