//! https upstreams: verified against `tls.ca`, never connected unverified.

use crate::support::tls::*;
use crate::support::*;
use crate::KEY;

/// A gateway config in front of one https upstream server, `tls.ca` when given.
fn https_config(port: u16, ca: Option<&std::path::Path>) -> String {
    let ca = ca.map_or(String::new(), |p| format!("tls.ca = \"{}\"\n", p.display()));
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.secure]
servers = ["https://localhost:{port}"]
{ca}
[[routes]]
name = "all"
path = "/"
upstream = "secure"

[clients.billing]
routes = ["*"]
keys = [{{ hash = "{hash}" }}]
"#,
        hash = hash(KEY)
    )
}

/// An https upstream whose certificate, signed by a private CA, names `names`.
async fn https_upstream_for(dir: &std::path::Path, names: &[&str]) -> (Upstream, std::path::PathBuf) {
    let ca = Ca::new("internal CA");
    let (cert, key) = ca.server_for(names).write(dir, "upstream");
    let up = Upstream::start_tls(&cert, &key).await;
    (up, ca.write(dir, "internal-ca.pem"))
}

/// An https upstream with a certificate for `localhost` alone (no IP address):
/// only a caller that verifies, and sends SNI, for the URL's host reaches it.
async fn https_upstream(dir: &std::path::Path) -> (Upstream, std::path::PathBuf) {
    https_upstream_for(dir, &["localhost"]).await
}

#[tokio::test]
async fn an_https_upstream_signed_by_tls_ca_is_reached() {
    let dir = tempdir();
    let (up, ca) = https_upstream(dir.path()).await;
    let kg = Keygate::start(&https_config(up.addr.port(), Some(&ca))).await;
    let r = get(&kg.url("/secure?q=1"), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = up.last();
    assert_eq!(seen.uri, "/secure?q=1");
    assert!(seen.headers.get("x-api-key").is_none());
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_fails_verification_is_a_502_and_logged() {
    let dir = tempdir();
    let (up, _ca) = https_upstream(dir.path()).await;
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, https_config(up.addr.port(), None)).unwrap();
    let process = Process::serve(Some(&config), &[]);
    let r = get(&format!("http://{}/secure", process.addr), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert_eq!(up.count(), 0, "no request may reach an unverified upstream");
    let deadline = std::time::Instant::now() + LIMIT;
    let logged = |out: &str| out.lines().any(|l| l.contains("upstream request failed") && l.contains("tls"));
    while !logged(&process.output()) {
        assert!(std::time::Instant::now() < deadline, "no upstream TLS failure logged:\n{}", process.output());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_https_upstream_whose_certificate_names_another_host_is_a_502() {
    let dir = tempdir();
    let (up, ca) = https_upstream_for(dir.path(), &["orders.internal"]).await;
    let kg = Keygate::start(&https_config(up.addr.port(), Some(&ca))).await;
    let r = get(&kg.url("/secure"), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 502, "a certificate for another host must not be accepted");
    assert_eq!(up.count(), 0);
    kg.stop().await;
}
