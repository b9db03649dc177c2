//! The request path: normalise → credentials → key (a failure goes through
//! the throttle) → route → permission → rate limit → forward. Each step
//! returns early with a [`Reject`]; the steps live in the modules below.

pub mod auth;
pub mod client_addr;
pub mod forward;
pub mod framing;
pub mod grpc;
pub mod headers;
pub mod host;
pub mod in_flight;
pub mod path;
pub mod respond;
pub mod route;
pub mod strip;
pub mod throttle;
pub mod tunnel;

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
use crate::jwt::Grant;
use crate::keys::KeyEntry;
use crate::limit::Decision;
use crate::state::{ClientState, Shared, Snapshot};
use client_addr::Remote;

/// What the listener knows about a connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The connection's client address: a PROXY header's source, else the TCP peer.
    pub remote: SocketAddr,
    /// The remote address as the `X-Forwarded-For` value, made once per connection.
    pub remote_ip: HeaderValue,
    pub tls: bool,
    /// Subject of the verified client certificate (mTLS).
    pub subject: Option<Vec<(String, String)>>,
    /// The TCP peer (a load balancer, when a PROXY header named `remote`).
    pub peer: SocketAddr,
    /// Whether `remote` is a trusted proxy, whose `X-Forwarded-For` is read.
    pub trusted: bool,
    /// The connection's slot: a tunnel keeps it by keeping this `ConnInfo`.
    pub slot: Option<tunnel::Slot>,
}

impl ConnInfo {
    /// What the handler needs to know about a new connection.
    pub fn new(remote: impl Into<Remote>, tls: bool, subject: Option<Vec<(String, String)>>) -> ConnInfo {
        let Remote { addr, peer, trusted } = remote.into();
        ConnInfo { remote: addr, remote_ip: ip_header(addr.ip()), tls, subject, peer, trusted, slot: None }
    }

    /// The client address of a request on this connection (see [`client_addr`]).
    fn client_ip(&self, headers: &http::HeaderMap, listen: &crate::config::Listen) -> std::net::IpAddr {
        match self.trusted {
            true => client_addr::behind_proxy(headers, self.remote.ip(), &listen.trusted_proxies),
            false => self.remote.ip(),
        }
    }

    /// The `X-Forwarded-For` for the upstream: a trusted proxy's chain with
    /// the proxy appended, else the connection's address alone.
    fn forwarded_for(&self, headers: &http::HeaderMap) -> HeaderValue {
        let chain = if self.trusted { client_addr::chain(headers, &self.remote_ip) } else { None };
        chain.unwrap_or_else(|| self.remote_ip.clone())
    }

    /// This connection holds `slot` (and so does a tunnel it becomes).
    pub fn holding(self, slot: tunnel::Slot) -> ConnInfo {
        ConnInfo { slot: Some(slot), ..self }
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
    let is_grpc = grpc::is_grpc(&parts.headers);
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
        client_ip: None,
        peer: None,
        grpc: is_grpc,
        grpc_status: None,
    });
    let response = match run(parts, body, &conn, &shared, &snap, &mut record).await {
        Ok(response) => response,
        Err((reject, limit)) => {
            record.error = Some(reject.code());
            if is_grpc {
                return Ok(finish(grpc::reject(reject, limit.as_ref()), record));
            }
            let mut response = respond::reject(reject, &record.request_id, limit.as_ref(), &snap.config.auth);
            respond::allow(&mut response, reject, &snap.router);
            respond::scope(&mut response, reject, &snap.router);
            response
        }
    };
    Ok(finish(response, record))
}

