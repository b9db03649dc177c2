//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `/upstreams`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::ResponseBody;
use crate::state::Shared;

/// A header only keygate's `/healthz` sends: `keygate healthcheck` requires
/// it, so another server answering 200 on the admin port is not "healthy".
pub const HEALTH_MARKER: &str = "keygate-health";

/// Serve admin requests until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Out of file descriptors: wait rather than spin (the proxy listener logs and counts).
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, shared.clone()));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<ResponseBody>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into()));
    }
    let response = match req.uri().path() {
        "/healthz" => {
            let mut r = text(StatusCode::OK, "ok\n".into());
            r.headers_mut().insert(HEALTH_MARKER, HeaderValue::from_static("ok"));
            r
        }
        "/readyz" => {
            let ready = shared.ready.load(Ordering::Acquire) && !shared.draining.load(Ordering::Acquire);
            // Until each `jwks_url` issuer holds keys, its tokens are refused.
            let ready = ready && shared.snapshot.load().jwt.as_ref().is_none_or(|j| j.ready());
            match ready {
                true => text(StatusCode::OK, "ready\n".into()),
                false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
            }
        }
        "/metrics" => {
            let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (body, content_type) = shared.metrics.exposition(accept);
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        "/upstreams" => upstreams(&shared),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(response)
}

fn text(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Each upstream's servers and their health, as JSON.
fn upstreams(shared: &Shared) -> Response<ResponseBody> {
    let body = crate::upstream::report::upstreams(&shared.snapshot.load().upstreams).to_string();
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
