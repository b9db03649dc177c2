//! `keygate healthcheck`: exit 0 when a URL answers 200, so images need no curl.

use std::time::Duration;

use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{OK, RUNTIME, USAGE};

/// Probe `url` (plain http) with a 5 second limit.
pub fn run(url: &str) -> u8 {
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("error: \"{url}\" is not a URL");
        return USAGE;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return RUNTIME;
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let probe = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await });
    match probe {
        Ok(Ok(r)) if r.status() == http::StatusCode::OK => OK,
        Ok(Ok(r)) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            RUNTIME
        }
        Ok(Err(e)) => {
            eprintln!("unhealthy: {url}: {e}");
            RUNTIME
        }
        Err(_) => {
            eprintln!("unhealthy: {url} did not answer within 5s");
            RUNTIME
        }
    }
}
