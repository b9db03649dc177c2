//! Certificate reload on SIGHUP, with the real binary.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;

use crate::support::tls::*;
use crate::support::*;
use crate::KEY;

/// The real binary serving TLS with `server`'s certificate from `dir/server.{pem,key}`.
fn serve(dir: &Path, up: &Upstream, server: &Issued) -> Process {
    let (cert, key) = server.write(dir, "server");
    let config = dir.join("keygate.toml");
    std::fs::write(&config, basic_config(up.addr, KEY, &listen_tls(&cert, &key, None))).expect("config");
    Process::serve(Some(&config), &[])
}

/// Poll new connections until one sees `want`, or fail at the deadline.
async fn wait_for_certificate(process: &Process, config: &Arc<ClientConfig>, want: &CertificateDer<'_>) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let seen = TlsConn::connect(process.addr, config.clone()).await.map(|c| c.peer);
        if seen.as_ref().is_ok_and(|der| der == want) {
            return;
        }
        assert!(Instant::now() < deadline, "new certificate not served in time: {seen:?}\n{}", process.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll the process output until it contains `text`, or fail at the deadline.
async fn wait_for_output(process: &Process, text: &str) {
    let deadline = Instant::now() + LIMIT;
    while !process.output().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in the output:\n{}", process.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_and_keeps_open_connections() {
    let dir = tempdir();
    let ca = Ca::new("reload CA");
    let up = Upstream::start().await;
    let first = ca.server();
    let process = serve(dir.path(), &up, &first);
    let keep_alive = client_config(&ca.der(), Offer { alpn: &["http/1.1"], ..Offer::default() });
    let mut open = TlsConn::connect(process.addr, keep_alive).await.unwrap();
    assert_eq!(open.peer, first.der);
    assert_eq!(open.get("/before", &[("x-api-key", KEY)]).await.unwrap().status, 200);

    let second = ca.server();
    second.write(dir.path(), "server");
    process.signal("HUP");
    wait_for_certificate(&process, &client_config(&ca.der(), Offer::default()), &second.der).await;

    let r = open.get("/after", &[("x-api-key", KEY)]).await.expect("the open connection keeps working");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/after");
    assert!(!process.output().contains(KEY), "the plain key was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_pair_keeps_the_old_certificate_and_says_why() {
    let dir = tempdir();
    let ca = Ca::new("reload CA");
    let up = Upstream::start().await;
    let first = ca.server();
    let process = serve(dir.path(), &up, &first);

    // A new certificate next to the old key: a pair that does not match.
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, ca.server().cert_pem).unwrap();
    process.signal("HUP");
    wait_for_output(&process, "reload failed").await;
    let output = process.output();
    let line = output.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains("listen.tls.key"), "no field in: {line}");
    assert!(line.contains(&key.display().to_string()), "no key file in: {line}");
    assert!(line.contains("does not match"), "no reason in: {line}");

    let config = client_config(&ca.der(), Offer::default());
    let mut conn = TlsConn::connect(process.addr, config).await.expect("still serving");
    assert_eq!(conn.peer, first.der, "the old certificate must stay");
    assert_eq!(conn.get("/still", &[("x-api-key", KEY)]).await.unwrap().status, 200);
}
