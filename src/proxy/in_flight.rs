//! Caps on upstream requests in flight: one over all clients, one per
//! client. A request takes a slot in both before it is forwarded and gives
//! them back when its response body ends, so callers that read slowly (or
//! not at all) cannot pile up upstream connections and buffers without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::Reject;

/// A count of requests in flight; outlives configuration snapshots.
#[derive(Debug, Default)]
pub struct Slots(AtomicUsize);

impl Slots {
    /// Take a slot if fewer than `max` are taken. One atomic add; a refusal
    /// undoes it, so the count never stays above `max`.
    pub fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        if self.0.fetch_add(1, Ordering::AcqRel) >= max {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's slots in the global and its client's count.
#[derive(Debug)]
pub struct Permit {
    _global: Slot,
    _client: Slot,
}

/// Take a slot in `global` (cap `max_global`) and in `client` (cap `max_client`),
/// or refuse with 503 `overloaded`.
pub fn acquire(
    global: &Arc<Slots>,
    max_global: usize,
    client: &Arc<Slots>,
    max_client: usize,
) -> Result<Permit, Reject> {
    let client = client.try_take(max_client).ok_or(Reject::Overloaded)?;
    let global = global.try_take(max_global).ok_or(Reject::Overloaded)?;
    Ok(Permit { _global: global, _client: client })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_up_to_the_cap_then_refused_until_one_is_given_back() {
        let slots = Arc::new(Slots::default());
        let held: Vec<Slot> = (0..3).map(|_| slots.try_take(3).unwrap()).collect();
        assert!(slots.try_take(3).is_none());
        assert_eq!(slots.taken(), 3, "a refusal leaves the count as it was");
        drop(held);
        assert_eq!(slots.taken(), 0);
        assert!(slots.try_take(3).is_some());
    }

    #[test]
    fn permit_needs_both_and_a_refusal_keeps_neither() {
        let global = Arc::new(Slots::default());
        let (a, b) = (Arc::new(Slots::default()), Arc::new(Slots::default()));
        let first = acquire(&global, 2, &a, 1).unwrap();
        assert_eq!(acquire(&global, 2, &a, 1).unwrap_err(), Reject::Overloaded, "client a is at its cap");
        assert_eq!(global.taken(), 1);
        let second = acquire(&global, 2, &b, 5).unwrap();
        assert_eq!(acquire(&global, 2, &b, 5).unwrap_err(), Reject::Overloaded, "the global cap");
        assert_eq!((global.taken(), b.taken()), (2, 1), "b's slot is given back when the global one is refused");
        drop((first, second));
        assert_eq!((global.taken(), a.taken(), b.taken()), (0, 0, 0));
    }
}
