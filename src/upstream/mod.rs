//! Upstream servers: a connection pool per server, and round robin.

pub mod pool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::config;
use crate::tls;
pub use pool::{PooledBody, SendError};

/// One server of an upstream, with its own idle connections.
#[derive(Debug, Clone)]
pub struct Server {
    pub scheme: Scheme,
    pub authority: Authority,
    pub pool: Arc<pool::Pool>,
}

/// A named group of servers.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub servers: Vec<Server>,
    next: AtomicUsize,
    pub request_timeout: Duration,
}

impl Upstream {
    /// Build the pools for `config`; fails only when its CA file is unusable.
    pub fn new(config: &config::Upstream) -> Result<Upstream, tls::TlsError> {
        let needs_tls = config.servers.iter().any(|u| u.scheme() == Some(&Scheme::HTTPS));
        let connector = match needs_tls {
            true => {
                let mut client = tls::client_config(config.ca.as_deref())?;
                client.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(TlsConnector::from(Arc::new(client)))
            }
            false => None,
        };
        let servers =
            config.servers.iter().filter_map(|uri| server(uri, connector.as_ref(), config.connect_timeout)).collect();
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            servers,
            next: AtomicUsize::new(0),
            request_timeout: config.request_timeout,
        })
    }

    /// The next server in round-robin order.
    pub fn pick(&self) -> Option<&Server> {
        let n = self.servers.len();
        if n <= 1 {
            return self.servers.first();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        self.servers.get(i)
    }
}

fn server(uri: &http::Uri, connector: Option<&TlsConnector>, connect_timeout: Duration) -> Option<Server> {
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
    let target = pool::Target { address, tls, connect_timeout };
    Some(Server { scheme, authority, pool: pool::Pool::new(target) })
}
