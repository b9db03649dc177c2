//! Upstream servers: pooled keep-alive clients (http and https) and round robin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::RequestBody;
use crate::config;
use crate::tls;

/// The HTTP client one upstream uses.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// One server of an upstream.
#[derive(Debug, Clone)]
pub struct Server {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// A named group of servers with its own connection pool.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub servers: Vec<Server>,
    next: AtomicUsize,
    pub client: UpstreamClient,
    pub request_timeout: Duration,
}

impl Upstream {
    /// Build the client for `config`; fails only when its CA file is unusable.
    pub fn new(config: &config::Upstream) -> Result<Upstream, tls::TlsError> {
        let servers = config
            .servers
            .iter()
            .filter_map(|uri| {
                Some(Server { scheme: uri.scheme()?.clone(), authority: uri.authority()?.clone() })
            })
            .collect();
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            servers,
            next: AtomicUsize::new(0),
            client: client(config)?,
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

fn client(config: &config::Upstream) -> Result<UpstreamClient, tls::TlsError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let tls_config = tls::client_config(config.ca.as_deref())?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .http1_writev(false)
        .set_host(false)
        .build(connector))
}
