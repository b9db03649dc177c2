//! The shared store wrapped with what answers when it cannot: a store made
//! of two stores, so the request path never learns Redis failed.

use std::sync::Arc;

use super::redis::{Link, RedisStore};
use super::{Decision, LocalLimiter};
use crate::config::{OnError, Quota, Rate};

/// What answers when Redis fails, is too slow, or its breaker is open.
#[derive(Debug)]
pub enum Standby {
    /// This instance's GCRA at the client's rate.
    Local(LocalLimiter),
    /// Let the request through uncounted.
    Allow,
    /// Refuse with 503 `limiter_unavailable`.
    Deny,
}

impl Standby {
    /// The standby for `on_error` at `rate`.
    pub fn new(on_error: OnError, rate: Rate) -> Standby {
        match on_error {
            OnError::Local => Standby::Local(LocalLimiter::new(rate)),
            OnError::Allow => Standby::Allow,
            OnError::Deny => Standby::Deny,
        }
    }
}

/// Redis first; the standby when Redis cannot answer in time.
#[derive(Debug)]
pub struct Fallback {
    link: Arc<Link>,
    store: RedisStore,
    /// The rate, when it stays with this instance and only the quota is shared.
    local_rate: Option<LocalLimiter>,
    standby: Standby,
}

impl Fallback {
    /// `store` over `link`, with `local_rate` checked first when the rate is not shared.
    pub fn new(link: Arc<Link>, store: RedisStore, local_rate: Option<LocalLimiter>, standby: Standby) -> Self {
        Fallback { link, store, local_rate, standby }
    }

    /// Take one request from the budget if it allows.
    pub async fn check(&self) -> Decision {
        let base = match self.local_first() {
            Ok(base) => base,
            Err(refused) => return refused,
        };
        let now = self.store.now();
        match self.link.call(&self.store, now).await {
            Some(reply) => self.store.decision(reply, base, now),
            None => self.standby(base),
        }
    }

    /// Whether the breaker is open: [`Fallback::check_open`] answers now.
    pub fn is_open(&self) -> bool {
        self.link.is_open()
    }

    /// The decision while the breaker is open, without waiting.
    pub fn check_open(&self) -> Decision {
        match self.local_first() {
            Ok(base) => self.standby(base),
            Err(refused) => refused,
        }
    }

    /// The local rate's decision when the rate is not shared: `Err` if it refuses.
    fn local_first(&self) -> Result<Option<Decision>, Decision> {
        let Some(local) = &self.local_rate else { return Ok(None) };
        let d = local.check();
        if d.allowed() {
            Ok(Some(d))
        } else {
            Err(d)
        }
    }

    fn standby(&self, base: Option<Decision>) -> Decision {
        self.link.count_fallback();
        match (&self.standby, base) {
            (Standby::Deny, _) => Decision::unavailable(self.rate()),
            // The rate was taken here already; the quota goes uncounted.
            (_, Some(local)) => local,
            (Standby::Local(local), None) => local.check(),
            (Standby::Allow, None) => Decision::uncounted(self.rate()),
        }
    }

    /// The rate enforced.
    pub fn rate(&self) -> Rate {
        self.store.rate()
    }

    /// The quota enforced.
    pub fn quota(&self) -> Option<Quota> {
        self.store.quota()
    }

    /// The Redis key of the rate bucket.
    pub fn rate_key(&self) -> &str {
        self.store.rate_key()
    }
}
