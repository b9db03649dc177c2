//! `jwks_url` issuers against a real local JWKS server: keys fetched at
//! start, rotation picked up through the unknown-`kid` refetch (throttled),
//! the last good keys kept when the server fails, and an issuer unreachable
//! at start: key callers served, tokens 401, `/readyz` 503, then healthy.

mod support;

use std::time::Duration;

use support::jwks::{claims, jwks, JwksServer, Signer};
use support::ops::{eventually, readyz};
use support::*;

const KEY: &str = "jwks-url-test-key-41c2";
const ISS: &str = "https://idp.test";
const AUD: &str = "orders-api";

async fn start(up: &Upstream, server: &JwksServer) -> Keygate {
    let jwt = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[auth]\nmax_failures_per_minute = 1000\n\n[[jwt]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
         algorithms = [\"ES256\"]\njwks_url = \"{}\"\njwks_refresh = \"1h\"\n",
        server.url()
    );
    Keygate::start(&basic_config(up.addr, KEY, &jwt)).await
}

async fn status(kg: &Keygate, signer: &Signer) -> u16 {
    let token = signer.sign(&claims(ISS, AUD, "billing", 300));
    get(&kg.url("/x"), &[("authorization", &format!("Bearer {token}"))]).await.status.as_u16()
}

/// Poll (bounded) until a token of `signer` gets `want`.
async fn until(kg: &Keygate, signer: &Signer, want: u16) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if status(kg, signer).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn rotation_is_picked_up_by_an_unknown_kid_and_refetches_are_throttled() {
    let up = Upstream::start().await;
    let (a, b, c) = (Signer::ec("a"), Signer::ec("b"), Signer::ec("c"));
    let server = JwksServer::start(&jwks(&[&a]), false).await;
    let kg = start(&up, &server).await;
    assert!(until(&kg, &a, 200).await, "the first fetch's key is used");
    assert_eq!(readyz(kg.admin.unwrap()).await, Some(200));
    server.set(&jwks(&[&b]));
    assert!(until(&kg, &b, 200).await, "a token with a new kid makes keygate refetch");
    assert_eq!(status(&kg, &a).await, 401, "the rotated-out key no longer verifies");
    let fetched = server.fetches();
    server.set(&jwks(&[&c]));
    for _ in 0..20 {
        assert_eq!(status(&kg, &c).await, 401);
    }
    assert_eq!(server.fetches(), fetched, "a second refetch within 30 s was made");
    kg.stop().await;
}

#[tokio::test]
async fn unreachable_at_start_serves_keys_refuses_tokens_and_is_not_ready_until_it_answers() {
    let up = Upstream::start().await;
    let a = Signer::ec("a");
    let server = JwksServer::start(&jwks(&[&a]), true).await;
    let kg = start(&up, &server).await;
    let admin = kg.admin.unwrap();
    assert_eq!(get(&kg.url("/x"), &[("x-api-key", KEY)]).await.status, 200, "key callers are served");
    let token = a.sign(&claims(ISS, AUD, "billing", 300));
    let r = get(&kg.url("/x"), &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("invalid_token")));
    assert_eq!(readyz(admin).await, Some(503));
    server.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while readyz(admin).await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&kg, &a).await, 200);
    kg.stop().await;
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_keys() {
    let up = Upstream::start().await;
    let (a, b) = (Signer::ec("a"), Signer::ec("b"));
    let server = JwksServer::start(&jwks(&[&a]), false).await;
    let kg = start(&up, &server).await;
    assert!(until(&kg, &a, 200).await);
    server.down.store(true, std::sync::atomic::Ordering::SeqCst);
    // An unknown kid makes keygate refetch; the failure must not drop `a`.
    assert_eq!(status(&kg, &b).await, 401);
    let shared = kg.handle.as_ref().unwrap().shared.clone();
    let failed = || {
        let snap = shared.snapshot.load();
        let remote = snap.jwt.as_ref().unwrap().issuers[0].remote().unwrap().clone();
        remote.failures.load(std::sync::atomic::Ordering::Relaxed) > 0
    };
    assert!(eventually(Duration::from_secs(10), failed).await, "the refetch was not attempted");
    assert_eq!(status(&kg, &a).await, 200);
    assert_eq!(readyz(kg.admin.unwrap()).await, Some(200), "readiness survives an outage after the first fetch");
    kg.stop().await;
}

#[tokio::test]
async fn https_is_verified_against_the_tables_ca() {
    let up = Upstream::start().await;
    let a = Signer::ec("a");
    let dir = tempdir();
    let ca = support::tls::Ca::new("jwks test CA");
    let (cert, key) = ca.server().write(dir.path(), "jwks");
    let server = JwksServer::start_tls(&jwks(&[&a]), &cert, &key).await;
    let ca_path = ca.write(dir.path(), "ca.pem");
    // Trusting the CA: keys fetched. Without it (system roots): never ready.
    for (tls, want) in [(format!("tls = {{ ca = \"{}\" }}\n", ca_path.display()), 200), (String::new(), 401)] {
        let jwt = format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n\n[[jwt]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
             algorithms = [\"ES256\"]\njwks_url = \"{}\"\n{tls}",
            server.url()
        );
        let kg = Keygate::start(&basic_config(up.addr, KEY, &jwt)).await;
        if want == 200 {
            assert!(until(&kg, &a, 200).await, "keys fetched over https with the table's CA");
        } else {
            let failed = || {
                let snap = kg.handle.as_ref().unwrap().shared.snapshot.load();
                snap.jwt.as_ref().unwrap().issuers[0]
                    .remote()
                    .unwrap()
                    .failures
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0
            };
            assert!(eventually(Duration::from_secs(10), failed).await, "no fetch attempted");
            assert_eq!(status(&kg, &a).await, 401);
            assert_eq!(readyz(kg.admin.unwrap()).await, Some(503));
        }
        kg.stop().await;
    }
}
