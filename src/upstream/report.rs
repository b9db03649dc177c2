//! What operators see of upstream health: `GET /upstreams` on the admin
//! listener, and the per-server metrics.

use std::sync::Arc;

use serde_json::{json, Value};

use super::health::ServerMetrics;
use super::http2::Gauges;
use super::Upstream;
use crate::config::Strategy;
use crate::metrics::{EjectionLabels, Metrics, Name, ServerLabels};

/// The `/upstreams` document: each upstream with each server's state.
pub fn upstreams(upstreams: &[Arc<Upstream>]) -> Value {
    let list: Vec<Value> = upstreams.iter().map(|u| upstream(u)).collect();
    json!({ "upstreams": list })
}

fn upstream(u: &Upstream) -> Value {
    let servers: Vec<Value> = u
        .servers
        .iter()
        .map(|s| {
            let r = s.health.report();
            json!({
                "server": &*s.url,
                "up": s.health.is_up(),
                "state": r.state,
                "consecutive_failures": r.consecutive_failures,
                "ejected_for_ms": r.ejected_for_ms,
                "ejections": r.ejections,
                "in_flight": (u.policy.strategy == Strategy::LeastRequests).then_some(r.in_flight),
                "http2": s.http2.as_ref().map(|p| {
                    let (connections, streams) = p.load();
                    json!({ "connections": connections, "streams": streams })
                }),
            })
        })
        .collect();
    let up = u.servers.iter().filter(|s| s.health.is_up()).count();
    json!({
        "name": &*u.name,
        "strategy": match u.policy.strategy {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastRequests => "least_requests",
        },
        "health_check": u.policy.check.is_some(),
        "servers_up": up,
        "servers": servers,
    })
}

fn server_labels(u: &Upstream, url: &Arc<str>) -> ServerLabels {
    ServerLabels { upstream: Name(u.name.clone()), server: Name(url.clone()) }
}

fn ejection_labels(u: &Upstream, url: &Arc<str>, cause: &'static str) -> EjectionLabels {
    EjectionLabels { upstream: Name(u.name.clone()), server: Name(url.clone()), cause }
}

/// Each handle on its own line: `get_or_create` returns a read guard, and a
/// second call on the same family while it lives would wait for ever.
fn server_metrics(metrics: &Metrics, u: &Upstream, url: &Arc<str>) -> ServerMetrics {
    let up = metrics.upstream_server_up.get_or_create(&server_labels(u, url)).clone();
    let ejected_passive = metrics.upstream_ejections.get_or_create(&ejection_labels(u, url, "passive")).clone();
    let ejected_checks = metrics.upstream_ejections.get_or_create(&ejection_labels(u, url, "health_check")).clone();
    ServerMetrics { up, ejected_passive, ejected_checks }
}

fn http2_gauges(metrics: &Metrics, u: &Upstream, url: &Arc<str>) -> Gauges {
    let connections = metrics.upstream_connections.get_or_create(&server_labels(u, url)).clone();
    let streams = metrics.upstream_streams.get_or_create(&server_labels(u, url)).clone();
    Gauges { connections, streams }
}

/// Give each server of `next` its metric handles and current state, and
/// drop the series of servers `previous` had and `next` has not.
pub fn publish_metrics(next: &[Arc<Upstream>], previous: Option<&[Arc<Upstream>]>, metrics: &Metrics) {
    for u in next {
        for s in &u.servers {
            // A server kept across a reload keeps its handles (same labels).
            let _ = s.health.metrics.get_or_init(|| server_metrics(metrics, u, &s.url));
            s.health.publish();
            if let Some(pool) = &s.http2 {
                let _ = pool.gauges.get_or_init(|| http2_gauges(metrics, u, &s.url));
            }
        }
    }
    let kept =
        |u: &Upstream, url: &Arc<str>| next.iter().any(|n| n.name == u.name && n.servers.iter().any(|s| s.url == *url));
    for u in previous.unwrap_or_default() {
        for s in u.servers.iter().filter(|s| !kept(u, &s.url)) {
            metrics.upstream_server_up.remove(&server_labels(u, &s.url));
            metrics.upstream_connections.remove(&server_labels(u, &s.url));
            metrics.upstream_streams.remove(&server_labels(u, &s.url));
            for cause in ["passive", "health_check"] {
                metrics.upstream_ejections.remove(&ejection_labels(u, &s.url, cause));
            }
        }
    }
}
