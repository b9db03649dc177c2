//! Prometheus metrics. Labels hold client ids, route and upstream names and
//! key fingerprints: never a plain key.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A shared, cheaply cloned label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl Name {
    /// A label value.
    pub fn new(s: &str) -> Name {
        Name(Arc::from(s))
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub client: Name,
    pub route: Name,
    pub status: u16,
}

/// Labels naming a client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client: Name,
}

/// Labels naming a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Labels of an upstream error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Name,
    pub kind: &'static str,
}

/// Labels of a key: its client and fingerprint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub client: Name,
    pub key: Name,
}

/// Labels of a reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric keygate exports.
pub struct Metrics {
    pub registry: Registry,
    /// The label value for "none" (`-`), made once.
    pub none: Name,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Histogram,
    pub rate_limited: Family<ClientLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub key_expiry: Family<KeyLabels, Gauge<i64, AtomicI64>>,
    pub key_last_used: Family<KeyLabels, Gauge<i64, AtomicI64>>,
    /// When the process started, so "not used since start" can be told from "never used".
    pub start_time: Gauge<i64, AtomicI64>,
    /// Client connections open now, and how many of them are parked (idle
    /// HTTP/1 keep-alive connections that hold no buffers).
    pub connections: Gauge<i64, AtomicI64>,
    pub parked_connections: Gauge<i64, AtomicI64>,
    /// Tunnels (upgraded connections) open now, and how those that ended ended.
    pub tunnels: Gauge<i64, AtomicI64>,
    pub tunnels_closed: Family<ReasonLabels, Counter>,
    /// Failed `accept` calls on the proxy listener, by reason.
    pub accept_errors: Family<ReasonLabels, Counter>,
    /// 1 while an upstream server takes traffic, 0 while ejected or checked down.
    pub upstream_server_up: Family<ServerLabels, Gauge<i64, AtomicI64>>,
    pub upstream_ejections: Family<EjectionLabels, Counter>,
    /// The shared limiter store (Redis).
    pub limiter: LimiterMetrics,
    /// gRPC calls by client, route and `grpc-status`.
    pub grpc_requests: Family<GrpcLabels, Counter>,
    /// HTTP/2 connections open to each upstream server, and streams on them.
    pub upstream_connections: Family<ServerLabels, Gauge<i64, AtomicI64>>,
    pub upstream_streams: Family<ServerLabels, Gauge<i64, AtomicI64>>,
    /// Bearer tokens.
    pub jwt: jwt::JwtMetrics,
}

/// Labels of a finished gRPC call: `grpc_status` is `-` when the response
/// ended without one (a broken stream).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub client: Name,
    pub route: Name,
    pub grpc_status: &'static str,
}

/// Holds a gauge one higher for as long as it lives.
#[derive(Debug)]
pub struct Held(Gauge<i64, AtomicI64>);

