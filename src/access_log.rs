//! The access log: one event per request, written when its response body is
//! done, and the request metrics recorded at the same moment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method};

use crate::metrics::{GrpcLabels, Metrics, Name, RequestLabels};

/// Everything known about one request, finished by [`Record::finish`].
#[derive(Debug)]
pub struct Record {
    pub metrics: Arc<Metrics>,
    pub start: Instant,
    pub request_id: HeaderValue,
    pub remote: SocketAddr,
    pub method: Method,
    /// The forwarded path and query, the key parameter removed.
    pub target: String,
    pub client: Option<Name>,
    /// The key's fingerprint (a prefix of its hash), never the key.
    pub key: Option<Name>,
    pub route: Option<Name>,
    pub upstream: Option<Name>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub bytes: u64,
    /// The client address a trusted proxy named in `X-Forwarded-For`.
    pub client_ip: Option<std::net::IpAddr>,
    /// The TCP peer, when the client address came from a proxy.
    pub peer: Option<SocketAddr>,
    /// A gRPC call (`content-type: application/grpc*`), and its `grpc-status`
    /// once the response head or trailers carried one.
    pub grpc: bool,
    pub grpc_status: Option<&'static str>,
}

/// The client address as logged: the one a trusted proxy named, else the connection's.
struct ClientAddr<'a>(&'a Record);

impl std::fmt::Display for ClientAddr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.client_ip {
            Some(ip) => ip.fmt(f),
            None => self.0.remote.fmt(f),
        }
    }
}

fn name(n: &Option<Name>) -> Option<&str> {
    n.as_ref().map(|n| &*n.0)
}

/// Whether access-log events are wanted: when not, the request path skips
/// building what only the log line needs.
pub fn enabled() -> bool {
    tracing::enabled!(target: "keygate::access", tracing::Level::INFO)
}

impl Record {
    /// Log the request and count it.
    pub fn finish(self: Box<Self>) {
        let elapsed = self.start.elapsed();
        // Fields that do not apply (no client identified, no route matched,
        // no error) are left out, not written as a placeholder.
        tracing::info!(
            target: "keygate::access",
            request_id = self.request_id.to_str().ok(),
            remote = %ClientAddr(&self),
            peer = self.peer.map(tracing::field::display),
            client = name(&self.client),
            key = name(&self.key),
            method = %self.method,
            path = %self.target,
            route = name(&self.route),
            upstream = name(&self.upstream),
            status = self.status,
            error = self.error,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            bytes = self.bytes,
        );
        self.count(elapsed.as_secs_f64());
    }

    /// The labels take the record's names: it ends here.
    fn count(mut self: Box<Self>, seconds: f64) {
        let m = &self.metrics;
        if self.grpc {
            let client = self.client.clone().unwrap_or_else(|| m.none.clone());
            let route = self.route.clone().unwrap_or_else(|| m.none.clone());
            let labels = GrpcLabels { client, route, grpc_status: self.grpc_status.unwrap_or("-") };
            m.grpc_requests.get_or_create(&labels).inc();
        }
        let labels = RequestLabels {
            client: self.client.take().unwrap_or_else(|| m.none.clone()),
            route: self.route.take().unwrap_or_else(|| m.none.clone()),
            status: self.status,
        };
        m.requests.get_or_create(&labels).inc();
        m.duration.observe(seconds);
    }
}
