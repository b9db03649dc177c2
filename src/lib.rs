//! keygate: a TLS-terminating reverse proxy that authenticates
//! server-to-server calls with API keys.
//!
//! # Request path
//!
//! Each request runs these steps in order; each returns early with a JSON
//! error ([`error::Reject`]; a trailers-only gRPC answer for gRPC calls,
//! [`proxy::grpc`]) or hands on to the next:
//!
//! 1. accept the connection, TLS handshake under a timeout — [`server`]
//! 2. take the current configuration snapshot — [`state`] (an `ArcSwap`)
//! 3. normalise the path, refuse ambiguous hosts — [`proxy::path`], [`proxy::host`]
//! 4. take the client address (PROXY header, `X-Forwarded-For` from trusted proxies) — [`server::proxy_protocol`], [`proxy::client_addr`]
//! 5. find the credential, where it came from and every copy of it (header, `Authorization`, query) — [`proxy::auth`]
//! 6. look the key's SHA-256 digest up; check its validity window — [`proxy::auth`], [`keys`];
//!    or verify a Bearer token (cached) and take the client it names — [`jwt`];
//!    a failure is 401, or 429 once its address has failed too often — [`proxy::throttle`]
//! 7. find the route (path prefix, method, host) — [`proxy::route`]
//! 8. check the client may call it — [`state::ClientState::may_call`]; a token must hold the route's `scopes`
//! 9. take one request from the client's budget (rate and quota; local or Redis), and a slot under the in-flight caps — [`limit`], [`proxy::in_flight`]
//! 10. strip every copy of the key and hop-by-hop headers, apply the route's header rules, set identity and `X-Forwarded-*` — [`proxy::headers`]
//! 11. stream the request to a usable server of the upstream (failing over when it never reached one) and the response back — [`proxy::forward`], [`upstream`] (HTTP/1 [`upstream::pool`] with keygate's own client [`upstream::h1`], HTTP/2 [`upstream::http2`]), [`body`]
//! 12. log the request and count it when its response is done — [`access_log`], [`metrics`]
//!
//! Configuration is read by [`config`] (file, then `KEYGATE_*`), reloaded by
//! [`reload`], and served by [`app`]; [`admin`] answers health and metrics.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod jwt;
pub mod keys;
pub mod limit;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
