//! HTTPS: termination (HTTP/1.1 and HTTP/2 by ALPN), protocol versions,
//! client certificates, https upstreams, certificate reload, `check` and the
//! demo. Clients are real: rustls, curl and openssl.

mod support;

#[path = "tls/cert_watch.rs"]
mod cert_watch;
#[path = "tls/check.rs"]
mod check;
#[path = "tls/cli_clients.rs"]
mod cli_clients;
#[path = "tls/demo.rs"]
mod demo;
#[path = "tls/handshake.rs"]
mod handshake;
#[path = "tls/mtls.rs"]
mod mtls;
#[path = "tls/reload.rs"]
mod reload;
#[path = "tls/subjects.rs"]
mod subjects;
#[path = "tls/upstreams.rs"]
mod upstreams;

use std::time::Duration;

use support::tls::*;
use support::*;
use tokio::net::TcpStream;

/// The plain key of client `billing` in every test here.
pub const KEY: &str = "tls-test-key-5f0c-0123456789abcdef01";

/// keygate serving HTTPS with a certificate from `ca`, in front of a recording upstream.
pub struct Tls {
    pub up: Upstream,
    pub kg: Keygate,
    pub ca: Ca,
    pub dir: tempfile::TempDir,
}

/// Start keygate over TLS; with `client_ca`, client certificates from it are
/// required. `client_extra` goes into the `[clients.billing]` table.
pub async fn start(client_ca: Option<&Ca>, client_extra: &str) -> Tls {
    let dir = tempdir();
    let ca = Ca::new("keygate test CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let clients_ca = client_ca.map(|c| c.write(dir.path(), "clients-ca.pem"));
    let up = Upstream::start().await;
    let extra = format!("{client_extra}{}", listen_tls(&cert, &key, clients_ca.as_deref()));
    let kg = Keygate::start(&basic_config(up.addr, KEY, &extra)).await;
    Tls { up, kg, ca, dir }
}

/// The upstream saw the request with the key stripped, as forwarded over https.
pub fn assert_forwarded_over_https(up: &Upstream, uri: &str) {
    let seen = up.last();
    assert_eq!(seen.uri, uri);
    assert!(seen.headers.get("x-api-key").is_none(), "key was forwarded: {:?}", seen.headers);
    assert_eq!(seen.headers.get("x-forwarded-proto").map(|v| v.to_str().unwrap()), Some("https"));
    assert_eq!(seen.headers.get("x-client-id").map(|v| v.to_str().unwrap()), Some("billing"));
}

#[tokio::test]
async fn http1_over_tls_reaches_the_upstream_without_the_key() {
    let t = start(None, "").await;
    let offer = Offer { alpn: &["http/1.1"], ..Offer::default() };
    let mut conn = TlsConn::connect(t.kg.addr, client_config(&t.ca.der(), offer)).await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some("http/1.1"));
    let r = conn.get("/h1?x=1", &[("x-api-key", KEY)]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_forwarded_over_https(&t.up, "/h1?x=1");
    // Keep-alive: a second request on the same connection.
    assert_eq!(conn.get("/again", &[("x-api-key", KEY)]).await.unwrap().status, 200);
    t.kg.stop().await;
}

#[tokio::test]
async fn http2_over_tls_reaches_the_upstream_without_the_key() {
    let t = start(None, "").await;
    let mut conn = TlsConn::connect(t.kg.addr, client_config(&t.ca.der(), Offer::default())).await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some("h2"), "ALPN must pick h2 when offered");
    let r = conn.get("/h2?y=2", &[("x-api-key", KEY)]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_forwarded_over_https(&t.up, "/h2?y=2");
    let r = conn.get("/nokey", &[]).await.unwrap();
    assert_eq!(r.status, 401);
    t.kg.stop().await;
}

#[tokio::test]
async fn alpn_prefers_h2_over_the_clients_order() {
    let t = start(None, "").await;
    let offer = Offer { alpn: &["http/1.1", "h2"], ..Offer::default() };
    let conn = TlsConn::connect(t.kg.addr, client_config(&t.ca.der(), offer)).await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some("h2"));
    t.kg.stop().await;
}

#[tokio::test]
async fn a_client_without_alpn_gets_http1() {
    let t = start(None, "").await;
    let offer = Offer { alpn: &[], ..Offer::default() };
    let mut conn = TlsConn::connect(t.kg.addr, client_config(&t.ca.der(), offer)).await.unwrap();
    assert_eq!(conn.alpn, None);
    assert_eq!(conn.get("/plain", &[("x-api-key", KEY)]).await.unwrap().status, 200);
    t.kg.stop().await;
}

#[tokio::test]
async fn a_tls12_only_client_is_served() {
    let t = start(None, "").await;
    let offer = Offer { versions: &[&rustls::version::TLS12], ..Offer::default() };
    let mut conn = TlsConn::connect(t.kg.addr, client_config(&t.ca.der(), offer)).await.unwrap();
    assert_eq!(conn.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(conn.get("/tls12", &[("x-api-key", KEY)]).await.unwrap().status, 200);
    t.kg.stop().await;
}

#[tokio::test]
async fn a_tls13_client_gets_tls13() {
    let t = start(None, "").await;
    let conn = TlsConn::connect(t.kg.addr, client_config(&t.ca.der(), Offer::default())).await.unwrap();
    assert_eq!(conn.version, Some(rustls::ProtocolVersion::TLSv1_3));
    t.kg.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused_by_its_own_check() {
    // The certificate served is the one configured: a client trusting another CA fails.
    let t = start(None, "").await;
    let other = Ca::new("unrelated CA");
    let result = tls_get(t.kg.addr, client_config(&other.der(), Offer::default()), "/", &[]).await;
    let err = result.expect_err("a client trusting another CA must not connect");
    assert!(err.contains("UnknownIssuer") || err.contains("invalid peer certificate"), "{err}");
    t.kg.stop().await;
}

#[tokio::test]
async fn silent_tcp_clients_do_not_delay_other_clients() {
    let t = start(None, "").await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(t.kg.addr).await.unwrap());
    }
    let config = client_config(&t.ca.der(), Offer::default());
    let request = tls_get(t.kg.addr, config, "/busy", &[("x-api-key", KEY)]);
    let r = tokio::time::timeout(Duration::from_secs(1), request)
        .await
        .expect("a silent client held up another client's request for a second")
        .unwrap();
    assert_eq!(r.status, 200);
    drop(silent);
    t.kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_no_file_takes_its_certificate_from_the_environment() {
    let dir = tempdir();
    let ca = Ca::new("env CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let up = Upstream::start().await;
    let (cert, key, upstream) = (cert.display().to_string(), key.display().to_string(), format!("http://{}", up.addr));
    let env = [
        ("KEYGATE_LISTEN", "127.0.0.1:0"),
        ("KEYGATE_UPSTREAM", upstream.as_str()),
        ("KEYGATE_KEY_BILLING", KEY),
        ("KEYGATE_TLS_CERT", cert.as_str()),
        ("KEYGATE_TLS_KEY", key.as_str()),
    ];
    let process = Process::serve(None, &env);
    assert!(process.output().contains("listening on https://"), "{}", process.output());
    let config = client_config(&ca.der(), Offer::default());
    let r = tls_get(process.addr, config, "/env", &[("x-api-key", KEY)]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_forwarded_over_https(&up, "/env");
    assert!(!process.output().contains(KEY), "the plain key was logged");
}
