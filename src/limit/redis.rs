//! The Redis store: each client's GCRA bucket and quota count live in Redis
//! (or Valkey), so every instance pointing at it enforces one budget. One
//! Lua script per request (loaded once, called by SHA, loaded again on
//! `NOSCRIPT`); a [`Link`] holds the connection, the circuit breaker and the
//! background probe that reconnects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, RedisResult};

use super::breaker::Breaker;
use super::quota::{self, QuotaUse};
use super::{Decision, Verdict};
use crate::config::{Quota, Rate, RedisSettings};
use crate::metrics::LimiterMetrics;

const SCRIPT: &str = include_str!("gcra.lua");
/// How often an open breaker probes Redis (and reconnects).
const PROBE_EVERY: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Quota keys outlive their period by this much, for instances whose clocks differ.
const QUOTA_SLACK_MS: i64 = 3_600_000;

/// The connection to one Redis, shared by every client's store.
pub struct Link {
    settings: RedisSettings,
    client: redis::Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    breaker: Breaker,
    /// Whether the outage now going on has been logged.
    down_logged: AtomicBool,
    script: redis::Script,
    metrics: OnceLock<LimiterMetrics>,
    /// This link's fallback counter, looked up once: the fallback path
    /// should cost no more than the local store.
    fallbacks: OnceLock<Counter>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("open", &self.breaker.is_open()).finish_non_exhaustive()
    }
}

/// A client for `settings`: the URL, with the password from `password_env` if set.
pub fn client(settings: &RedisSettings) -> RedisResult<redis::Client> {
    let mut info = settings.url.0.as_str().into_connection_info()?;
    if let Some(password) = &settings.password {
        let redis = info.redis_settings().clone().set_password(&password.0);
        info = info.set_redis_settings(redis);
    }
    redis::Client::open(info)
}

impl Link {
    /// A link to Redis, connecting in the background (Redis may be down now).
    pub fn start(settings: &RedisSettings) -> Option<Arc<Link>> {
        let client = client(settings)
            .map_err(|e| tracing::error!(kind = error_kind(&e), "redis settings refused; limits use the fallback"))
            .ok()?;
        let link = Arc::new(Link {
            settings: settings.clone(),
            client,
            conn: ArcSwapOption::empty(),
            breaker: Breaker::open(),
            down_logged: AtomicBool::new(false),
            script: redis::Script::new(SCRIPT),
            metrics: OnceLock::new(),
            fallbacks: OnceLock::new(),
        });
        // Outside a runtime (e.g. a benchmark building snapshots) nothing connects.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(probe(Arc::downgrade(&link)));
        }
        Some(link)
    }

    /// The settings this link was made from.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Count into `metrics` from now on.
    pub fn set_metrics(&self, metrics: &LimiterMetrics) {
        metrics.breaker_open.set(i64::from(self.breaker.is_open()));
        let labels = crate::metrics::OnErrorLabels { on_error: self.settings.on_error.name() };
        let _ = self.fallbacks.set(metrics.fallbacks.get_or_create(&labels).clone());
        let _ = self.metrics.set(metrics.clone());
    }

    /// Whether requests skip Redis now.
    pub fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Run the script for `store`, within the timeout; `None` on any failure.
    pub(super) async fn call(&self, store: &RedisStore, now: i64) -> Option<[i64; 5]> {
        if self.breaker.is_open() {
            return None;
        }
        let mut conn = self.conn.load().as_deref().cloned()?;
        let start = Instant::now();
        match tokio::time::timeout(self.settings.timeout, store.invoke(&self.script, &mut conn, now)).await {
            Ok(Ok(reply)) => {
                if let Some(m) = self.metrics.get() {
                    m.round_trip.observe(start.elapsed().as_secs_f64());
                }
                self.breaker.reset_failures();
                Some(reply)
            }
            Ok(Err(e)) => {
                let lost = e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
                self.failed(error_kind(&e), lost);
                None
            }
            Err(_) => {
                self.failed("timeout", false);
                None
            }
        }
    }

    /// Count a decision the fallback took.
    pub(super) fn count_fallback(&self) {
        if let Some(counter) = self.fallbacks.get() {
            counter.inc();
        }
    }

    /// Count a failure; open the breaker after a few, or at once when the connection is gone.
    fn failed(&self, kind: &'static str, lost: bool) {
        if let Some(m) = self.metrics.get() {
            m.errors.get_or_create(&crate::metrics::ReasonLabels { reason: kind }).inc();
        }
        if lost {
            self.conn.store(None);
        }
        let opened = if lost { self.breaker.trip() } else { self.breaker.failure() };
        if opened {
            self.set_gauge(true);
            self.announce_down(kind);
        }
    }

    fn announce_down(&self, kind: &'static str) {
        if !self.down_logged.swap(true, Ordering::Relaxed) {
            let on_error = self.settings.on_error.name();
            tracing::warn!(kind, on_error, "redis unavailable: client limits use the fallback until it answers");
        }
    }

    fn set_gauge(&self, open: bool) {
        if let Some(m) = self.metrics.get() {
            m.breaker_open.set(i64::from(open));
        }
    }

    /// Reconnect if needed, check Redis answers, and close the breaker if so.
    async fn probe_once(&self) {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok(conn)) => {
                self.conn.store(Some(Arc::new(conn)));
                if self.breaker.success() {
                    self.set_gauge(false);
                    let was_down = self.down_logged.swap(false, Ordering::Relaxed);
                    tracing::info!(recovered = was_down, "redis answers: client limits are shared");
                }
            }
            Ok(Err(e)) => {
                self.conn.store(None);
                self.announce_down(error_kind(&e));
            }
            Err(_) => {
                self.conn.store(None);
                self.announce_down("timeout");
            }
        }
    }

    async fn connect(&self) -> RedisResult<MultiplexedConnection> {
        let mut conn = match self.conn.load_full() {
            Some(conn) => (*conn).clone(),
            None => {
                let config = AsyncConnectionConfig::new().set_connection_timeout(Some(CONNECT_TIMEOUT));
                self.client.get_multiplexed_async_connection_with_config(&config).await?
            }
        };
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        self.script.load_async(&mut conn).await?;
        Ok(conn)
    }
}

