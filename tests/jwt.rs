//! Bearer tokens end to end: each algorithm accepted, every known attack
//! refused with 401 and nothing forwarded, scopes, claims copied to headers
//! (spoofed copies removed), one rate budget for key and token callers, and
//! failed tokens counted by the throttle. Tokens are signed here, with keys
//! generated for the test.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use support::jwks::{claims, jwks, now, tampered, unsigned, Signer};
use support::*;

const KEY: &str = "jwt-test-key-9d41";
const ISS: &str = "https://auth.test";
const HS_ISS: &str = "https://hs.test";
const AUD: &str = "orders-api";
const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

struct Keys {
    rsa: Signer,
    ec: Signer,
    ed: Signer,
    hs: Signer,
}

fn keys() -> Keys {
    Keys { rsa: Signer::rsa("r1"), ec: Signer::ec("e1"), ed: Signer::ed("d1"), hs: Signer::hmac(SECRET.as_bytes()) }
}

/// Two issuers (public keys from a file; an HMAC secret from the
/// environment), a scoped route, client `billing` (key + tokens) and `other`.
fn config(up: std::net::SocketAddr, dir: &Path, k: &Keys, extra: &str, burst: u32) -> String {
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks(&[&k.rsa, &k.ec, &k.ed])).unwrap();
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.main]
servers = ["http://{up}"]

[[routes]]
name = "all"
path = "/"
upstream = "main"

[[routes]]
name = "orders"
path = "/orders"
upstream = "main"
scopes = ["orders:read"]

[clients.billing]
routes = ["*"]
keys = [{{ hash = "{hash}" }}]
rate_limit = {{ per_second = 0.01, burst = {burst} }}

[clients.other]
routes = ["all"]

[[jwt]]
issuer = "{ISS}"
audiences = ["{AUD}", "second-api"]
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_file = "{file}"
headers = {{ "X-Tenant" = "tenant" }}

[[jwt]]
issuer = "{HS_ISS}"
audiences = ["{AUD}"]
algorithms = ["HS256"]
secret_env = "TEST_JWT_SECRET"
{extra}"#,
        hash = hash(KEY),
        file = file.display()
    )
}

async fn start(up: &Upstream, k: &Keys, extra: &str) -> (Keygate, tempfile::TempDir) {
    start_with_burst(up, k, extra, 100).await
}

