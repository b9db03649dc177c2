//! `tls_subjects` binds exactly: a certificate whose subject repeats an
//! attribute, or holds more than the binding names, matches no binding, so
//! one certificate never serves two clients.

use rcgen::DnType;

use crate::support::tls::*;
use crate::support::*;
use crate::{start, KEY};

const REPORTING_KEY: &str = "tls-reporting-key-81d2";

/// CN as a second attribute of the same type: rcgen keeps one entry per
/// `DnType`, so the CN OID (2.5.4.3) is given as a custom type.
fn second_cn(value: &str) -> impl FnOnce(&mut rcgen::CertificateParams) + '_ {
    move |p| p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 3]), value)
}

#[tokio::test]
async fn a_certificate_binds_to_the_one_client_whose_subject_it_equals() {
    let clients = Ca::new("clients CA");
    let reporting = format!(
        "tls_subjects = [\"CN=billing\"]\n\n[clients.reporting]\nroutes = [\"*\"]\ntls_subjects = [\"CN=reporting\"]\nkeys = [{{ hash = \"{}\" }}]\n",
        hash(REPORTING_KEY)
    );
    let t = start(Some(&clients), &reporting).await;
    let certs = [
        ("CN=billing", clients.client("billing"), [200, 401]),
        ("CN=reporting", clients.client("reporting"), [401, 200]),
        ("CN=reporting, CN=billing", clients.client_with("reporting", second_cn("billing")), [401, 401]),
        ("CN=billing, CN=billing", clients.client_with("billing", second_cn("billing")), [401, 401]),
        (
            "CN=billing, O=Acme",
            clients.client_with("billing", |p| p.distinguished_name.push(DnType::OrganizationName, "Acme")),
            [401, 401],
        ),
        ("CN=Billing", clients.client("Billing"), [401, 401]),
    ];
    for (subject, cert, want) in certs {
        for (key, want) in [KEY, REPORTING_KEY].into_iter().zip(want) {
            let config = client_config(&t.ca.der(), Offer { cert: Some(&cert), ..Offer::default() });
            let r = tls_get(t.kg.addr, config, "/bound", &[("x-api-key", key)]).await.unwrap();
            assert_eq!(r.status, want, "certificate {subject} with key {key}");
        }
    }
    t.kg.stop().await;
}

#[test]
fn check_refuses_a_subject_that_is_not_attribute_value_pairs_once_each() {
    for bad in ["CN", "CN=", "=billing", "CN=a, CN=b", "CN=a, cn=a", ""] {
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstreams.u]\nservers = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n[clients.billing]\nroutes = [\"*\"]\ntls_subjects = [\"{bad}\"]\n"
        );
        let err =
            keygate::config::load_str(&text, std::path::Path::new("k.toml"), &Default::default()).expect_err("refused");
        let needle = format!("k.toml:11:17: clients.billing.tls_subjects: \"{bad}\" is not a subject");
        assert!(err.to_string().contains(&needle), "{bad}: {err}");
    }
}
