//! Failover: a request that never reached a server goes to the next one.
//!
//! The rule: a request is sent again, to another server (each at most
//! once), only when it provably never left keygate: the connection was
//! refused or timed out, the TLS handshake failed, or a connection closed
//! before the request was written. Once any byte of it may have reached a
//! server it is not sent again, whatever its method: keygate streams bodies
//! without keeping a copy, and the server may already be acting on it.

use std::error::Error as StdError;

use http::header::{self, HeaderValue};
use http::{Request, Response};

use super::pool::{Failed, PooledBody, SendError};
use super::{Server, Upstream};
use crate::body::{BodyError, RequestBody};
use crate::config::Strategy;

impl Upstream {
    /// Send `req` to a server of this upstream and wait for the response
    /// head; `NoServer` at once when every server is down.
    pub async fn send(&self, mut req: Request<RequestBody>) -> Result<Response<PooledBody>, SendError> {
        let mut index = self.pick(&[]).ok_or(SendError::NoServer)?;
        // Allocated on the first failure only.
        let mut tried: Vec<bool> = Vec::new();
        let mut host_set = false;
        loop {
            let server = self.servers.get(index).ok_or(SendError::NoServer)?;
            set_host(&mut req, server, &mut host_set);
            let failed = match self.send_to(server, req).await {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            let Some(unsent) = failed.unsent else { return Err(failed.error) };
            if tried.is_empty() {
                tried = vec![false; self.servers.len()];
            }
            if let Some(t) = tried.get_mut(index) {
                *t = true;
            }
            let Some(next) = self.pick(&tried) else { return Err(failed.error) };
            tracing::debug!(upstream = %self.name, server = %server.url, error = %failed.error, "request never reached the server: trying the next");
            index = next;
            req = unsent;
        }
    }

    /// One attempt on `server`, with its outcome recorded in its health.
    async fn send_to(&self, server: &Server, req: Request<RequestBody>) -> Result<Response<PooledBody>, Failed> {
        let in_flight = (self.policy.strategy == Strategy::LeastRequests).then(|| server.health.start());
        match server.pool.send(req).await {
            Ok(mut response) => {
                server.health.success();
                response.body_mut().in_flight = in_flight;
                Ok(response)
            }
            Err(failed) => {
                if against_server(&failed.error) && server.health.failure(&self.policy) {
                    tracing::warn!(
                        upstream = %self.name,
                        server = %server.url,
                        error = %failed.error,
                        fail_timeout = ?self.policy.fail_timeout,
                        "server ejected after consecutive failures"
                    );
                }
                Err(failed)
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

/// Whether a failure speaks against the server (and counts towards ejection):
/// connect and transport failures do; a caller's broken body does not.
pub fn against_server(e: &SendError) -> bool {
    match e {
        SendError::Connect(_) | SendError::ConnectTimeout | SendError::Tls(_) => true,
        SendError::Http(e) => body_error(e).is_none(),
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