async fn start_with_burst(up: &Upstream, k: &Keys, extra: &str, burst: u32) -> (Keygate, tempfile::TempDir) {
    let dir = tempdir();
    let env = BTreeMap::from([("TEST_JWT_SECRET".to_string(), SECRET.to_string())]);
    (Keygate::start_with_env(&config(up.addr, dir.path(), k, extra, burst), &env).await, dir)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn each_algorithm_is_accepted_and_the_token_is_not_forwarded() {
    let up = Upstream::start().await;
    let k = keys();
    let (kg, _dir) = start(&up, &k, "").await;
    let mut c = claims(ISS, AUD, "billing", 300);
    c["tenant"] = json!("acme");
    for signer in [&k.rsa, &k.ec, &k.ed, &k.hs] {
        let mut c = c.clone();
        if signer.alg == Algorithm::HS256 {
            c["iss"] = json!(HS_ISS);
        }
        let token = signer.sign(&c);
        let r = get(&kg.url("/x"), &[("authorization", &bearer(&token))]).await;
        assert_eq!(r.status, 200, "{:?}: {:?}", signer.alg, r.body);
        let seen = up.last();
        assert_eq!(seen.headers.get("x-client-id").unwrap(), "billing");
        assert!(seen.headers.get("authorization").is_none(), "{:?}: the token was forwarded", signer.alg);
        let tenant = seen.headers.get("x-tenant").map(|v| v.to_str().unwrap().to_string());
        let want = (signer.alg != Algorithm::HS256).then(|| "acme".to_string());
        assert_eq!(tenant, want, "{:?}", signer.alg);
    }
    kg.stop().await;
}

#[tokio::test]
async fn every_attack_is_401_and_nothing_reaches_the_upstream() {
    let up = Upstream::start().await;
    let k = keys();
    let (kg, _dir) = start(&up, &k, "").await;
    let good = claims(ISS, AUD, "billing", 300);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let stranger = Signer::ec("e1");
    let unknown_kid = Signer::ec("e9");
    let mut none_header = json!({"alg": "none", "typ": "JWT"});
    let confusion = Signer::hmac(&k.rsa.public_pem);
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("r1".into());
    let mut ps_header = Header::new(Algorithm::PS256);
    ps_header.kid = Some("r1".into());
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", k.ec.sign(&with(&|c| c["exp"] = json!(now() - 3600))), "expired"),
        ("not yet valid", k.ec.sign(&with(&|c| c["nbf"] = json!(now() + 3600))), "not yet valid"),
        ("issued in the future", k.ec.sign(&with(&|c| c["iat"] = json!(now() + 3600))), "not yet valid"),
        ("missing exp", k.ec.sign(&with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))), "lifetime"),
        ("wrong aud", k.ec.sign(&with(&|c| c["aud"] = json!("billing-api"))), "audience"),
        ("missing aud", k.ec.sign(&with(&|c| drop(c.as_object_mut().unwrap().remove("aud")))), "audience"),
        ("unknown iss", k.ec.sign(&with(&|c| c["iss"] = json!("https://evil.test"))), "issuer"),
        ("missing iss", k.ec.sign(&with(&|c| drop(c.as_object_mut().unwrap().remove("iss")))), "issuer"),
        ("unknown kid", unknown_kid.sign(&good), "signature"),
        ("forged signature", stranger.sign(&good), "signature"),
        ("tampered payload", tampered(&k.ec.sign(&with(&|c| c["sub"] = json!("other"))), &good), "signature"),
        ("alg none", unsigned(&none_header, &good, ""), "algorithm"),
        ("HS256 with the RSA public key", confusion.sign_header(&hs_header, &good), "algorithm"),
        ("PS256 outside the allowlist", k.rsa.sign_header(&ps_header, &good), "algorithm"),
        ("token of another issuer's key", k.hs.sign(&good), "algorithm"),
        ("payload not JSON", format!("{}.bm90LWpzb24.c2ln", k.ec.sign(&good).split('.').next().unwrap()), "malformed"),
    ];
    none_header["kid"] = json!("e1");
    let with_kid = unsigned(&none_header, &good, "");
    let before = up.count();
    for (name, token, check) in cases.iter().map(|(n, t, c)| (*n, t.as_str(), *c)).chain([(
        "alg none with kid",
        with_kid.as_str(),
        "algorithm",
    )]) {
        let r = get(&kg.url("/x"), &[("authorization", &bearer(token))]).await;
        assert_eq!(r.status, 401, "{name}: {:?}", r.body);
        let body = r.json();
        assert_eq!(body["error"], "invalid_token", "{name}");
        assert_eq!(body["message"], format!("Invalid token: {check}"), "{name}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""), "{name}");
    }
    assert_eq!(up.count(), before, "a refused token reached the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn route_scopes_bind_token_callers_only() {
    let up = Upstream::start().await;
    let k = keys();
    let (kg, _dir) = start(&up, &k, "").await;
    let scoped = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(ISS, AUD, "billing", 300);
        f(&mut c);
        k.ed.sign(&c)
    };
    for (name, token, status) in [
        ("scope string", scoped(&|c| c["scope"] = json!("profile orders:read")), 200),
        ("scp list", scoped(&|c| c["scp"] = json!(["orders:read"])), 200),
        ("no scope", scoped(&|_| {}), 403),
        ("other scope", scoped(&|c| c["scope"] = json!("orders:write orders:readx")), 403),
    ] {
        let r = get(&kg.url("/orders/1"), &[("authorization", &bearer(&token))]).await;
        assert_eq!(r.status, status, "{name}: {:?}", r.body);
        if status == 403 {
            assert_eq!(r.json()["error"], "insufficient_scope", "{name}");
            let want = "Bearer error=\"insufficient_scope\", scope=\"orders:read\"";
            assert_eq!(r.header("www-authenticate"), Some(want), "{name}");
        }
    }
    // Scopes do not bind key callers, and unscoped routes take any token.
    assert_eq!(get(&kg.url("/orders/1"), &[("x-api-key", KEY)]).await.status, 200);
    assert_eq!(get(&kg.url("/x"), &[("authorization", &bearer(&scoped(&|_| {})))]).await.status, 200);
    kg.stop().await;
}

#[tokio::test]
async fn a_valid_token_naming_no_client_is_forbidden_and_key_with_token_is_400() {
    let up = Upstream::start().await;
    let k = keys();
    let (kg, _dir) = start(&up, &k, "").await;
    let nobody = k.ec.sign(&claims(ISS, AUD, "nobody", 300));
    let r = get(&kg.url("/x"), &[("authorization", &bearer(&nobody))]).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].clone()), (403, json!("forbidden")));
    // The token's client may not call the route: forbidden, as for its keys.
    let other = k.ec.sign(&json!({"iss": ISS, "aud": AUD, "sub": "other", "exp": now() + 300, "scope": "orders:read"}));
    assert_eq!(get(&kg.url("/orders"), &[("authorization", &bearer(&other))]).await.status, 403);
    let token = k.ec.sign(&claims(ISS, AUD, "billing", 300));
    let before = up.count();
    for headers in [
        vec![("x-api-key", KEY), ("authorization", bearer(&token).leak() as &str)],
        vec![("authorization", bearer(&token).leak()), ("authorization", bearer(KEY).leak())],
        vec![("authorization", bearer(&token).leak()), ("authorization", bearer(&token).leak())],
    ] {
        let r = get(&kg.url("/x"), &headers).await;
        assert_eq!(r.status, 400, "{headers:?}");
    }
    assert_eq!(up.count(), before);
    kg.stop().await;
}

