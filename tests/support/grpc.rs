//! A gRPC upstream: a small hand-written service (prost messages, tonic's
//! server side, no protoc) served over HTTP/2 by hyper, in clear text (h2c)
//! or over TLS with ALPN h2, with an optional stream limit, a record of each
//! call's request head, and a graceful shutdown that sends GOAWAY.
//!
//! Methods of `test.Echo`:
//! - `Unary`: answers `echo:<text>` with the same `n`
//! - `Count`: streams `n` messages numbered 0..n (of 1 KiB each when the
//!   text is `big`), made only as fast as they are sent (`produced`)
//! - `Chat`: answers each message as it arrives (`re:<text>`)
//! - `Sum`: reads every message, then answers the count and the sum of `n`
//! - `Slow`: waits `n` milliseconds, then answers like `Unary`
//! - `Trailers`: one message, then trailers with `x-trailer: yes` (and the
//!   request's trailer `x-request-trailer`, if any, as `x-echoed-trailer`)
// tonic's API takes its (large) `Status` as the error type.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::BoxBody;
use tonic::codec::{ProstCodec, Streaming};
use tonic::{server::Grpc, Status};

/// The one message type, both ways.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint64, tag = "2")]
    pub n: u64,
}

impl Msg {
    pub fn new(text: &str, n: u64) -> Msg {
        Msg { text: text.to_string(), n }
    }
}

/// One call as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// How to serve.
#[derive(Default)]
pub struct Options {
    /// SETTINGS_MAX_CONCURRENT_STREAMS per connection.
    pub max_streams: Option<u32>,
    /// PEM certificate and key: serve TLS, offering only ALPN h2.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A running gRPC upstream.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Streams open right now, and the most seen at once.
    pub open: Arc<AtomicUsize>,
    pub peak: Arc<AtomicUsize>,
    /// Messages `Count` has made so far.
    pub produced: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
}

impl GrpcUpstream {
    /// Serve in clear text (h2c, prior knowledge).
    pub async fn start() -> GrpcUpstream {
        GrpcUpstream::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC upstream");
        let (shutdown, _) = watch::channel(false);
        let up = GrpcUpstream {
            addr: listener.local_addr().expect("addr"),
            calls: Arc::default(),
            connections: Arc::default(),
            open: Arc::default(),
            peak: Arc::default(),
            produced: Arc::default(),
            shutdown,
        };
        let acceptor = options.tls.as_ref().map(|(c, k)| acceptor(c, k));
        let state = up.state();
        let mut stop = up.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((tcp, _)) => tcp, Err(_) => return },
                    _ = stop.changed() => return,
                };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let (state, stop, max) = (state.clone(), stop.clone(), options.max_streams);
                match acceptor.clone() {
                    None => drop(tokio::spawn(serve(tcp, state, stop, max))),
                    Some(acceptor) => drop(tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve(tls, state, stop, max).await;
                        }
                    })),
                }
            }
        });
        up
    }

    fn state(&self) -> State {
        State {
            calls: self.calls.clone(),
            connections: self.connections.clone(),
            open: self.open.clone(),
            peak: self.peak.clone(),
            produced: self.produced.clone(),
        }
    }

    /// Stop accepting and shut every connection down gracefully (GOAWAY,
    /// then the streams in progress finish).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Calls received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

#[derive(Clone)]
struct State {
    calls: Arc<Mutex<Vec<Call>>>,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    produced: Arc<AtomicUsize>,
}

fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert).expect("cert").collect::<Result<Vec<_>, _>>().expect("PEM");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(keygate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn serve<I>(io: I, state: State, mut stop: watch::Receiver<bool>, max_streams: Option<u32>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.max_concurrent_streams(max_streams);
    let service = service_fn(move |req| dispatch(req, state.clone()));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.changed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// Counts a stream open while it is being answered.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn dispatch(req: Request<Incoming>, state: State) -> Result<Response<BoxBody>, Infallible> {
    let now = state.open.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak.fetch_max(now, Ordering::SeqCst);
    let _open = Open(state.open.clone());
    let call = Call { uri: req.uri().clone(), headers: req.headers().clone() };
    state.calls.lock().expect("calls").push(call);
    let mut grpc = Grpc::new(ProstCodec::<Msg, Msg>::default());
    let response = match req.uri().path() {
        "/test.Echo/Unary" => grpc.unary(Unary { delay: false }, req).await,
        "/test.Echo/Slow" => grpc.unary(Unary { delay: true }, req).await,
        "/test.Echo/Count" => grpc.server_streaming(Count(state.produced.clone()), req).await,
        "/test.Echo/Chat" => grpc.streaming(Chat, req).await,
        "/test.Echo/Sum" => grpc.client_streaming(Sum, req).await,
        "/test.Echo/Trailers" => with_trailers(req).await,
        _ => Status::unimplemented("no such method").into_http(),
    };
    Ok(response)
}

type Boxed<T> = Pin<Box<dyn std::future::Future<Output = Result<tonic::Response<T>, Status>> + Send>>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

struct Unary {
    delay: bool,
}

impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = Boxed<Msg>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        let delay = self.delay;
        Box::pin(async move {
            let msg = req.into_inner();
            if delay {
                // The server's work, which the call's deadline should cut short.
                tokio::time::sleep(Duration::from_millis(msg.n)).await;
            }
            let mut response = tonic::Response::new(Msg { text: format!("echo:{}", msg.text), n: msg.n });
            response.metadata_mut().insert("x-served-by", "grpc-upstream".parse().expect("value"));
            Ok(response)
        })
    }
}

