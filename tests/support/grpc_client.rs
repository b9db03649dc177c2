//! A gRPC client's side of the tests: keygate's config in front of gRPC
//! upstreams, a tonic channel to keygate, and one unary call.

use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::codec::ProstCodec;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::grpc::Msg;
use super::{billing_client, hash, Keygate};

pub const KEY: &str = "grpc-test-key-0001-5f3c9a7e2b6d4081";
pub const OTHER_KEY: &str = "grpc-other-key-0002-7a1d0c3e9b5f2468";
/// How long any one test step may take.
pub const LIMIT: Duration = Duration::from_secs(20);

/// keygate in front of `servers` (h2c), route `/test.Echo/` to them, client
/// `billing` allowed everywhere; `extra` is appended.
pub fn config(servers: &[std::net::SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"http://{s}\"")).collect();
    format!(
        r#"[listen]
address = "127.0.0.1:0"
max_concurrent_streams = 1000

[rate_limit]
per_second = 100000
burst = 100000

[upstreams.echo]
servers = [{}]
protocol = "http2"

[upstreams.down]
servers = ["http://127.0.0.1:1"]
protocol = "http2"

[[routes]]
name = "echo"
path = "/test.Echo/"
upstream = "echo"

[[routes]]
name = "down"
path = "/test.Down/"
upstream = "down"

{}
[clients.outsider]
routes = ["down"]
keys = [{{ hash = "{}" }}]
{extra}
"#,
        servers.join(", "),
        billing_client(KEY),
        hash(OTHER_KEY)
    )
}

pub async fn channel(kg: &Keygate) -> Channel {
    Endpoint::from_shared(format!("http://{}", kg.addr)).expect("endpoint").connect().await.expect("connect")
}

pub async fn unary(
    ch: &Channel,
    path: &'static str,
    msg: Msg,
    meta: &[(&'static str, &str)],
) -> Result<tonic::Response<Msg>, Status> {
    let mut client = tonic::client::Grpc::new(ch.clone());
    client.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(msg);
    for (k, v) in meta {
        req.metadata_mut().insert(*k, v.parse().expect("metadata value"));
    }
    let call = client.unary(req, PathAndQuery::from_static(path), ProstCodec::<Msg, Msg>::default());
    tokio::time::timeout(LIMIT, call).await.expect("call in time")
}
