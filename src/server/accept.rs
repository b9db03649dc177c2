//! Failed accepts. Running out of file descriptors (or kernel memory) is an
//! episode to wait out: the loop backs off, growing from 10 ms to 1 s, and
//! tries again; a success resets the wait. Every failure is counted; the
//! episode is logged once when it starts and once when it ends, which is
//! when accepts have gone [`QUIET`] without a failure (descriptors freed one
//! at a time would otherwise make every other accept a new episode). An
//! error that concerns one connection only (it was reset before it was
//! taken) is counted and passed over at once.

use std::io;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::ReasonLabels;

const FIRST: Duration = Duration::from_millis(10);
const MAX: Duration = Duration::from_secs(1);
/// Accepts without a failure for this long end an episode.
pub const QUIET: Duration = Duration::from_secs(2);

/// EMFILE and ENFILE: the same numbers on Linux, the BSDs and macOS.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Why an accept failed: the `reason` label of `keygate_accept_errors_total`.
pub fn reason(e: &io::Error) -> &'static str {
    match (e.raw_os_error(), e.kind()) {
        (Some(EMFILE | ENFILE), _) => "fd_exhausted",
        (_, io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted) => {
            "connection"
        }
        _ => "other",
    }
}

/// The wait after a failure, given the wait after the one before (none at an episode's start).
pub fn next_wait(previous: Option<Duration>) -> Duration {
    previous.map_or(FIRST, |d| d.saturating_mul(2).min(MAX))
}

/// The state of one accept loop's failures.
#[derive(Debug)]
pub struct Failures {
    counter: Family<ReasonLabels, Counter>,
    /// The wait after the last failure, reset by a success.
    wait: Option<Duration>,
    /// The last failure of the current episode, while one lasts.
    last: Option<Instant>,
    /// Failures in the current episode.
    count: u64,
}

impl Failures {
    /// No failures yet; each is counted in `counter`.
    pub fn new(counter: &Family<ReasonLabels, Counter>) -> Failures {
        Failures { counter: counter.clone(), wait: None, last: None, count: 0 }
    }

    /// An accept failed with `e` at `now`: how long to wait before the next one, if at all.
    pub fn failed(&mut self, e: &io::Error, now: Instant) -> Option<Duration> {
        let reason = reason(e);
        self.counter.get_or_create(&ReasonLabels { reason }).inc();
        if reason == "connection" {
            tracing::debug!(error = %e, "accept failed for one connection");
            return None;
        }
        if self.last.is_none() {
            tracing::warn!(error = %e, reason, "accept failed: backing off until descriptors are free (logged once)");
        }
        self.last = Some(now);
        self.count += 1;
        let wait = next_wait(self.wait);
        self.wait = Some(wait);
        Some(wait)
    }

    /// An accept succeeded: the wait starts short again, and an episode
    /// with no failure for [`QUIET`] is over.
    pub fn accepted(&mut self) {
        let Some(last) = self.last else { return };
        self.wait = None;
        if last.elapsed() >= QUIET {
            tracing::warn!(failures = self.count, "accepting connections again");
            (self.last, self.count) = (None, 0);
        }
    }

    /// Whether an episode is on.
    pub fn in_episode(&self) -> bool {
        self.last.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_from_10ms_to_one_second() {
        let mut wait = None;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let next = next_wait(wait);
            seen.push(next.as_millis());
            wait = Some(next);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }

    #[test]
    fn reasons() {
        let cases = [
            (io::Error::from_raw_os_error(EMFILE), "fd_exhausted"),
            (io::Error::from_raw_os_error(ENFILE), "fd_exhausted"),
            (io::Error::from(io::ErrorKind::ConnectionAborted), "connection"),
            (io::Error::from(io::ErrorKind::ConnectionReset), "connection"),
            (io::Error::from(io::ErrorKind::OutOfMemory), "other"),
        ];
        for (e, want) in cases {
            assert_eq!(reason(&e), want, "{e}");
        }
    }

    #[test]
    fn an_episode_backs_off_and_ends_after_a_quiet_spell() {
        let counter = Family::default();
        let mut f = Failures::new(&counter);
        let emfile = io::Error::from_raw_os_error(EMFILE);
        let now = Instant::now();
        assert_eq!(f.failed(&emfile, now), Some(FIRST));
        assert_eq!(f.failed(&emfile, now), Some(FIRST * 2));
        assert_eq!(f.failed(&io::Error::from(io::ErrorKind::ConnectionAborted), now), None);
        f.accepted();
        assert!(f.in_episode(), "one success right after a failure does not end the episode");
        assert_eq!(f.failed(&emfile, now), Some(FIRST), "but the wait starts short again");
        let Some(long_ago) = now.checked_sub(QUIET) else { return };
        f.failed(&emfile, long_ago);
        f.accepted();
        assert!(!f.in_episode());
        let n = |reason| counter.get_or_create(&ReasonLabels { reason }).get();
        assert_eq!((n("fd_exhausted"), n("connection")), (4, 1));
    }
}