impl Held {
    pub fn new(gauge: &Gauge<i64, AtomicI64>) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Register every metric under the `keygate_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keygate");
        let m = Metrics {
            requests: Family::default(),
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            rate_limited: Family::default(),
            auth_failures: Family::default(),
            upstream_errors: Family::default(),
            reloads: Family::default(),
            key_expiry: Family::default(),
            key_last_used: Family::default(),
            start_time: Gauge::default(),
            connections: Gauge::default(),
            parked_connections: Gauge::default(),
            tunnels: Gauge::default(),
            tunnels_closed: Family::default(),
            accept_errors: Family::default(),
            limiter: LimiterMetrics::default(),
            registry: Registry::default(),
            none: Name::new("-"),
            upstream_server_up: Family::default(),
            upstream_ejections: Family::default(),
            grpc_requests: Family::default(),
            upstream_connections: Family::default(),
            upstream_streams: Family::default(),
            jwt: jwt::JwtMetrics::default(),
        };
        registry.register("requests", "Requests by client, route and status", m.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of its response",
            m.duration.clone(),
        );
        registry.register("rate_limited", "Requests refused by a client's rate limit", m.rate_limited.clone());
        registry.register("auth_failures", "Failed authentications by reason", m.auth_failures.clone());
        registry.register("upstream_errors", "Upstream failures by upstream and kind", m.upstream_errors.clone());
        registry.register("config_reloads", "Configuration reloads by result", m.reloads.clone());
        registry.register("key_expiry_timestamp_seconds", "When each key expires (Unix time)", m.key_expiry.clone());
        registry.register(
            "key_last_used_timestamp_seconds",
            "When each key was last used (Unix time)",
            m.key_last_used.clone(),
        );
        m.start_time.set(crate::keys::unix_now());
        registry.register("start_time_seconds", "When this keygate process started (Unix time)", m.start_time.clone());
        registry.register("connections", "Client connections open", m.connections.clone());
        registry.register(
            "parked_connections",
            "Idle HTTP/1 keep-alive connections parked without buffers",
            m.parked_connections.clone(),
        );
        registry.register("tunnels", "Tunnels (upgraded connections) open", m.tunnels.clone());
        registry.register("tunnels_closed", "Tunnels ended, by reason", m.tunnels_closed.clone());
        registry.register("accept_errors", "Failed accepts on the proxy listener, by reason", m.accept_errors.clone());
        registry.register(
            "upstream_server_up",
            "Whether an upstream server takes traffic (0: ejected or failing health checks)",
            m.upstream_server_up.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Times an upstream server was taken out of rotation, by cause",
            m.upstream_ejections.clone(),
        );
        m.limiter.register(&mut registry);
        registry.register("grpc_requests", "gRPC calls by client, route and grpc-status", m.grpc_requests.clone());
        registry.register(
            "upstream_connections",
            "HTTP/2 connections open to an upstream server",
            m.upstream_connections.clone(),
        );
        registry.register("upstream_streams", "HTTP/2 streams open to an upstream server", m.upstream_streams.clone());
        m.jwt.register(&mut registry);
        let build = Family::<BuildLabels, Gauge<i64, AtomicI64>>::default();
        build.get_or_create(&BuildLabels::default()).set(1);
        registry.register("build_info", "The keygate version and commit running (always 1)", build);
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text format, the `process_*` metrics included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        process::encode(&process::read(), &mut out);
        out.push_str("# EOF\n");
        out
    }

    /// The body and content type for a scraper's `Accept` header: OpenMetrics
    /// when it asks for it, else the classic Prometheus text format.
    pub fn exposition(&self, accept: Option<&str>) -> (String, &'static str) {
        let openmetrics = self.encode();
        match accept.is_some_and(classic::wants_openmetrics) {
            true => (openmetrics, classic::OPENMETRICS),
            false => (classic::from_openmetrics(&openmetrics), classic::CLASSIC),
        }
    }

    /// Export the failed-authentication throttle's table size and evictions.
    pub fn register_throttle(&mut self, throttle: &crate::proxy::throttle::FailureThrottle) {
        let (entries, evictions) = throttle.metrics();
        self.registry.register(
            "failure_throttle_entries",
            "Addresses tracked by the failed-authentication throttle",
            entries,
        );
        self.registry.register(
            "failure_throttle_evictions",
            "Addresses evicted from the full failed-authentication throttle table",
            evictions,
        );
    }
}

/// Labels of an upstream server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub upstream: Name,
    pub server: Name,
}

/// Labels of an ejection: the server and why (`passive`, `health_check`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub upstream: Name,
    pub server: Name,
    pub cause: &'static str,
}

/// Labels naming the fallback that answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OnErrorLabels {
    pub on_error: &'static str,
}

/// How the shared limiter store (Redis) is doing.
#[derive(Clone, Debug)]
pub struct LimiterMetrics {
    /// Seconds per script call that answered.
    pub round_trip: Histogram,
    /// Failed calls by kind (timeout, refused, connection, auth, response).
    pub errors: Family<ReasonLabels, Counter>,
    /// Decisions the fallback took (store failed, or breaker open), by `on_error`.
    pub fallbacks: Family<OnErrorLabels, Counter>,
    /// 1 while the circuit breaker is open (requests skip Redis).
    pub breaker_open: Gauge<i64, AtomicI64>,
}

impl Default for LimiterMetrics {
    fn default() -> Self {
        LimiterMetrics {
            round_trip: Histogram::new(exponential_buckets(0.00005, 2.0, 14)),
            errors: Family::default(),
            fallbacks: Family::default(),
            breaker_open: Gauge::default(),
        }
    }
}

impl LimiterMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "limiter_store_round_trip_seconds",
            "Time per call to the shared limiter store",
            self.round_trip.clone(),
        );
        registry.register("limiter_store_errors", "Failed calls to the shared limiter store", self.errors.clone());
        registry.register(
            "limiter_fallbacks",
            "Limit decisions taken by the fallback while the shared store failed",
            self.fallbacks.clone(),
        );
        registry.register(
            "limiter_breaker_open",
            "1 while requests skip the shared limiter store",
            self.breaker_open.clone(),
        );
    }
}

/// Labels of `keygate_build_info`: the version and the commit built from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

impl Default for BuildLabels {
    fn default() -> Self {
        BuildLabels { version: env!("CARGO_PKG_VERSION"), commit: env!("KEYGATE_COMMIT") }
    }
}

pub mod classic;
pub mod jwt;
pub mod process;
