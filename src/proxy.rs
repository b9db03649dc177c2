//! The request path: normalise → throttle → credentials → key → route →
//! permission → rate limit → forward. Each step returns early with a
//! [`Reject`]; the steps live in the modules below.

pub mod auth;
pub mod forward;
pub mod framing;
pub mod headers;
pub mod path;
pub mod rate_limit;
pub mod respond;
pub mod route;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::access_log::Record;
use crate::body::{RequestBody, ResponseBody};
use crate::error::Reject;
use crate::state::{ClientState, Shared, Snapshot};
use rate_limit::Decision;

/// What the listener knows about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The remote address as the `X-Forwarded-For` value, made once per connection.
    pub remote_ip: HeaderValue,
    pub tls: bool,
    /// Subject of the verified client certificate (mTLS).
    pub subject: Option<Vec<(String, String)>>,
}

impl ConnInfo {
    /// What the handler needs to know about a new connection.
    pub fn new(remote: SocketAddr, tls: bool, subject: Option<Vec<(String, String)>>) -> ConnInfo {
        ConnInfo { remote, remote_ip: ip_header(remote.ip()), tls, subject }
    }
}

/// The address as a header value. IPv4 is written by hand: through `fmt` it
/// cost 1,500 instructions, a twentieth of a new connection's handling.
fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    let std::net::IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        let digits = [b'.', b'0' + octet / 100, b'0' + octet / 10 % 10, b'0' + octet % 10];
        let first = match octet {
            100.. => 1,
            10..=99 => 2,
            _ => 3,
        };
        let dot = usize::from(i > 0);
        for &b in digits.get(..dot).unwrap_or_default().iter().chain(digits.get(first..).unwrap_or_default()) {
            if let Some(slot) = text.get_mut(len) {
                *slot = b;
                len += 1;
            }
        }
    }
    text.get(..len).and_then(|t| HeaderValue::from_bytes(t).ok()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Handle one request: forward it, or answer with a JSON error.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> Result<Response<ResponseBody>, Infallible> {
    let snap = shared.snapshot.load_full();
    let (parts, body) = req.into_parts();
    let mut record = Box::new(Record {
        metrics: shared.metrics.clone(),
        start: Instant::now(),
        request_id: request_id(&parts, &shared),
        remote: conn.remote,
        method: parts.method.clone(),
        target: String::new(),
        client: None,
        key: None,
        route: None,
        upstream: None,
        status: 0,
        error: None,
        bytes: 0,
    });
    let response = match run(parts, body, &conn, &shared, &snap, &mut record).await {
        Ok(response) => response,
        Err((reject, limit)) => {
            record.error = Some(reject.code());
            respond::reject(reject, &record.request_id, limit.as_ref(), &snap.config.auth)
        }
    };
    Ok(finish(response, record))
}

fn finish(mut response: Response<ResponseBody>, mut record: Box<Record>) -> Response<ResponseBody> {
    record.status = response.status().as_u16();
    response.headers_mut().insert(headers::REQUEST_ID, record.request_id.clone());
    response.map(|body| body.with_record(record))
}

fn request_id(parts: &Parts, shared: &Shared) -> HeaderValue {
    match parts.headers.get(headers::REQUEST_ID) {
        Some(v) if headers::acceptable_request_id(v) => v.clone(),
        _ => shared.request_ids.next(),
    }
}

type Outcome = Result<Response<ResponseBody>, (Reject, Option<Decision>)>;

async fn run(
    mut parts: Parts,
    body: Incoming,
    conn: &ConnInfo,
    shared: &Shared,
    snap: &Snapshot,
    record: &mut Record,
) -> Outcome {
    let plain = |r: Reject| (r, None);
    let listen = &snap.config.listen;
    framing::check_limits(&parts.headers, listen.max_header_bytes, listen.max_headers).map_err(plain)?;
    framing::check(&parts.headers).map_err(plain)?;
    let host = request_host(&parts).map_err(plain)?;
    let path = path::normalize(parts.uri.path()).map_err(|_| plain(Reject::BadRequest))?;
    let logging = crate::access_log::enabled();
    if logging {
        // The query may hold the key until it is known where the key came from.
        record.target = path.to_string();
    }
    let auth = &snap.config.auth;
    if let Some(retry_after) = shared.throttle.blocked(conn.remote.ip(), auth.max_failures_per_minute) {
        count_failure(shared, "too_many_failures");
        return Err(plain(Reject::TooManyFailures { retry_after }));
    }
    let now = crate::keys::unix_now();
    let (client, entry, key_in_authorization) = authenticate(&parts, snap, conn, now).map_err(|r| {
        shared.throttle.record_failure(conn.remote.ip(), auth.max_failures_per_minute);
        count_failure(shared, r.code());
        plain(r)
    })?;
    record.client = Some(client.id.clone());
    if logging {
        // The fingerprint is for the log line only (metrics count by client).
        record.key = snap.key_names.get(entry.index as usize).cloned();
    }
    if let Some(gauge) = snap.key_last_used.get().and_then(|g| g.get(entry.index as usize)) {
        gauge.set(now);
    }
    let query = forwarded_query(parts.uri.query(), auth.query_param.as_deref());
    if logging {
        record.target = target_for_log(&path, query.as_deref());
    }
    let host_lower = host.as_ref().map(|h| lower_host(h));
    let route_index = snap.router.find(&path, &parts.method, host_lower.as_deref()).ok_or(plain(Reject::NoRoute))?;
    record.route = snap.route_names.get(route_index).cloned();
    if !client.may_call(route_index) {
        return Err(plain(Reject::Forbidden));
    }
    let decision = client.limiter.check().await;
    if let Some(reject) = decision.reject() {
        shared.metrics.rate_limited.get_or_create(&crate::metrics::ClientLabels { client: client.id.clone() }).inc();
        return Err((reject, Some(decision)));
    }
    let with_limit = |r: Reject| (r, Some(decision));
    let route = snap.router.get(route_index).ok_or(with_limit(Reject::NoRoute))?;
    check_length(&parts, route.max_body).map_err(with_limit)?;
    let upstream = snap.upstreams.get(route.upstream).ok_or(with_limit(Reject::BadGateway))?;
    record.upstream = Some(crate::metrics::Name(upstream.name.clone()));
    let server = upstream.pick().ok_or(with_limit(Reject::BadGateway))?;
    let pq = path_and_query(&parts, &path, query.as_deref()).map_err(with_limit)?;
    parts.uri = forward::upstream_uri(pq);
    let upgrade =
        forward::wants_websocket(&parts).then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>()).flatten();
    prepare_headers(&mut parts, snap, client, conn, key_in_authorization, host.as_ref(), &record.request_id);
    let body = RequestBody::new(body, route.max_body, snap.config.listen.body_timeout);
    let response = forward::send(upstream, server, parts, body, upgrade).await.map_err(|f| {
        let labels = crate::metrics::UpstreamLabels { upstream: crate::metrics::Name(upstream.name.clone()), kind: f.kind() };
        shared.metrics.upstream_errors.get_or_create(&labels).inc();
        tracing::warn!(request_id = ?record.request_id, upstream = %upstream.name, kind = f.kind(), "upstream request failed");
        with_limit(f.reject())
    })?;
    let mut response = response.map(ResponseBody::upstream);
    respond::rate_limit_headers(response.headers_mut(), &decision);
    Ok(response)
}

