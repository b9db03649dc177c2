//! Forwarding: build the upstream request, send it, and shape the response.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};

use super::tunnel::Tunnel;
use super::{grpc, headers};
use crate::body::{BodyError, RequestBody};
use crate::error::Reject;
use crate::upstream::failover::body_error;
use crate::upstream::{h1, PooledBody, SendError, Upstream};

/// Why an upstream call failed, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Tls,
    Protocol,
    Body(Reject),
    /// Every server is ejected or failing its health checks.
    NoServer,
}

impl Failure {
    /// The status the caller gets.
    pub fn reject(self) -> Reject {
        match self {
            Failure::Timeout => Reject::GatewayTimeout,
            Failure::Body(r) => r,
            Failure::Connect | Failure::Tls | Failure::Protocol | Failure::NoServer => Reject::BadGateway,
        }
    }

    /// The metric label.
    pub fn kind(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Tls => "tls",
            Failure::Protocol => "protocol",
            Failure::Body(_) => "request_body",
            Failure::NoServer => "no_server",
        }
    }
}

/// The target of the upstream request: origin-form, as HTTP/1.1 servers expect.
pub fn upstream_uri(path_and_query: PathAndQuery) -> Uri {
    Uri::from(path_and_query)
}

/// Whether the request asks for a WebSocket upgrade.
pub fn wants_websocket(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Send `parts` + `body` to `upstream` and wait for the response head, for
/// at most the upstream's `request_timeout` or the call's `grpc-timeout`,
/// whichever is lower; the body then streams without a deadline. `trailers`:
/// the caller sent `te: trailers`, kept towards HTTP/2 upstreams.
pub async fn send(
    upstream: &Upstream,
    mut parts: Parts,
    body: RequestBody,
    tunnel: Option<Tunnel>,
    trailers: bool,
) -> Result<Response<PooledBody>, Failure> {
    // The answer goes out in the caller's protocol, whatever the server spoke
    // (an HTTP/1.0 server must not cost an HTTP/1.1 caller its keep-alive).
    let caller_version = parts.version;
    parts.version = Version::HTTP_11;
    if tunnel.is_some() {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if trailers && upstream.http2 {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // gRPC calls go to HTTP/2 upstreams: others skip the header lookup.
    let deadline = if upstream.http2 { grpc::timeout(&parts.headers) } else { None };
    let limit = deadline.map_or(upstream.request_timeout, |t| t.min(upstream.request_timeout));
    let request = Request::from_parts(parts, body);
    let sent = tokio::time::timeout(limit, upstream.send(request)).await;
    let mut response = match sent {
        Err(_) => return Err(Failure::Timeout),
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(response)) => response,
    };
    *response.version_mut() = caller_version;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(tunnel) = tunnel {
            tokio::spawn(tunnel.run(hyper::upgrade::on(&mut response)));
        }
    } else {
        headers::strip_connection_headers(response.headers_mut());
    }
    Ok(response)
}

fn classify(e: &SendError) -> Failure {
    let e = match e {
        SendError::Connect(_) | SendError::ConnectTimeout => return Failure::Connect,
        SendError::Tls(_) => return Failure::Tls,
        SendError::NoServer => return Failure::NoServer,
        SendError::Http(e) => body_error(e),
        SendError::H1(h1::Error::Body(e)) => Some(e),
        SendError::H1(_) => None,
    };
    match e {
        Some(BodyError::TooLarge) => Failure::Body(Reject::PayloadTooLarge),
        Some(BodyError::Idle) => Failure::Body(Reject::RequestTimeout),
        Some(BodyError::Hyper(_)) => Failure::Body(Reject::BadRequest),
        None => Failure::Protocol,
    }
}
