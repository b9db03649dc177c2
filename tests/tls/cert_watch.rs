//! Certificate files reload themselves when they change, also in an env-only
//! sidecar: a Kubernetes Secret update (the `..data` symlink swap) serves the
//! new pair; a broken pair keeps the old one and logs once.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::tls::*;
use crate::support::*;

const KEY: &str = "cert-watch-key-0123456789abcdef0123456789";

/// Write `issued` into `secret/<version>/` and point `secret/..data` at it
/// the way the kubelet does: a new link, renamed over the old one.
fn kubelet_update(secret: &Path, version: &str, cert_pem: &str, key_pem: &str) {
    let data = secret.join(version);
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("tls.crt"), cert_pem).expect("write cert");
    std::fs::write(data.join("tls.key"), key_pem).expect("write key");
    let tmp = secret.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, secret.join("..data")).expect("swap ..data");
}

/// A mounted Secret holding `first`, and a sidecar configured from the environment alone.
fn sidecar(secret: &Path, up: &Upstream, first: &Issued) -> Process {
    std::fs::create_dir(secret).expect("mkdir");
    kubelet_update(secret, "..2026_01_01", &first.cert_pem, &first.key_pem);
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), secret.join(file)).expect("symlink");
    }
    let (cert, key) = (secret.join("tls.crt"), secret.join("tls.key"));
    let upstream = format!("http://{}", up.addr);
    Process::serve(
        None,
        &[
            ("KEYGATE_UPSTREAM", &upstream),
            ("KEYGATE_LISTEN", "127.0.0.1:0"),
            ("KEYGATE_KEY_BILLING", KEY),
            ("KEYGATE_TLS_CERT", cert.to_str().expect("utf-8")),
            ("KEYGATE_TLS_KEY", key.to_str().expect("utf-8")),
        ],
    )
}

async fn served(process: &Process, ca: &Ca) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
    TlsConn::connect(process.addr, client_config(&ca.der(), Offer::default())).await.map(|c| c.peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_secret_update_serves_the_new_certificate_without_a_signal() {
    let (dir, ca, up) = (tempdir(), Ca::new("watch CA"), Upstream::start().await);
    let (first, second) = (ca.server(), ca.server());
    let secret = dir.path().join("tls");
    let process = sidecar(&secret, &up, &first);
    assert_eq!(served(&process, &ca).await.expect("handshake"), first.der);
    kubelet_update(&secret, "..2026_01_02", &second.cert_pem, &second.key_pem);
    let deadline = Instant::now() + LIMIT;
    loop {
        let seen = served(&process, &ca).await;
        if seen.as_ref().is_ok_and(|der| *der == second.der) {
            break;
        }
        assert!(Instant::now() < deadline, "new certificate not served: {seen:?}\n{}", process.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process.output().contains("file change"), "{}", process.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pair_keeps_the_old_certificate_and_logs_once() {
    let (dir, ca, up) = (tempdir(), Ca::new("watch CA"), Upstream::start().await);
    let (first, second, third) = (ca.server(), ca.server(), ca.server());
    let secret = dir.path().join("tls");
    let process = sidecar(&secret, &up, &first);
    // A certificate with another certificate's key.
    kubelet_update(&secret, "..2026_01_02", &second.cert_pem, &third.key_pem);
    let deadline = Instant::now() + LIMIT;
    while !process.output().contains("reload failed") {
        assert!(Instant::now() < deadline, "no failed reload logged:\n{}", process.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(served(&process, &ca).await.expect("handshake"), first.der, "the old pair still serves");
    }
    let out = process.output();
    assert_eq!(out.matches("reload failed").count(), 1, "{out}");
    assert!(out.contains("does not match the certificate"), "{out}");
}
