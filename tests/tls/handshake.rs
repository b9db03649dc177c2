//! The handshake itself: the server's suite order, a timeout for clients that
//! never finish it, and every supported key type and encoding.

use std::process::Command;
use std::time::{Duration, Instant};

use rustls::crypto::aws_lc_rs::cipher_suite as suites;
use rustls::CipherSuite;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::tls::*;
use crate::support::*;
use crate::{start, KEY};

#[tokio::test]
async fn the_servers_cipher_suite_order_wins() {
    // keygate's order: AES-128-GCM, AES-256-GCM, ChaCha20, whatever the client prefers.
    let t = start(None, "").await;
    let cases: [(&[rustls::SupportedCipherSuite], &[&rustls::SupportedProtocolVersion], CipherSuite); 4] = [
        (
            &[
                suites::TLS13_CHACHA20_POLY1305_SHA256,
                suites::TLS13_AES_256_GCM_SHA384,
                suites::TLS13_AES_128_GCM_SHA256,
            ],
            &[&rustls::version::TLS13],
            CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &[suites::TLS13_CHACHA20_POLY1305_SHA256, suites::TLS13_AES_256_GCM_SHA384],
            &[&rustls::version::TLS13],
            CipherSuite::TLS13_AES_256_GCM_SHA384,
        ),
        (
            &[
                suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            &[&rustls::version::TLS12],
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &[suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
            &[&rustls::version::TLS12],
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (offered, versions, chosen) in cases {
        let offer = Offer { suites: offered, versions, ..Offer::default() };
        let conn = TlsConn::connect(t.kg.addr, client_config(&t.ca.der(), offer)).await.unwrap();
        assert_eq!(conn.suite, Some(chosen), "offered {offered:?}");
    }
    t.kg.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_disconnected() {
    let dir = tempdir();
    let ca = Ca::new("timeout CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let up = Upstream::start().await;
    let config = basic_config(up.addr, KEY, &listen_tls(&cert, &key, None))
        .replace("[listen]\n", "[listen]\nheader_read_timeout = \"300ms\"\n");
    let kg = Keygate::start(&config).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(kg.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(read.is_ok(), "a client that sent nothing was kept past the handshake timeout");
    assert!(matches!(read.unwrap(), Ok(0) | Err(_)), "the server sent something to a silent client");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before the timeout: {:?}", started.elapsed());
    kg.stop().await;
}

/// `openssl pkey` with `args` on the PEM `input`.
fn pkey(input: &str, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .arg("pkey")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is needed for this test");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn rsa_key() -> rcgen::KeyPair {
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("openssl is needed for this test");
    assert!(out.status.success());
    let pem = String::from_utf8(out.stdout).unwrap();
    rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("RSA key")
}

#[tokio::test]
async fn ecdsa_rsa_and_ed25519_keys_in_each_encoding_are_served() {
    let ca = Ca::new("key types CA");
    let p256 = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cases = [
        ("ECDSA P-256, PKCS#8", ca.server_with_key(p256()), None),
        ("ECDSA P-256, SEC1", ca.server_with_key(p256()), Some("BEGIN EC PRIVATE KEY")),
        (
            "ECDSA P-384",
            ca.server_with_key(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()),
            None,
        ),
        ("Ed25519", ca.server_with_key(rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()), None),
        ("RSA 2048, PKCS#8", ca.server_with_key(rsa_key()), None),
        ("RSA 2048, PKCS#1", ca.server_with_key(rsa_key()), Some("BEGIN RSA PRIVATE KEY")),
    ];
    let up = Upstream::start().await;
    for (name, mut issued, traditional) in cases {
        if let Some(header) = traditional {
            issued.key_pem = pkey(&issued.key_pem, &["-traditional"]);
            assert!(issued.key_pem.contains(header), "{name}: {}", issued.key_pem);
        }
        let dir = tempdir();
        let (cert, key) = issued.write(dir.path(), "server");
        let kg = Keygate::start(&basic_config(up.addr, KEY, &listen_tls(&cert, &key, None))).await;
        let mut conn = TlsConn::connect(kg.addr, client_config(&ca.der(), Offer::default()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(conn.peer, issued.der, "{name}");
        assert_eq!(conn.get("/key", &[("x-api-key", KEY)]).await.unwrap().status, 200, "{name}");
        kg.stop().await;
    }
}
