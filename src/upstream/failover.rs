//! Failover: a request that never reached a server goes to the next one.
//!
//! The rule: a request is sent again, to another server (each at most
//! once), only when it provably never left keygate: the connection was
//! refused or timed out, the TLS handshake failed, or a connection closed
//! before the request was written. Once any byte of it may have reached a
//! server it is not sent again, whatever its method: keygate streams bodies
//! without keeping a copy, and the server may already be acting on it.
//! (HTTP/2 adds one case: a stream the server refused unread, which RFC
//! 9113 §8.7 makes safe to send again; see `http2`.)

use std::error::Error as StdError;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version};

use super::health::InFlight;
use super::pool::{PooledBody, SendError};
use super::{http2, Server, Upstream};
use crate::body::{BodyError, RequestBody};
use crate::config::Strategy;

impl Upstream {
    /// Send `req` to a server of this upstream and wait for the response
    /// head; `NoServer` at once when every server is down.
    pub async fn send(&self, mut req: Request<RequestBody>) -> Result<Response<PooledBody>, SendError> {
        if self.http2 {
            // Boxed: the HTTP/2 exchange's state is about 15 KB, and every
            // HTTP/1 request's future would otherwise carry (and copy) it.
            return Box::pin(self.send_http2(http2::Call::new(req))).await;
        }
        let mut index = self.pick(&[]).ok_or(SendError::NoServer)?;
        // Allocated on the first failure only.
        let mut tried: Vec<bool> = Vec::new();
        let mut host_set = false;
        loop {
            let server = self.servers.get(index).ok_or(SendError::NoServer)?;
            set_host(&mut req, server, &mut host_set);
            let in_flight = self.start(server);
            let sent = server.pool.send(req).await;
            let failed = match self.settle(server, sent, |f| &f.error, in_flight) {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            let Some(unsent) = failed.unsent else { return Err(failed.error) };
            let Some(next) = self.next(&mut tried, index, server, &failed.error) else { return Err(failed.error) };
            index = next;
            req = unsent;
        }
    }

    /// The same over HTTP/2, where a request refused unread may also be
    /// sent again (see `http2::Pool::send`).
    async fn send_http2(&self, mut call: http2::Call) -> Result<Response<PooledBody>, SendError> {
        let mut index = self.pick(&[]).ok_or(SendError::NoServer)?;
        let mut tried: Vec<bool> = Vec::new();
        let mut from_server = false;
        loop {
            let server = self.servers.get(index).ok_or(SendError::NoServer)?;
            let pool = server.http2.as_ref().ok_or(SendError::NoServer)?;
            set_authority(&mut call.head, server, &mut from_server);
            let in_flight = self.start(server);
            let sent = pool.send(&mut call).await;
            let error = match self.settle(server, sent, |e| e, in_flight) {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            if !call.resendable() {
                return Err(error);
            }
            let Some(next) = self.next(&mut tried, index, server, &error) else { return Err(error) };
            index = next;
        }
    }

    /// The server to try after `index` failed, if any is left.
    fn next(&self, tried: &mut Vec<bool>, index: usize, server: &Server, error: &SendError) -> Option<usize> {
        if tried.is_empty() {
            *tried = vec![false; self.servers.len()];
        }
        if let Some(t) = tried.get_mut(index) {
            *t = true;
        }
        let next = self.pick(tried)?;
        tracing::debug!(upstream = %self.name, server = %server.url, error = %error, "request never reached the server: trying the next");
        Some(next)
    }

    /// Counts a request in flight on `server` (least_requests only).
    fn start(&self, server: &Server) -> Option<InFlight> {
        (self.policy.strategy == Strategy::LeastRequests).then(|| server.health.start())
    }

    /// Record one attempt's outcome on `server` in its health.
    fn settle<E>(
        &self,
        server: &Server,
        sent: Result<Response<PooledBody>, E>,
        error: impl Fn(&E) -> &SendError,
        in_flight: Option<InFlight>,
    ) -> Result<Response<PooledBody>, E> {
        match sent {
            Ok(mut response) => {
                server.health.success();
                response.body_mut().in_flight = in_flight;
                Ok(response)
            }
            Err(e) => {
                let failure = error(&e);
                if against_server(failure) && server.health.failure(&self.policy) {
                    tracing::warn!(
                        upstream = %self.name,
                        server = %server.url,
                        error = %failure,
                        fail_timeout = ?self.policy.fail_timeout,
                        "server ejected after consecutive failures"
                    );
                }
                Err(e)
            }
        }
    }
}

/// HTTP/1.1 needs a Host: a caller that sent none gets the server's.
fn set_host(req: &mut Request<RequestBody>, server: &Server, host_set: &mut bool) {
    if *host_set || !req.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(server.authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
            *host_set = true;
        }
    }
}

/// HTTP/2 carries the host in the target (`:authority`), not in `Host`:
/// the caller's host when it sent one, else the server's; the scheme is
/// the server's.
fn set_authority(req: &mut http::request::Parts, server: &Server, from_server: &mut bool) {
    let caller = req.headers.remove(header::HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let authority = match (caller, req.uri.authority(), *from_server) {
        (Some(host), _, _) => host,
        (None, Some(kept), false) => kept.clone(),
        _ => {
            *from_server = true;
            server.authority.clone()
        }
    };
    let mut parts = req.uri.clone().into_parts();
    parts.scheme = Some(server.scheme.clone());
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        req.uri = uri;
    }
    req.version = Version::HTTP_2;
}

/// Whether a failure speaks against the server (and counts towards ejection):
/// connect and transport failures do; a caller's broken body does not.
pub fn against_server(e: &SendError) -> bool {
    match e {
        SendError::Connect(_) | SendError::ConnectTimeout | SendError::Tls(_) => true,
        SendError::Http(e) => body_error(e).is_none(),
        SendError::H1(e) => !matches!(e, super::h1::Error::Body(_)),
        SendError::NoServer => false,
    }
}

/// The caller's body error behind `e`, if that is what stopped the request.
pub fn body_error(e: &hyper::Error) -> Option<&BodyError> {
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = source {
        if let Some(body) = err.downcast_ref::<BodyError>() {
            return Some(body);
        }
        source = err.source();
    }
    None
}
