//! Failed accepts. Running out of file descriptors (or kernel memory) is an
//! episode to wait out: the loop backs off, growing from 10 ms to 1 s, logs
//! the episode's start and end once each, counts every failure, and resumes
//! when an accept succeeds. An error that concerns one connection only (it
//! was reset before it was taken) is counted and passed over at once.

use std::io;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::ReasonLabels;

const FIRST: Duration = Duration::from_millis(10);
const MAX: Duration = Duration::from_secs(1);

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
    /// The current wait, while an episode lasts.
    wait: Option<Duration>,
    /// Failures in the current episode.
    count: u64,
}

impl Failures {
    /// No failures yet; each is counted in `counter`.
    pub fn new(counter: &Family<ReasonLabels, Counter>) -> Failures {
        Failures { counter: counter.clone(), wait: None, count: 0 }
    }

    /// An accept failed with `e`: how long to wait before the next one, if at all.
    pub fn failed(&mut self, e: &io::Error) -> Option<Duration> {
        let reason = reason(e);
        self.counter.get_or_create(&ReasonLabels { reason }).inc();
        if reason == "connection" {
            tracing::debug!(error = %e, "accept failed for one connection");
            return None;
        }
        if self.wait.is_none() {
            tracing::warn!(error = %e, reason, "accept failed: backing off until descriptors are free (logged once)");
        }
        self.count += 1;
        let wait = next_wait(self.wait);
        self.wait = Some(wait);
        Some(wait)
    }

    /// An accept succeeded: an episode of failures, if any, is over.
    pub fn accepted(&mut self) {
        if self.wait.take().is_some() {
            tracing::warn!(failures = self.count, "accepting connections again");
            self.count = 0;
        }
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
    fn an_episode_backs_off_and_ends_at_the_next_accept() {
        let counter = Family::default();
        let mut f = Failures::new(&counter);
        let emfile = io::Error::from_raw_os_error(EMFILE);
        assert_eq!(f.failed(&emfile), Some(FIRST));
        assert_eq!(f.failed(&emfile), Some(FIRST * 2));
        assert_eq!(f.failed(&io::Error::from(io::ErrorKind::ConnectionAborted)), None);
        f.accepted();
        assert_eq!(f.failed(&emfile), Some(FIRST), "a new episode starts short");
        let n = |reason| counter.get_or_create(&ReasonLabels { reason }).get();
        assert_eq!((n("fd_exhausted"), n("connection")), (3, 1));
    }
}
