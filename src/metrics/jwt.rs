//! Token metrics: verifications by issuer and result, and per `jwks_url`
//! issuer the keys held and the time of the last successful fetch.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Name;

/// Labels of a verification: the configured issuer (never a caller's `iss`:
/// `-` when it names none) and the result (`ok`, `forbidden`, or the check).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerificationLabels {
    pub issuer: Name,
    pub result: &'static str,
}

/// Labels naming a configured issuer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub issuer: Name,
}

/// The token metrics (clones share the values).
#[derive(Clone, Debug, Default)]
pub struct JwtMetrics {
    pub verifications: Family<VerificationLabels, Counter>,
    pub keys: Family<IssuerLabels, Gauge<i64, AtomicI64>>,
    pub refreshed: Family<IssuerLabels, Gauge<i64, AtomicI64>>,
    /// Tokens answered from the verification cache (one counter: no label
    /// lookup on the path that makes a reused token cost about what a key does).
    pub cache_hits: Counter,
}

impl JwtMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "jwt_verifications",
            "Token verifications (cache misses) by issuer and result",
            self.verifications.clone(),
        );
        registry.register("jwt_cache_hits", "Tokens answered from the verification cache", self.cache_hits.clone());
        registry.register("jwt_keys", "Verification keys held, by issuer", self.keys.clone());
        registry.register(
            "jwt_jwks_refresh_timestamp_seconds",
            "When each jwks_url issuer's keys were last fetched successfully (Unix time)",
            self.refreshed.clone(),
        );
    }
}
