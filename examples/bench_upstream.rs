//! The HTTP/2 (h2c) upstream of `bench/run.sh`'s `grpc` and `plain-h2up` rows:
//! the smallest real server that answers gRPC, on one thread.
//!
//!     cargo run --release --example bench_upstream -- 127.0.0.1:50051
//!
//! Any request whose `content-type` starts with `application/grpc` is a unary
//! call: its body is read to the end, then the answer is one gRPC message (a
//! protobuf `string` field 1 = "ok", length-prefixed) and the trailers
//! `grpc-status: 0`. `/echo` answers `client=<x-client-id> key=<x-api-key>`
//! (what a proxy forwarded); anything else answers `ok`.
use std::convert::Infallible;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Flag 0 (not compressed), length 4, then field 1 (string) = "ok".
const REPLY: &[u8] = b"\x00\x00\x00\x00\x04\x0a\x02ok";

type Body = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn body(frames: Vec<Frame<Bytes>>) -> Body {
    StreamBody::new(stream::iter(frames.into_iter().map(Ok).collect::<Vec<_>>()))
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    let value = req.headers().get(name).and_then(|v| v.to_str().ok());
    value.unwrap_or("").to_string()
}

async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let grpc = header(&req, "content-type").starts_with("application/grpc");
    let echo = (req.uri().path() == "/echo")
        .then(|| format!("client={} key={}\n", header(&req, "x-client-id"), header(&req, "x-api-key")));
    // Read the request to its end (a gRPC server decodes the message).
    let _ = req.into_body().collect().await;
    let mut response = Response::builder().status(200);
    let frames = if grpc {
        response = response.header("content-type", "application/grpc");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        vec![Frame::data(Bytes::from_static(REPLY)), Frame::trailers(trailers)]
    } else {
        response = response.header("content-type", "text/plain");
        vec![Frame::data(echo.map_or(Bytes::from_static(b"ok\n"), Bytes::from))]
    };
    let empty = || Response::new(body(Vec::new()));
    Ok(response.body(body(frames)).unwrap_or_else(|_| empty()))
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50051".to_string());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder.max_concurrent_streams(1000);
                let _ = builder.serve_connection(TokioIo::new(tcp), service_fn(answer)).await;
            });
        }
    })
}
