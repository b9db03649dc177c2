//! Client certificates: required when `client_ca` is set, and bound to a
//! client's keys by `tls_subjects`.

use crate::support::tls::*;
use crate::{assert_forwarded_over_https, start, KEY};

/// The handshake (or, with TLS 1.3, the first read after it) fails with a TLS alert.
fn assert_refused_by_tls(result: Result<crate::support::Reply, String>) {
    let err = result.expect_err("keygate must refuse the connection");
    assert!(err.contains("alert") || err.contains("Alert"), "not a TLS refusal: {err}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let clients = Ca::new("clients CA");
    let t = start(Some(&clients), "").await;
    let config = client_config(&t.ca.der(), Offer::default());
    assert_refused_by_tls(tls_get(t.kg.addr, config, "/", &[("x-api-key", KEY)]).await);
    assert_eq!(t.up.count(), 0);
    t.kg.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let clients = Ca::new("clients CA");
    let t = start(Some(&clients), "").await;
    let stranger = Ca::new("another CA").client("billing");
    let config = client_config(&t.ca.der(), Offer { cert: Some(&stranger), ..Offer::default() });
    assert_refused_by_tls(tls_get(t.kg.addr, config, "/", &[("x-api-key", KEY)]).await);
    assert_eq!(t.up.count(), 0);
    t.kg.stop().await;
}

#[tokio::test]
async fn a_certificate_from_the_client_ca_is_accepted() {
    let clients = Ca::new("clients CA");
    let t = start(Some(&clients), "").await;
    let good = clients.client("anyone");
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        let offer = Offer { cert: Some(&good), alpn, ..Offer::default() };
        let config = client_config(&t.ca.der(), offer);
        let r = tls_get(t.kg.addr, config, "/mtls", &[("x-api-key", KEY)]).await.unwrap();
        assert_eq!(r.status, 200, "over {alpn:?}");
        assert_forwarded_over_https(&t.up, "/mtls");
    }
    t.kg.stop().await;
}

#[tokio::test]
async fn tls_subjects_bind_a_key_to_a_certificate_subject() {
    let clients = Ca::new("clients CA");
    let t = start(Some(&clients), "tls_subjects = [\"CN=billing\"]\n").await;
    let other = clients.client("other");
    let config = client_config(&t.ca.der(), Offer { cert: Some(&other), ..Offer::default() });
    let r = tls_get(t.kg.addr, config, "/bound", &[("x-api-key", KEY)]).await.unwrap();
    assert_eq!(r.status, 401, "a good key with the wrong certificate subject");
    assert_eq!(r.json()["error"], "invalid_api_key");
    assert_eq!(t.up.count(), 0);

    let billing = clients.client("billing");
    let config = client_config(&t.ca.der(), Offer { cert: Some(&billing), ..Offer::default() });
    let r = tls_get(t.kg.addr, config, "/bound", &[("x-api-key", KEY)]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_forwarded_over_https(&t.up, "/bound");
    t.kg.stop().await;
}