#[tokio::test]
async fn a_key_caller_and_a_token_caller_share_one_budget() {
    let up = Upstream::start().await;
    let k = keys();
    let (kg, _dir) = start_with_burst(&up, &k, "", 3).await;
    let token = bearer(&k.rsa.sign(&claims(ISS, AUD, "billing", 300)));
    let statuses = [
        get(&kg.url("/x"), &[("x-api-key", KEY)]).await.status,
        get(&kg.url("/x"), &[("authorization", &token)]).await.status,
        get(&kg.url("/x"), &[("x-api-key", KEY)]).await.status,
        get(&kg.url("/x"), &[("authorization", &token)]).await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 200, 429]);
    kg.stop().await;
}

#[tokio::test]
async fn claim_headers_replace_every_spelling_the_caller_sent() {
    let up = Upstream::start().await;
    let k = keys();
    let (kg, _dir) = start(&up, &k, "").await;
    let spoof = [("x-tenant", "evil"), ("X_Tenant", "evil2")];
    let mut c = claims(ISS, AUD, "billing", 300);
    c["tenant"] = json!(42);
    let token = bearer(&k.ec.sign(&c));
    let mut headers = vec![("authorization", token.as_str())];
    headers.extend(spoof);
    assert_eq!(get(&kg.url("/x"), &headers).await.status, 200);
    let seen = up.last();
    let tenant: Vec<_> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.as_str().replace('_', "-") == "x-tenant")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(tenant, ["42"]);
    // A key caller cannot set the claim header either; a token without the claim sets none.
    let mut headers = vec![("x-api-key", KEY)];
    headers.extend(spoof);
    assert_eq!(get(&kg.url("/x"), &headers).await.status, 200);
    assert!(up.last().headers.iter().all(|(n, _)| n.as_str().replace('_', "-") != "x-tenant"));
    kg.stop().await;
}

#[tokio::test]
async fn failed_tokens_feed_the_throttle() {
    let up = Upstream::start().await;
    let k = keys();
    let (kg, _dir) = start(&up, &k, "[auth]\nmax_failures_per_minute = 3\n").await;
    let bad = bearer(&Signer::ec("e1").sign(&claims(ISS, AUD, "billing", 300)));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&kg.url("/x"), &[("authorization", &bad)]).await.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_names_issuer_and_client_and_never_the_token_even_at_trace() {
    let up = Upstream::start().await;
    let k = keys();
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config(up.addr, dir.path(), &k, "", 100)).unwrap();
    let env = [("TEST_JWT_SECRET", SECRET), ("KEYGATE_LOG", "trace"), ("KEYGATE_LOG_FORMAT", "json")];
    let p = Process::serve(Some(&path), &env);
    let good = k.ec.sign(&claims(ISS, AUD, "billing", 300));
    let bad = Signer::ec("e1").sign(&claims(ISS, AUD, "billing", 300));
    for (token, id) in [(&good, "jwt-log-1"), (&bad, "jwt-log-2")] {
        get(&format!("http://{}/x", p.addr), &[("authorization", &bearer(token)), ("x-request-id", id)]).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let out = p.output();
        if let Some(l) = out.lines().find(|l| l.contains("keygate::access") && l.contains("jwt-log-1")) {
            break l.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no access line in {out}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!((v["client"].as_str(), v["key"].as_str()), (Some("billing"), Some("jwt:https://auth.test")), "{v}");
    let out = p.output();
    for token in [&good, &bad] {
        for part in token.split('.') {
            assert!(!out.contains(part), "a part of a token was logged");
        }
    }
}

#[tokio::test]
async fn explain_agrees_with_live_requests_on_tokens() {
    let up = Upstream::start().await;
    let k = keys();
    let (kg, _dir) = start(&up, &k, "").await;
    let scoped =
        k.ec.sign(&json!({"iss": ISS, "aud": AUD, "sub": "billing", "exp": now() + 300, "scope": "orders:read"}));
    let unscoped = k.ec.sign(&claims(ISS, AUD, "billing", 300));
    let expired = k.ec.sign(&claims(ISS, AUD, "billing", -3600));
    let snap = kg.handle.as_ref().unwrap().shared.snapshot.load_full();
    for (token, path, status, code) in [
        (&scoped, "/orders/1", 200, None),
        (&unscoped, "/orders/1", 403, Some("insufficient_scope")),
        (&unscoped, "/x", 200, None),
        (&expired, "/x", 401, Some("invalid_token")),
    ] {
        let live = get(&kg.url(path), &[("authorization", &bearer(token))]).await;
        let req = http::Request::get(path).header("host", "localhost").header("authorization", bearer(token));
        let req = req.body(()).unwrap();
        let report =
            keygate::cli::explain::explain(&snap, &req.into_parts().0, keygate::cli::explain::Caller::Credentials);
        assert_eq!((live.status.as_u16(), report.status, report.code), (status, status, code), "{path}");
        if status == 200 {
            assert!(
                report.lines.iter().any(|l| l.contains("token (jwt:https://auth.test) of client billing")),
                "{:?}",
                report.lines
            );
        }
    }
    kg.stop().await;
}