fn finish(mut response: Response<ResponseBody>, mut record: Box<Record>) -> Response<ResponseBody> {
    record.status = response.status().as_u16();
    if record.grpc {
        record.grpc_status = grpc::status(response.headers());
    }
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
    conn: &Arc<ConnInfo>,
    shared: &Shared,
    snap: &Snapshot,
    record: &mut Record,
) -> Outcome {
    let plain = |r: Reject| (r, None);
    let listen = &snap.config.listen;
    let auth = &snap.config.auth;
    let logging = crate::access_log::enabled();
    let now = crate::keys::unix_now();
    // Taken out before the decision borrows the request; dropped if refused.
    let upgrade =
        forward::wants_websocket(&parts).then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>()).flatten();
    let mut query = None;
    // The client address (behind a trusted proxy, read from `X-Forwarded-For`)
    // is wanted only by a failure's throttle and by the access log.
    let identify = |p: &Parts| {
        authenticate(p, snap, conn, now).map_err(|r| failed(shared, conn.client_ip(&p.headers, listen), r, auth))
    };
    let decided = decide(&parts, snap, identify, |step| match step {
        Step::Head { path, .. } if logging => {
            // The query may hold the key until it is known where the key came from.
            record.target = path.to_string();
            record.client_ip = conn.trusted.then(|| conn.client_ip(&parts.headers, listen));
            record.peer = (conn.trusted || conn.peer != conn.remote).then_some(conn.peer);
        }
        Step::Head { .. } => {}
        Step::Identified { client, entry, copies, grant } => {
            record.client = Some(client.id.clone());
            if logging {
                // The fingerprint (or a token's issuer) is for the log line only.
                record.key = match grant {
                    Some(g) => snap.jwt.as_ref().and_then(|j| j.log_name(g.issuer)),
                    None => snap.key_names.get(entry.index as usize).cloned(),
                };
            }
            if let Some(gauge) = snap.key_last_used.get().and_then(|g| g.get(entry.index as usize)) {
                gauge.set(now);
            }
            let q = forwarded_query(parts.uri.query(), auth.query_param.as_deref(), copies.query);
            if logging {
                record.target = target_for_log(&record.target, q.as_deref());
            }
            query = Some(q);
        }
        Step::Route { index } => record.route = snap.route_names.get(index).cloned(),
    });
    let Decided { host, path, client, entry, copies, route: route_index, grant } = decided.map_err(plain)?;
    let query = query.flatten();
    let decision = client.limiter.check().await;
    if let Some(reject) = decision.reject() {
        shared.metrics.rate_limited.get_or_create(&crate::metrics::ClientLabels { client: client.id.clone() }).inc();
        return Err((reject, Some(decision)));
    }
    let with_limit = |r: Reject| (r, Some(decision));
    let permit = in_flight::acquire(&shared.in_flight, listen.max_in_flight, &client.in_flight, client.max_in_flight)
        .map_err(with_limit)?;
    let route = snap.router.get(route_index).ok_or(with_limit(Reject::NoRoute))?;
    check_length(&parts, route.max_body).map_err(with_limit)?;
    let upstream = snap.upstreams.get(route.upstream).ok_or(with_limit(Reject::BadGateway))?;
    record.upstream = Some(crate::metrics::Name(upstream.name.clone()));
    let opened = (entry, route_index, grant.as_deref());
    let tunnel = upgrade.map(|u| open_tunnel(u, &parts, shared, snap, conn, opened)).transpose();
    let tunnel = tunnel.map_err(with_limit)?;
    let forwarded = strip::strip_segments(&path, route.strip_segments);
    let pq = path_and_query(&parts, forwarded, query.as_deref()).map_err(with_limit)?;
    parts.uri = forward::upstream_uri(pq);
    let credential = snap.key_header_values.get(entry.index as usize);
    let caller = Caller { client, credential, copies, grant: grant.as_deref() };
    // Only HTTP/2 upstreams get `te: trailers` back (read before stripping).
    let trailers = upstream.http2 && grpc::asks_trailers(&parts.headers);
    prepare_headers(&mut parts, snap, &caller, route, conn, host.as_ref(), &record.request_id);
    let body = RequestBody::new(body, route.max_body, snap.config.listen.body_timeout);
    let response = forward::send(upstream, parts, body, tunnel, trailers).await.map_err(|f| {
        let labels = crate::metrics::UpstreamLabels { upstream: crate::metrics::Name(upstream.name.clone()), kind: f.kind() };
        shared.metrics.upstream_errors.get_or_create(&labels).inc();
        tracing::warn!(request_id = ?record.request_id, upstream = %upstream.name, kind = f.kind(), "upstream request failed");
        with_limit(f.reject())
    })?;
    let mut response = response.map(|body| ResponseBody::upstream(body).holding(permit));
    respond::rate_limit_headers(response.headers_mut(), &decision);
    Ok(response)
}

/// One passed step of a request's decision, as `keygate explain` reports it.
#[derive(Debug)]
pub enum Step<'a> {
    /// Framing, host and path are acceptable; `host` is the name routes match.
    Head { host: Option<&'a str>, path: &'a str },
    /// The credential names this client, by this key (or this token's grant).
    Identified { client: &'a ClientState, entry: KeyEntry, copies: auth::Copies, grant: Option<&'a Grant> },
    /// This route matches path, method and host.
    Route { index: usize },
}

/// What the steps before the rate limit decided.
#[derive(Debug)]
pub struct Decided<'p, 's> {
    pub host: Option<HeaderValue>,
    /// The normalised path: what was authorised, and what is forwarded.
    pub path: Cow<'p, str>,
    pub client: &'s ClientState,
    pub entry: KeyEntry,
    pub copies: auth::Copies,
    pub route: usize,
    /// What a token granted, when the credential was a token.
    pub grant: Option<Arc<Grant>>,
}