fn count_failure(shared: &Shared, reason: &'static str) {
    shared.metrics.auth_failures.get_or_create(&crate::metrics::ReasonLabels { reason }).inc();
}

fn authenticate<'s>(
    parts: &Parts,
    snap: &'s Snapshot,
    conn: &ConnInfo,
    now: i64,
) -> Result<(&'s ClientState, crate::keys::KeyEntry, bool), Reject> {
    let presented = auth::extract(&parts.headers, parts.uri.query(), &snap.config.auth)?;
    let entry = auth::identify(&snap.keys, &presented.key, now)?;
    let client = snap.clients.get(entry.client as usize).ok_or(Reject::InvalidKey)?;
    if !subject_allowed(client, conn) {
        return Err(Reject::InvalidKey);
    }
    Ok((client, entry, presented.in_authorization(&parts.headers, &snap.config.auth)))
}

/// A client bound to certificate subjects must present one of them.
fn subject_allowed(client: &ClientState, conn: &ConnInfo) -> bool {
    if client.tls_subjects.is_empty() {
        return true;
    }
    let Some(subject) = &conn.subject else { return false };
    client.tls_subjects.iter().any(|p| crate::tls::subject_matches(subject, p))
}

/// The host the request is for: the URI's authority (absolute-form or HTTP/2
/// `:authority`) wins over `Host`; two `Host` headers are refused.
fn request_host(parts: &Parts) -> Result<Option<HeaderValue>, Reject> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject::BadRequest);
    }
    if let Some(authority) = parts.uri.authority() {
        return HeaderValue::from_str(authority.as_str()).map(Some).map_err(|_| Reject::BadRequest);
    }
    // RFC 9112: an HTTP/1.1 request without Host is refused.
    if first.is_none() && parts.version == http::Version::HTTP_11 {
        return Err(Reject::BadRequest);
    }
    Ok(first.cloned())
}

