//! Clients other than rustls: curl with HTTP/2, and openssl offering TLS 1.1.

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::support::tls::*;
use crate::{assert_forwarded_over_https, start, KEY};

/// Run `cmd` with no input, bounded by [`LIMIT`]; a missing program fails the test.
pub async fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish in time"))
        .expect("command output")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn curl_http2_verifies_with_cacert_and_is_forwarded() {
    let t = start(None, "").await;
    let ca = t.ca.write(t.dir.path(), "ca.pem");
    let port = t.kg.addr.port();
    let out = run(Command::new("curl")
        .args(["--http2", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .arg("--cacert")
        .arg(&ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-H", &format!("X-API-Key: {KEY}")])
        .arg(format!("https://localhost:{port}/curl?z=3")))
    .await;
    assert!(out.status.success(), "curl failed: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200", "HTTP version and status");
    assert_forwarded_over_https(&t.up, "/curl?z=3");
    t.kg.stop().await;
}

async fn s_client(addr: SocketAddr, version: &str) -> Output {
    run(Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", "localhost", version])
        .args(["-cipher", "DEFAULT:@SECLEVEL=0"]))
    .await
}

/// Whether this machine's openssl really offers TLS 1.1: the ClientHello it
/// sends to a listener that only records must carry version 3.2 (TLS 1.1).
async fn openssl_offers_tls11() -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sniff = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.ok()?;
        let mut hello = [0u8; 11];
        tcp.read_exact(&mut hello).await.ok()?;
        Some(hello)
    });
    let out = s_client(addr, "-tls1_1").await;
    if !text(&out).contains("CONNECTED") {
        sniff.abort();
        return Err(format!("openssl -tls1_1 does not even connect: {}", text(&out).trim()));
    }
    let hello = tokio::time::timeout(LIMIT, sniff).await.ok().and_then(|r| r.ok()).flatten();
    match hello {
        // Record type handshake, message ClientHello, client_version 3.2.
        Some(h) if h[0] == 0x16 && h[5] == 0x01 && h[9..11] == [3, 2] => Ok(()),
        Some(h) => Err(format!("openssl -tls1_1 sent no TLS 1.1 ClientHello: {h:02x?}")),
        None => Err("openssl -tls1_1 connected but sent no ClientHello".into()),
    }
}

#[tokio::test]
async fn tls11_and_cbc_suites_are_refused_and_tls12_is_served_to_openssl() {
    let t = start(None, "").await;
    // Control: the same client and flags succeed with TLS 1.2.
    let ok = s_client(t.kg.addr, "-tls1_2").await;
    assert!(ok.status.success() && text(&ok).contains("TLSv1.2"), "openssl -tls1_2: {}", text(&ok));
    // Only AEAD suites: TLS 1.2 with CBC suites alone is refused.
    let cbc = run(Command::new("openssl")
        .args(["s_client", "-connect", &t.kg.addr.to_string(), "-servername", "localhost", "-tls1_2"])
        .args(["-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:AES128-SHA:AES256-SHA"]))
    .await;
    assert!(!cbc.status.success() && text(&cbc).contains("Cipher is (NONE)"), "CBC accepted: {}", text(&cbc));
    match openssl_offers_tls11().await {
        Err(reason) => println!("SKIPPED the TLS 1.1 half: this machine's client cannot offer TLS 1.1 ({reason})"),
        Ok(()) => {
            let out = s_client(t.kg.addr, "-tls1_1").await;
            let all = text(&out);
            assert!(!out.status.success(), "TLS 1.1 was accepted: {all}");
            assert!(all.contains("Cipher is (NONE)"), "a TLS 1.1 session was set up: {all}");
            // rustls answers an offer without TLS 1.2 or 1.3 with a handshake_failure alert.
            assert!(all.contains("alert handshake failure"), "not refused by keygate: {all}");
        }
    }
    t.kg.stop().await;
}