/// Identification's answer: the client, its key (a token's stand-in has
/// index `u32::MAX`), the credential's copies, and a token's grant.
pub type Identity<'s> = (&'s ClientState, KeyEntry, auth::Copies, Option<Arc<Grant>>);

/// The proxy's decision on a request head up to the rate limit: framing,
/// host, path, credential and key (`identify`), route, permission. `note`
/// hears each step that passed. The request path and `keygate explain` both
/// run this, so they cannot disagree.
pub fn decide<'p, 's>(
    parts: &'p Parts,
    snap: &'s Snapshot,
    identify: impl FnOnce(&Parts) -> Result<Identity<'s>, Reject>,
    mut note: impl FnMut(Step<'_>),
) -> Result<Decided<'p, 's>, Reject> {
    let listen = &snap.config.listen;
    framing::check_limits(&parts.headers, listen.max_header_bytes, listen.max_headers)?;
    framing::check(&parts.headers)?;
    let host = host::request_host(parts)?;
    let host_name = host.as_ref().map(host::route_name).transpose()?;
    let path = path::normalize(parts.uri.path()).map_err(|_| Reject::BadRequest)?;
    note(Step::Head { host: host_name.as_deref(), path: &path });
    let (client, entry, copies, grant) = identify(parts)?;
    note(Step::Identified { client, entry, copies, grant: grant.as_deref() });
    let route = snap.router.find(&path, &parts.method, host_name.as_deref())?;
    note(Step::Route { index: route });
    if !client.may_call(route) {
        return Err(Reject::Forbidden);
    }
    scopes(grant.as_deref(), snap, route)?;
    Ok(Decided { host, path, client, entry, copies, route, grant })
}

/// Route `scopes` bind token callers: the token must hold all of them.
fn scopes(grant: Option<&Grant>, snap: &Snapshot, route: usize) -> Result<(), Reject> {
    let (Some(grant), Some(r)) = (grant, snap.router.get(route)) else { return Ok(()) };
    match grant.holds(&r.scopes) {
        true => Ok(()),
        false => Err(Reject::InsufficientScope { route: u32::try_from(route).unwrap_or(u32::MAX) }),
    }
}

/// A failed authentication: 401 and one failure counted, or 429 when the
/// address has used its allowance (not counted: the block does not grow).
/// Only failures get here, so a valid key is never throttled.
fn failed(shared: &Shared, addr: std::net::IpAddr, reject: Reject, auth: &crate::config::Auth) -> Reject {
    let per_minute = auth.max_failures_per_minute;
    if let Some(retry_after) = shared.throttle.blocked(addr, per_minute) {
        count_failure(shared, "too_many_failures");
        return Reject::TooManyFailures { retry_after };
    }
    shared.throttle.record_failure(addr, per_minute);
    count_failure(shared, reject.code());
    reject
}

/// A WebSocket upgrade becomes a tunnel, registered under its credential;
/// refused when the client holds `listen.max_tunnels_per_client` already.
fn open_tunnel(
    upgrade: hyper::upgrade::OnUpgrade,
    parts: &Parts,
    shared: &Shared,
    snap: &Snapshot,
    conn: &Arc<ConnInfo>,
    (entry, route, grant): (crate::keys::KeyEntry, usize, Option<&Grant>),
) -> Result<tunnel::Tunnel, Reject> {
    let (Some(client), Some(route)) = (snap.clients.get(entry.client as usize), snap.route_names.get(route)) else {
        return Err(Reject::BadGateway);
    };
    let proof = match grant {
        Some(g) => tunnel::Proof::Token {
            issuer: snap.jwt.as_ref().and_then(|j| j.issuer_name(g.issuer)).ok_or(Reject::BadGateway)?.to_string(),
            exp: g.exp,
            scopes: g.scopes.clone(),
        },
        None => {
            // Extracted again (only for upgrades): the digest identifies the key on reload.
            let presented = auth::extract(&parts.headers, parts.uri.query(), &snap.config.auth)?;
            match &presented.credential {
                auth::Credential::Key { value, .. } => tunnel::Proof::Key(crate::keys::digest(value)),
                auth::Credential::Token { .. } => return Err(Reject::BadGateway),
            }
        }
    };
    let credential =
        tunnel::Credential { client: client.id.clone(), proof, route: route.clone(), subject: conn.subject.clone() };
    let listen = &snap.config.listen;
    let check = credential.clone();
    let ticket = shared.tunnels.open(credential, listen.max_tunnels_per_client).ok_or(Reject::TooManyTunnels)?;
    // A reload that swept the tunnels between this request's snapshot and
    // the registration did not see this one: check it against the new one.
    let current = shared.snapshot.load();
    if !std::ptr::eq(&**current, snap) && !current.allows_tunnel(&check, crate::keys::unix_now()) {
        return Err(Reject::InvalidKey);
    }
    let limits = (listen.tunnel_idle_timeout, listen.tunnel_max_lifetime);
    Ok(tunnel::Tunnel::new(upgrade, ticket, limits, entry.expires, conn.clone()))
}

fn count_failure(shared: &Shared, reason: &'static str) {
    shared.metrics.auth_failures.get_or_create(&crate::metrics::ReasonLabels { reason }).inc();
}

/// The credential step, then identification: the client, its key, and the
/// copies of the credential to strip before forwarding.
pub fn authenticate<'s>(parts: &Parts, snap: &'s Snapshot, conn: &ConnInfo, now: i64) -> Result<Identity<'s>, Reject> {
    let presented = auth::extract(&parts.headers, parts.uri.query(), &snap.config.auth)?;
    let (entry, grant) = identify(snap, presented.credential, now)?;
    let client = snap.clients.get(entry.client as usize).ok_or(Reject::InvalidKey)?;
    if !subject_allowed(client, conn) {
        return Err(Reject::InvalidKey);
    }
    Ok((client, entry, presented.copies, grant))
}

