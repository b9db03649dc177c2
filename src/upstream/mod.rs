//! Upstream servers: a connection pool and a health state per server, the
//! choice of server (round robin or least requests), failover to the next
//! server, and active health checks. The request path calls one `send`.

pub mod balance;
pub mod check;
pub mod failover;
pub mod h1;
pub mod health;
pub mod http2;
pub mod pool;
pub mod replay;
pub mod report;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::config::{self, HealthPolicy, Protocol, Strategy};
use crate::tls;
pub use health::Health;
pub use pool::{PooledBody, SendError};

/// One server of an upstream, with its own idle connections and health.
#[derive(Debug, Clone)]
pub struct Server {
    pub scheme: Scheme,
    pub authority: Authority,
    /// HTTP/1.1 connections (unused when `http2` is set).
    pub pool: Arc<pool::Pool>,
    /// `scheme://authority`, as labels and `/upstreams` show it.
    pub url: Arc<str>,
    /// Shared with the previous snapshot's server of the same URL.
    pub health: Arc<Health>,
    /// HTTP/2 connections, for `protocol = "http2"`: the same `send`
    /// contract as `pool` (the request handed back when unsent).
    pub http2: Option<Arc<http2::Pool>>,
}

/// A named group of servers.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub servers: Vec<Server>,
    next: AtomicUsize,
    pub request_timeout: Duration,
    pub policy: HealthPolicy,
    /// Whether its servers speak HTTP/2 (`protocol = "http2"`).
    pub http2: bool,
}

impl Upstream {
    /// Build the pools for `config`, keeping the health of servers that
    /// `previous` already had; fails only when its CA file is unusable.
    pub fn new(config: &config::Upstream, previous: Option<&Upstream>) -> Result<Upstream, tls::TlsError> {
        let needs_tls = config.servers.iter().any(|u| u.scheme() == Some(&Scheme::HTTPS));
        let connector = match needs_tls {
            true => {
                let mut client = tls::client_config(config.ca.as_deref())?;
                client.alpn_protocols = match config.protocol {
                    Protocol::Http1 => vec![b"http/1.1".to_vec()],
                    Protocol::Http2 => vec![b"h2".to_vec()],
                };
                Some(TlsConnector::from(Arc::new(client)))
            }
            false => None,
        };
        let servers: Vec<Server> =
            config.servers.iter().filter_map(|uri| server(uri, connector.as_ref(), config, previous)).collect();
        let upstream = Upstream {
            name: Arc::from(config.name.as_str()),
            servers,
            next: AtomicUsize::new(0),
            request_timeout: config.request_timeout,
            policy: config.health.clone(),
            http2: config.protocol == Protocol::Http2,
        };
        upstream.forget_checks();
        Ok(upstream)
    }

    /// Without checks configured, their verdict must not keep a server out
    /// for ever. `app` calls this again once the previous checks have stopped.
    pub fn forget_checks(&self) {
        if self.policy.check.is_none() {
            self.servers.iter().for_each(|s| s.health.clear_checks());
        }
    }

    /// A usable server not yet `tried`, by the upstream's strategy.
    pub fn pick(&self, tried: &[bool]) -> Option<usize> {
        let n = self.servers.len();
        let fail_timeout = self.policy.fail_timeout;
        let usable = |i: usize| self.servers.get(i).is_some_and(|s| s.health.usable(fail_timeout));
        if n <= 1 {
            // One server: no counter to bump.
            return balance::round_robin(n, 0, tried, usable);
        }
        let counter = self.next.fetch_add(1, Ordering::Relaxed);
        if self.policy.strategy == Strategy::LeastRequests {
            let pair = balance::two_of(n, balance::mix(counter as u64));
            let load = |i: usize| self.servers.get(i).map_or(u32::MAX, |s| s.health.in_flight());
            if let Some(i) = balance::least_of_two(pair, tried, load, usable) {
                return Some(i);
            }
        }
        balance::round_robin(n, counter, tried, usable)
    }
}

fn server(
    uri: &http::Uri,
    connector: Option<&TlsConnector>,
    config: &config::Upstream,
    previous: Option<&Upstream>,
) -> Option<Server> {
    let scheme = uri.scheme()?.clone();
    let authority = uri.authority()?.clone();
    let https = scheme == Scheme::HTTPS;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let tls = match (https, connector) {
        (true, Some(c)) => Some((c.clone(), ServerName::try_from(host.clone()).ok()?)),
        _ => None,
    };
    let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let target = pool::Target { address, tls, connect_timeout: config.connect_timeout };
    let http2 = (config.protocol == Protocol::Http2).then(|| http2::Pool::new(target.clone()));
    let url: Arc<str> = Arc::from(format!("{scheme}://{authority}"));
    let kept = previous.and_then(|p| p.servers.iter().find(|s| s.url == url)).map(|s| s.health.clone());
    let health = kept.unwrap_or_default();
    Some(Server { scheme, authority, pool: pool::Pool::new(target), url, health, http2 })
}
