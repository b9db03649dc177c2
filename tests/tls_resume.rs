//! TLS session resumption: a returning rustls client resumes its session
//! (TLS 1.3 tickets, TLS 1.2 tickets and session IDs), across a reload too,
//! except with client certificates, where a reload starts fresh sessions.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustls::client::{Resumption, Tls12Resumption};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, SupportedProtocolVersion};
use support::tls::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const KEY: &str = "tls-resume-key-7c1e-0123456789abcdef";
/// In `[clients.billing]`: hundreds of visits stay under the rate limit.
const UNLIMITED: &str = "rate_limit = { per_second = 100000, burst = 100000 }\n";

/// `offer`'s client speaking HTTP/1.1 with resumption on (the support client turns it off).
fn resuming(ca: &Ca, offer: Offer<'_>, tls12: Tls12Resumption) -> Arc<ClientConfig> {
    let mut config = Arc::unwrap_or_clone(client_config(&ca.der(), Offer { alpn: &["http/1.1"], ..offer }));
    config.resumption = Resumption::in_memory_sessions(16).tls12_resumption(tls12);
    Arc::new(config)
}

/// One HTTP/1.1 request on a new connection, read to its end (so the client
/// sees the tickets sent after the handshake): how the handshake went.
async fn visit(addr: SocketAddr, config: &Arc<ClientConfig>) -> HandshakeKind {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let connect = TlsConnector::from(config.clone()).connect(name, tcp);
    let mut tls = tokio::time::timeout(LIMIT, connect).await.expect("handshake in time").expect("handshake");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    let head = format!("GET / HTTP/1.1\r\nhost: localhost\r\nx-api-key: {KEY}\r\nconnection: close\r\n\r\n");
    tls.write_all(head.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    // The end may come without close_notify; what was read is checked either way.
    let _ = tokio::time::timeout(LIMIT, tls.read_to_end(&mut reply)).await.expect("reply in time");
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
    kind
}

type Case = (&'static str, &'static [&'static SupportedProtocolVersion], Tls12Resumption);

const CASES: &[Case] = &[
    ("TLS 1.3 ticket", &[&rustls::version::TLS13], Tls12Resumption::SessionIdOrTickets),
    ("TLS 1.2 ticket", &[&rustls::version::TLS12], Tls12Resumption::SessionIdOrTickets),
    ("TLS 1.2 session ID", &[&rustls::version::TLS12], Tls12Resumption::SessionIdOnly),
];

#[tokio::test]
async fn a_returning_client_resumes_its_session() {
    let dir = tempdir();
    let ca = Ca::new("resume CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, &listen_tls(&cert, &key, None))).await;
    for (name, versions, tls12) in CASES {
        let config = resuming(&ca, Offer { versions, ..Offer::default() }, *tls12);
        assert_eq!(visit(kg.addr, &config).await, HandshakeKind::Full, "{name}: first visit");
        assert_eq!(visit(kg.addr, &config).await, HandshakeKind::Resumed, "{name}: second visit");
        assert_eq!(visit(kg.addr, &config).await, HandshakeKind::Resumed, "{name}: third visit");
        // A client that never saw this server cannot resume with another client's state.
        let stranger = resuming(&ca, Offer { versions, ..Offer::default() }, *tls12);
        assert_eq!(visit(kg.addr, &stranger).await, HandshakeKind::Full, "{name}: another client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_after_hundreds_of_others_came_and_went() {
    let dir = tempdir();
    let ca = Ca::new("resume CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let up = Upstream::start().await;
    let kg =
        Keygate::start(&basic_config(up.addr, KEY, &format!("{UNLIMITED}{}", listen_tls(&cert, &key, None)))).await;
    for (name, versions, tls12) in CASES {
        let first = resuming(&ca, Offer { versions, ..Offer::default() }, *tls12);
        assert_eq!(visit(kg.addr, &first).await, HandshakeKind::Full, "{name}: first visit");
        // More callers than rustls' default 256-session cache holds.
        for _ in 0..300 {
            let other = resuming(&ca, Offer { versions, ..Offer::default() }, *tls12);
            assert_eq!(visit(kg.addr, &other).await, HandshakeKind::Full, "{name}: another client");
        }
        assert_eq!(visit(kg.addr, &first).await, HandshakeKind::Resumed, "{name}: the first client again");
    }
}

/// The real binary serving TLS (with `client_ca`, client certificates required).
fn serve(dir: &Path, up: &Upstream, ca: &Ca, client_ca: Option<&Ca>) -> Process {
    let (cert, key) = ca.server().write(dir, "server");
    let clients = client_ca.map(|c| c.write(dir, "clients-ca.pem"));
    let toml = basic_config(up.addr, KEY, &listen_tls(&cert, &key, clients.as_deref()));
    let config = dir.join("keygate.toml");
    std::fs::write(&config, toml).expect("config");
    Process::serve(Some(&config), &[])
}

/// SIGHUP, then wait (bounded) until the process says the reload is done.
async fn reload(process: &Process) {
    let before = process.output().matches("configuration reloaded").count();
    process.signal("HUP");
    let deadline = Instant::now() + LIMIT;
    while process.output().matches("configuration reloaded").count() == before {
        assert!(Instant::now() < deadline, "no reload in time:\n{}", process.output());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_outlive_a_reload_but_not_with_client_certificates() {
    let up = Upstream::start().await;
    let ca = Ca::new("resume reload CA");
    let clients = Ca::new("resume clients CA");
    let billing = clients.client("billing");
    // (name, client CA, what the first visit after a reload is)
    let cases =
        [("no client certificates", None, HandshakeKind::Resumed), ("client_ca", Some(&clients), HandshakeKind::Full)];
    for (name, client_ca, after_reload) in cases {
        let dir = tempdir();
        let process = serve(dir.path(), &up, &ca, client_ca);
        let offer = Offer { cert: client_ca.map(|_| &billing), ..Offer::default() };
        for (versions, tls12) in CASES.iter().map(|(_, v, t)| (*v, *t)) {
            let config = resuming(&ca, Offer { versions, ..offer }, tls12);
            assert_eq!(visit(process.addr, &config).await, HandshakeKind::Full, "{name} {versions:?}: first visit");
            assert_eq!(visit(process.addr, &config).await, HandshakeKind::Resumed, "{name} {versions:?}: second");
            reload(&process).await;
            assert_eq!(
                visit(process.addr, &config).await,
                after_reload,
                "{name} {versions:?} {tls12:?}: after a reload"
            );
        }
    }
}
