//! Active health checks: `GET path` on each server of an upstream every
//! `interval`, on a fresh connection, under `timeout`; a 2xx answer passes.
//! `app` runs one task per checked upstream and replaces it on reload.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Request;
use http_body_util::Empty;
use tokio::time::MissedTickBehavior;

use super::{http2, pool, Server, Upstream};
use crate::config::HealthCheck;

/// Check every server of `upstream` each interval, for ever (abort the task to stop).
pub async fn run(upstream: Arc<Upstream>) {
    let Some(check) = upstream.policy.check.clone() else { return };
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let results = futures_util::future::join_all(upstream.servers.iter().map(|s| probe(s, &check))).await;
        for (server, passed) in upstream.servers.iter().zip(results) {
            match server.health.checked(passed, check.healthy, check.unhealthy) {
                Some(true) => {
                    tracing::info!(upstream = %upstream.name, server = %server.url, "health checks pass: server back")
                }
                Some(false) => {
                    tracing::warn!(upstream = %upstream.name, server = %server.url, "health checks fail: server down")
                }
                None => {}
            }
        }
    }
}

/// One check: whether `server` answers `check.path` with a 2xx in time.
pub async fn probe(server: &Server, check: &HealthCheck) -> bool {
    if server.http2.is_some() {
        return matches!(tokio::time::timeout(check.timeout, probe_http2(server, check)).await, Ok(Some(true)));
    }
    let once = async {
        let mut sender = pool::connect::<Empty<Bytes>>(server.pool.target()).await.ok()?;
        let mut req = Request::get(check.path.clone()).body(Empty::new()).ok()?;
        let headers = req.headers_mut();
        headers.insert(header::HOST, HeaderValue::from_str(server.authority.as_str()).ok()?);
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static("keygate-health-check"));
        let response = sender.send_request(req).await.ok()?;
        Some(response.status().is_success())
    };
    matches!(tokio::time::timeout(check.timeout, once).await, Ok(Some(true)))
}

/// The same check over HTTP/2, on a fresh connection that ends with it.
async fn probe_http2(server: &Server, check: &HealthCheck) -> Option<bool> {
    let mut sender = http2::connect::<Empty<Bytes>>(server.pool.target(), None).await.ok()?;
    let uri = http::Uri::builder()
        .scheme(server.scheme.clone())
        .authority(server.authority.clone())
        .path_and_query(check.path.clone())
        .build()
        .ok()?;
    let mut req = Request::get(uri).version(http::Version::HTTP_2).body(Empty::new()).ok()?;
    req.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static("keygate-health-check"));
    let response = sender.send_request(req).await.ok()?;
    Some(response.status().is_success())
}
