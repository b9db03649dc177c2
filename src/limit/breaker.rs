//! A circuit breaker for the shared store: after a few consecutive failures
//! requests stop calling it (and go straight to the fallback) until a
//! background probe finds it answering again.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Consecutive failures that open the breaker.
pub const TRIP_AFTER: u32 = 3;

/// Open or closed, and the failures counted while closed.
#[derive(Debug)]
pub struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
}

impl Breaker {
    /// An open breaker: nothing is known to answer until the first probe succeeds.
    pub fn open() -> Breaker {
        Breaker { failures: AtomicU32::new(0), open: AtomicBool::new(true) }
    }

    /// Whether requests should skip the store.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// The store answered; `true` if this closed the breaker.
    pub fn success(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.open.load(Ordering::Relaxed) && self.open.swap(false, Ordering::Relaxed)
    }

    /// The store failed; `true` if this opened the breaker.
    pub fn failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        n >= TRIP_AFTER && self.trip()
    }

    /// A call succeeded while closed: the failures in a row start again
    /// (read first, so the common case writes nothing shared).
    pub fn reset_failures(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Open at once (the connection is gone); `true` if it was closed.
    pub fn trip(&self) -> bool {
        !self.open.swap(true, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_consecutive_failures_only() {
        let b = Breaker::open();
        assert!(b.success(), "the first success closes it");
        assert!(!b.success(), "closing twice reports once");
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(!b.success());
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(!b.is_open(), "a success in between starts the count again");
        assert!(b.failure(), "the third in a row opens it");
        assert!(b.is_open());
        assert!(!b.failure(), "opening twice reports once");
        assert!(b.success());
        assert!(!b.is_open());
    }

    #[test]
    fn trip_opens_at_once() {
        let b = Breaker::open();
        b.success();
        assert!(b.trip());
        assert!(!b.trip());
        assert!(b.is_open());
    }
}
