//! `jwks_url` issuers: keys fetched in the background at start and every
//! `jwks_refresh`, again (at most every 30 s) when a token names a `kid`
//! not held, and kept when a fetch fails. Requests only read the current
//! set (an `ArcSwap`); they never wait for a fetch.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::keys::KeySet;
use crate::upstream::health::clock_ms;
use crate::upstream::pool::{self, Target};

/// The shortest time between two refetches asked for by unknown `kid`s.
pub const REFETCH_EVERY: Duration = Duration::from_secs(30);
/// A fetch (connect, TLS, answer) must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS document read.
const MAX_DOCUMENT: usize = 1 << 20;

/// One issuer's fetched keys and their state.
#[derive(Debug)]
pub struct Remote {
    pub url: http::Uri,
    pub refresh: Duration,
    pub ca: Option<PathBuf>,
    keys: ArcSwap<KeySet>,
    ready: AtomicBool,
    /// Unix seconds of the last successful fetch (0: none yet).
    pub last_success: AtomicI64,
    /// Failed fetches so far.
    pub failures: AtomicU64,
    /// Fetches so far (successful or not).
    pub fetches: AtomicU64,
    /// `clock_ms` of the last refetch an unknown `kid` asked for (0: none).
    last_kid_refetch: AtomicU64,
    /// `clock_ms` of the last fetch (0: none).
    last_fetch: AtomicU64,
    wake: Notify,
    /// Keys held and last success time, once published.
    gauges: std::sync::OnceLock<(Gauge<i64, AtomicI64>, Gauge<i64, AtomicI64>)>,
}

impl Remote {
    pub fn new(url: http::Uri, refresh: Duration, ca: Option<PathBuf>) -> Remote {
        Remote {
            url,
            refresh,
            ca,
            keys: ArcSwap::from_pointee(KeySet::default()),
            ready: AtomicBool::new(false),
            last_success: AtomicI64::new(0),
            failures: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            last_kid_refetch: AtomicU64::new(0),
            last_fetch: AtomicU64::new(0),
            wake: Notify::new(),
            gauges: std::sync::OnceLock::new(),
        }
    }

    /// The keys held now (empty until the first fetch succeeds).
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Whether a fetch has succeeded.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A token named a `kid` not held: wake the fetcher, at most every 30 s.
    pub fn unknown_kid(&self) {
        let now = clock_ms();
        let last = self.last_kid_refetch.load(Ordering::Relaxed);
        let every = u64::try_from(REFETCH_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
        if self.last_kid_refetch.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.wake.notify_one();
        }
    }

    /// Fetch now and then on schedule, until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut failed_in_a_row = 0u32;
        // A task restarted by a reload waits out the current period first.
        let since = clock_ms().saturating_sub(self.last_fetch.load(Ordering::Relaxed));
        let mut wait = match self.ready() {
            true => self.refresh.saturating_sub(Duration::from_millis(since)),
            false => Duration::ZERO,
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
            wait = match self.refresh_once().await {
                true => {
                    failed_in_a_row = 0;
                    self.refresh
                }
                false => {
                    failed_in_a_row = failed_in_a_row.saturating_add(1);
                    retry_after(failed_in_a_row, self.refresh)
                }
            };
        }
    }

    /// Export the keys held and the last success through these gauges.
    pub fn publish(&self, keys: Gauge<i64, AtomicI64>, refreshed: Gauge<i64, AtomicI64>) {
        refreshed.set(self.last_success.load(Ordering::Relaxed));
        let _ = self.gauges.set((keys, refreshed));
    }

    /// Fetch once now (for `keygate jwt`); whether keys are held.
    pub async fn fetch_now(&self) -> bool {
        self.refresh_once().await
    }

    /// One fetch: the new keys swapped in, or the old ones kept (and the
    /// outage logged once, when it starts).
    async fn refresh_once(&self) -> bool {
        self.last_fetch.store(clock_ms(), Ordering::Relaxed);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let host = self.url.host().unwrap_or("");
        match fetch(&self.url, self.ca.as_deref()).await.and_then(|doc| KeySet::from_jwks_lenient(&doc)) {
            Ok(set) => {
                let keys = set.keys.len();
                self.keys.store(Arc::new(set));
                let now = crate::keys::unix_now();
                self.last_success.store(now, Ordering::Relaxed);
                if let Some((held, refreshed)) = self.gauges.get() {
                    held.set(i64::try_from(keys).unwrap_or(i64::MAX));
                    refreshed.set(now);
                }
                if !self.ready.swap(true, Ordering::AcqRel) || self.failures.load(Ordering::Relaxed) > 0 {
                    tracing::info!(target: "keygate::audit", host, keys, "JWKS fetched");
                }
                self.failures.store(0, Ordering::Relaxed);
                true
            }
            Err(error) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(target: "keygate::audit", host, %error, "JWKS fetch failed; keeping the last good keys");
                }
                false
            }
        }
    }
}

/// After `n` failures in a row: 1 s, 2 s, 4 s … up to 30 s (never beyond `refresh`).
fn retry_after(n: u32, refresh: Duration) -> Duration {
    let secs = 1u64 << n.saturating_sub(1).min(5);
    Duration::from_secs(secs.min(30)).min(refresh)
}

/// GET the document at `url` (https verified against the system roots or `ca`).
pub async fn fetch(url: &http::Uri, ca: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    let work = async {
        let target = target(url, ca)?;
        let mut sender = pool::connect::<Full<Bytes>>(&target).await.map_err(|e| format!("connect: {e}"))?;
        let authority = url.authority().map_or("", |a| a.as_str());
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("answered {}", res.status()));
        }
        let body = Limited::new(res.into_body(), MAX_DOCUMENT).collect().await.map_err(|e| format!("body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, work).await.map_err(|_| "timed out".to_string())?
}

fn target(url: &http::Uri, ca: Option<&std::path::Path>) -> Result<Target, String> {
    let host = url.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let address = match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    let tls = match https {
        true => {
            let mut config = crate::tls::client_config(ca).map_err(|e| e.to_string())?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        }
        false => None,
    };
    Ok(Target { address, tls, connect_timeout: FETCH_TIMEOUT })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_within_the_refresh() {
        let hour = Duration::from_secs(3600);
        let waits: Vec<u64> = (1..=8).map(|n| retry_after(n, hour).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_after(9, Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn unknown_kid_refetches_are_throttled() {
        let remote = Remote::new("http://127.0.0.1:1/jwks".parse().unwrap(), Duration::from_secs(600), None);
        remote.unknown_kid();
        let first = remote.last_kid_refetch.load(Ordering::Relaxed);
        assert_ne!(first, 0);
        remote.unknown_kid();
        assert_eq!(remote.last_kid_refetch.load(Ordering::Relaxed), first, "a second ask within 30 s is ignored");
    }
}