/// Identification: a key's entry, or a verified token's stand-in and grant.
pub fn identify(
    snap: &Snapshot,
    credential: auth::Credential<'_>,
    now: i64,
) -> Result<(KeyEntry, Option<Arc<Grant>>), Reject> {
    match credential {
        auth::Credential::Token { value } => token(snap, value, now),
        key => Ok((auth::identify(&snap.keys, &key, now)?, None)),
    }
}

/// A verified token stands in for a key of the client it names (an entry
/// with no key index, valid until the token's `exp`).
fn token(snap: &Snapshot, value: &str, now: i64) -> Result<(KeyEntry, Option<Arc<Grant>>), Reject> {
    let verifier = snap.jwt.as_ref().ok_or(Reject::InvalidKey)?;
    let grant = verifier.verify(value, now)?;
    let entry = KeyEntry { client: grant.client, index: u32::MAX, not_before: None, expires: Some(grant.exp) };
    Ok((entry, Some(grant)))
}

/// A client bound to certificate subjects must present one of them.
fn subject_allowed(client: &ClientState, conn: &ConnInfo) -> bool {
    if client.tls_subjects.is_empty() {
        return true;
    }
    let Some(subject) = &conn.subject else { return false };
    client.tls_subjects.iter().any(|p| crate::tls::subject_matches(subject, p))
}

/// The query to forward: without the key parameter in any spelling, wherever
/// the key came from (a second copy must not reach the upstream or the log).
fn forwarded_query<'a>(query: Option<&'a str>, param: Option<&str>, has_key: bool) -> Option<Cow<'a, str>> {
    let query = query?;
    match param {
        Some(name) if has_key => auth::strip_query_param(query, name).map(Cow::Owned),
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

/// Who called, as the steps after identification see it.
struct Caller<'s> {
    client: &'s ClientState,
    /// The credential's label for `auth.credential_header`, when set.
    credential: Option<&'s HeaderValue>,
    copies: auth::Copies,
    /// A token's grant: its claims are copied onto the request.
    grant: Option<&'s Grant>,
}

/// Strip (keygate's rules, then the route's `remove`), set the route's `set`
/// headers, then keygate's own: keygate's always win.
fn prepare_headers(
    parts: &mut Parts,
    snap: &Snapshot,
    caller: &Caller<'_>,
    route: &crate::config::Route,
    conn: &ConnInfo,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) {
    let auth = &snap.config.auth;
    let rules = &route.request_headers;
    let owned = headers::Owned {
        key_header: &auth.header,
        identity_header: &auth.identity_header,
        credential_header: auth.credential_header.as_ref(),
        remove: &rules.remove,
    };
    let forwarded_for = conn.forwarded_for(&parts.headers);
    // Room for what set_forwarded adds, so the map grows once, not per insert.
    parts.headers.reserve(6 + rules.set.len());
    headers::sanitize_request(&mut parts.headers, &owned, caller.copies);
    headers::apply_set(&mut parts.headers, rules);
    let forwarded = headers::Forwarded {
        client_id: &caller.client.header_value,
        remote_ip: forwarded_for,
        proto: if conn.tls { "https" } else { "http" },
        host,
        request_id,
        credential: caller.credential,
    };
    headers::set_forwarded(&mut parts.headers, &owned, forwarded);
    // The caller's own copies went with the route's `remove` rules.
    for (name, value) in caller.grant.iter().flat_map(|g| g.headers.iter()) {
        parts.headers.insert(name.clone(), value.clone());
    }
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
