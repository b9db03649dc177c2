//! Verified tokens, so a caller reusing its token pays a hash and a lookup:
//! keyed by the SHA-256 of the token (the token itself is never kept),
//! bounded, and no entry is used at or past the token's `exp`.

use std::sync::Arc;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::Grant;

/// How many verified tokens are kept at most.
pub const CAPACITY: usize = 10_000;

/// The cache of one snapshot (a reload starts an empty one).
#[derive(Debug)]
pub struct Cache {
    map: DashMap<[u8; 32], Arc<Grant>>,
    capacity: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new(CAPACITY)
    }
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache { map: DashMap::new(), capacity }
    }

    /// The grant of a token verified before, while its `exp` is ahead.
    pub fn get(&self, token: &str, now: i64) -> Option<Arc<Grant>> {
        let key = digest(token);
        let grant = self.map.get(&key).map(|g| g.clone())?;
        if grant.exp > now {
            return Some(grant);
        }
        self.map.remove(&key);
        None
    }

    /// Remember a verified token; when full, expired entries go first, then all.
    pub fn insert(&self, token: &str, grant: Arc<Grant>, now: i64) {
        if grant.exp <= now {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.retain(|_, g| g.exp > now);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
        }
        self.map.insert(digest(token), grant);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(exp: i64) -> Arc<Grant> {
        Arc::new(Grant { client: 0, issuer: 0, exp, scopes: Box::new([]), headers: Box::new([]) })
    }

    #[test]
    fn an_entry_is_never_used_at_or_past_exp() {
        let cache = Cache::new(4);
        cache.insert("t", grant(100), 50);
        assert!(cache.get("t", 99).is_some());
        assert!(cache.get("t", 100).is_none());
        assert!(cache.is_empty(), "the expired entry is dropped");
        cache.insert("late", grant(100), 100);
        assert!(cache.is_empty(), "an expired grant is not stored");
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = Cache::new(3);
        for i in 0..3 {
            cache.insert(&format!("t{i}"), grant(10 + i), 0);
        }
        // At 11, two entries have expired: they make room.
        cache.insert("t3", grant(100), 11);
        assert_eq!(cache.len(), 2);
        for i in 4..20 {
            cache.insert(&format!("t{i}"), grant(100), 11);
            assert!(cache.len() <= 3);
        }
        assert!(cache.get("other", 0).is_none());
    }
}