/// Probe while the breaker is open, until the link is dropped.
async fn probe(link: Weak<Link>) {
    loop {
        let Some(l) = link.upgrade() else { return };
        if l.breaker.is_open() {
            l.probe_once().await;
        }
        drop(l);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// A short name for a Redis error, for logs and metrics (never its text,
/// which may quote the command).
fn error_kind(e: &RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connection_refusal() {
        "refused"
    } else if e.is_io_error() || e.is_connection_dropped() {
        "connection"
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
        "auth"
    } else {
        "response"
    }
}

/// One client's keys and parameters in Redis.
#[derive(Debug)]
pub struct RedisStore {
    rate: Rate,
    /// The emission interval in ms; 0 when the rate stays with each instance.
    interval_ms: f64,
    /// `{prefix}:v1:{client}:rate:{per_second}:{burst}`: a new rate is a new bucket.
    rate_key: String,
    /// The quota and its key without the period: `{prefix}:v1:{client}:quota:{per}:`.
    quota: Option<(Quota, String)>,
    clock_offset: i64,
}

impl RedisStore {
    /// The store of client `id`; `shares_rate` when the rate is counted in Redis too.
    pub fn new(prefix: &str, id: &str, rate: Rate, shares_rate: bool, quota: Option<Quota>, clock_offset: i64) -> Self {
        let base = format!("{prefix}:v1:{{{id}}}");
        RedisStore {
            rate,
            interval_ms: if shares_rate { 1000.0 / rate.per_second } else { 0.0 },
            rate_key: format!("{base}:rate:{}:{}", rate.per_second, rate.burst),
            quota: quota.map(|q| (q, format!("{base}:quota:{}:", q.per.name()))),
            clock_offset,
        }
    }

    /// The rate enforced.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The quota enforced.
    pub fn quota(&self) -> Option<Quota> {
        self.quota.as_ref().map(|(q, _)| *q)
    }

    /// The key of the rate bucket.
    pub fn rate_key(&self) -> &str {
        &self.rate_key
    }

    /// The time quotas read.
    pub(super) fn now(&self) -> i64 {
        quota::now(self.clock_offset)
    }

    async fn invoke(
        &self,
        script: &redis::Script,
        conn: &mut MultiplexedConnection,
        now: i64,
    ) -> RedisResult<[i64; 5]> {
        let mut call = script.key(&self.rate_key);
        call.arg(self.interval_ms).arg(self.rate.burst);
        match &self.quota {
            Some((q, key)) => {
                let window = q.per.window(now);
                let ttl = (window.end - now).saturating_mul(1000).saturating_add(QUOTA_SLACK_MS);
                call.key(format!("{key}{}", window.start)).arg(q.requests).arg(ttl);
            }
            None => {
                call.arg(0).arg(0);
            }
        }
        let reply: Vec<i64> = call.invoke_async(conn).await?;
        reply.try_into().map_err(|_| (redis::ErrorKind::UnexpectedReturnType, "script reply").into())
    }

    /// The decision a script reply stands for; `base` is the local rate's, when the rate is not shared.
    pub(super) fn decision(&self, reply: [i64; 5], base: Option<Decision>, now: i64) -> Decision {
        let [verdict, remaining, retry_ms, reset_ms, used] = reply;
        let secs = |ms: i64| u64::try_from(ms).unwrap_or(0).div_ceil(1000);
        let limit = self.rate.burst;
        let rate = match (verdict, base) {
            (1, _) => Decision {
                verdict: Verdict::RateLimited,
                remaining: 0,
                reset: secs(reset_ms),
                retry_after: secs(retry_ms).max(1),
                ..Decision::uncounted(self.rate)
            },
            (_, Some(local)) => local,
            _ => Decision {
                remaining: u32::try_from(remaining).unwrap_or(0).min(limit),
                reset: secs(reset_ms),
                ..Decision::uncounted(self.rate)
            },
        };
        let Some((q, _)) = &self.quota else { return rate };
        let usage = QuotaUse {
            limit: q.requests,
            remaining: q.requests.saturating_sub(u64::try_from(used).unwrap_or(0)),
            reset: q.per.window(now).left(now),
            window: q.per.nominal(),
        };
        match verdict {
            2 => quota::exceeded(self.rate, usage),
            _ => quota::combine(rate, usage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Period;

    const RATE: Rate = Rate { per_second: 10.0, burst: 20 };

    #[test]
    fn keys_put_the_client_in_a_hash_tag_and_the_rate_in_the_key() {
        let q = Quota { requests: 5, per: Period::Day };
        let s = RedisStore::new("kg", "billing", RATE, true, Some(q), 0);
        assert_eq!(s.rate_key(), "kg:v1:{billing}:rate:10:20");
        assert_eq!(s.quota.as_ref().map(|(_, k)| k.as_str()), Some("kg:v1:{billing}:quota:day:"));
        let half = RedisStore::new("kg", "billing", Rate { per_second: 0.5, burst: 20 }, true, None, 0);
        assert_ne!(half.rate_key(), s.rate_key());
    }

    #[test]
    fn replies_become_decisions() {
        let s = RedisStore::new("kg", "b", RATE, true, None, 0);
        let allowed = s.decision([0, 19, 0, 100, -1], None, 0);
        assert_eq!((allowed.verdict, allowed.remaining, allowed.reset), (Verdict::Allowed, 19, 1));
        let refused = s.decision([1, 0, 1, 1999, -1], None, 0);
        assert_eq!((refused.verdict, refused.retry_after, refused.reset), (Verdict::RateLimited, 1, 2));
        let q = Quota { requests: 5, per: Period::Hour };
        let s = RedisStore::new("kg", "b", RATE, true, Some(q), 0);
        let over = s.decision([2, 0, 0, 0, 5], None, 1800);
        assert_eq!((over.verdict, over.retry_after, over.limit), (Verdict::QuotaExceeded, 1800, 5));
        let near = s.decision([0, 19, 0, 100, 4], None, 1800);
        assert_eq!((near.limit, near.remaining, near.reset), (5, 1, 1800), "the quota is nearer to running out");
    }
}