struct Count(Arc<AtomicUsize>);

impl tonic::server::ServerStreamingService<Msg> for Count {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = Boxed<MsgStream>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        let Msg { text, n } = req.into_inner();
        let (produced, big) = (self.0.clone(), text == "big");
        let out: MsgStream = Box::pin(stream::iter((0..n).map(move |i| {
            produced.fetch_add(1, Ordering::SeqCst);
            let text = if big { "x".repeat(1024) } else { format!("m{i}") };
            Ok(Msg { text, n: i })
        })));
        Box::pin(async move { Ok(tonic::Response::new(out)) })
    }
}

struct Chat;

impl tonic::server::StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = Boxed<MsgStream>;
    fn call(&mut self, req: tonic::Request<Streaming<Msg>>) -> Self::Future {
        let out: MsgStream =
            Box::pin(req.into_inner().map(|m| m.map(|m| Msg { text: format!("re:{}", m.text), n: m.n })));
        Box::pin(async move { Ok(tonic::Response::new(out)) })
    }
}

struct Sum;

impl tonic::server::ClientStreamingService<Msg> for Sum {
    type Response = Msg;
    type Future = Boxed<Msg>;
    fn call(&mut self, req: tonic::Request<Streaming<Msg>>) -> Self::Future {
        let mut incoming = req.into_inner();
        Box::pin(async move {
            let (mut count, mut sum) = (0u64, 0u64);
            while let Some(msg) = incoming.message().await? {
                count += 1;
                sum += msg.n;
            }
            Ok(tonic::Response::new(Msg { text: count.to_string(), n: sum }))
        })
    }
}

/// A gRPC message frame: flag, length, protobuf bytes.
pub fn frame(msg: &Msg) -> Bytes {
    let body = prost::Message::encode_to_vec(msg);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

async fn with_trailers(req: Request<Incoming>) -> Response<BoxBody> {
    use http_body_util::BodyExt;
    let sent = req.into_body().collect().await.ok().and_then(|c| c.trailers().cloned());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-trailer", HeaderValue::from_static("yes"));
    if let Some(v) = sent.as_ref().and_then(|t| t.get("x-request-trailer")) {
        trailers.insert("x-echoed-trailer", v.clone());
    }
    let frames =
        vec![Ok::<_, Status>(Frame::data(frame(&Msg::new("with trailers", 1)))), Ok(Frame::trailers(trailers))];
    let body = tonic::body::boxed(StreamBody::new(stream::iter(frames)));
    let mut response = Response::new(body);
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A raw HTTP/2 server (the h2 crate) that resets the first stream it is
/// sent with REFUSED_STREAM and answers every other one like `Unary` (from
/// the request body it read); it counts connections and streams.
pub struct Refusing {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub streams: Arc<AtomicUsize>,
}

impl Refusing {
    pub async fn start() -> Refusing {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = Refusing {
            addr: listener.local_addr().expect("addr"),
            connections: Arc::default(),
            streams: Arc::default(),
        };
        let (connections, streams) = (up.connections.clone(), up.streams.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let streams = streams.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        if streams.fetch_add(1, Ordering::SeqCst) == 0 {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        tokio::spawn(async move {
                            let text = read_message(req.into_body()).await.map_or(String::new(), |m| m.text);
                            let head =
                                Response::builder().header("content-type", "application/grpc").body(()).expect("head");
                            let Ok(mut send) = respond.send_response(head, false) else { return };
                            let _ = send.send_data(frame(&Msg::new(&format!("echo:{text}"), 0)), false);
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("0"));
                            let _ = send.send_trailers(trailers);
                        });
                    }
                });
            }
        });
        up
    }
}

/// The one gRPC message of a request body.
async fn read_message(mut body: h2::RecvStream) -> Option<Msg> {
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    prost::Message::decode(data.get(5..)?).ok()
}