/// Lower-case host name without port, for route matching.
fn lower_host(host: &HeaderValue) -> Cow<'_, str> {
    let s = host.to_str().unwrap_or("");
    let name = if s.starts_with('[') {
        s.find(']').and_then(|i| s.get(..=i)).unwrap_or(s)
    } else {
        s.split_once(':').map_or(s, |(name, _)| name)
    };
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The query to forward: without the key parameter, wherever the key came from
/// (a second copy of the key must not reach the upstream or the log).
fn forwarded_query<'a>(query: Option<&'a str>, param: Option<&str>) -> Option<Cow<'a, str>> {
    let query = query?;
    match param {
        Some(name) if auth::has_query_param(query, name) => auth::strip_query_param(query, name).map(Cow::Owned),
        _ => Some(Cow::Borrowed(query)),
    }
}

fn target_for_log(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

fn path_and_query(parts: &Parts, path: &str, query: Option<&str>) -> Result<PathAndQuery, Reject> {
    let unchanged = parts.uri.path() == path && parts.uri.query() == query;
    if let (true, Some(pq)) = (unchanged, parts.uri.path_and_query()) {
        return Ok(pq.clone());
    }
    PathAndQuery::try_from(target_for_log(path, query)).map_err(|_| Reject::BadRequest)
}

/// Refuse up front a body whose declared length exceeds the route's limit.
fn check_length(parts: &Parts, max_body: Option<u64>) -> Result<(), Reject> {
    let Some(max) = max_body else { return Ok(()) };
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(len) if len > max => Err(Reject::PayloadTooLarge),
        _ => Ok(()),
    }
}

fn prepare_headers(
    parts: &mut Parts,
    snap: &Snapshot,
    client: &ClientState,
    conn: &ConnInfo,
    key_in_authorization: bool,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) {
    let auth = &snap.config.auth;
    let owned = headers::Owned { key_header: &auth.header, identity_header: &auth.identity_header };
    // Room for what set_forwarded adds, so the map grows once, not per insert.
    parts.headers.reserve(6);
    headers::sanitize_request(&mut parts.headers, &owned, key_in_authorization);
    let forwarded = headers::Forwarded {
        client_id: &client.header_value,
        remote_ip: conn.remote_ip.clone(),
        proto: if conn.tls { "https" } else { "http" },
        host,
        request_id,
    };
    headers::set_forwarded(&mut parts.headers, &owned, forwarded);
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_address_header_is_the_address_as_text() {
        for ip in
            ["0.0.0.0", "127.0.0.1", "9.10.99.100", "255.255.255.255", "10.0.200.7", "::1", "2001:db8::8:800:200c:417a"]
        {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header(ip).to_str().unwrap(), ip.to_string());
        }
    }
}
