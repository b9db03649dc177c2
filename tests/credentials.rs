//! The credential step end to end: every copy of the key stripped (query names
//! in any spelling, every `Authorization` value), duplicates refused, header
//! names in either spelling, the credential header, header rules, raw keys in
//! `Authorization` and the realm — asserted on what a real upstream received.

mod support;

use std::net::SocketAddr;

use http::HeaderMap;
use support::*;

const KEY: &str = "credentials-test-key-7f3a";

/// Every value of `name` the upstream received, in any letter case and with `_` for `-`.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.as_str().replace('_', "-") == name.replace('_', "-"))
        .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Whether the key appears anywhere in what the upstream received.
fn key_reached(r: &Received) -> bool {
    r.uri.contains(KEY) || r.headers.values().any(|v| String::from_utf8_lossy(v.as_bytes()).contains(KEY))
}

async fn start(up: SocketAddr, extra: &str) -> Keygate {
    Keygate::start(&basic_config(up, KEY, extra)).await
}

#[tokio::test]
async fn query_key_names_are_stripped_in_any_spelling() {
    let up = Upstream::start().await;
    let kg = start(up.addr, "[auth]\nquery_param = \"api_key\"\n").await;
    for query in [
        format!("api%5Fkey={KEY}&page=2"),
        format!("API_KEY={KEY}&page=2"),
        format!("page=2&Api%5fKey={KEY}"),
        format!("%61pi_key={KEY}&page=2"),
    ] {
        let r = get(&kg.url(&format!("/x?{query}")), &[("x-api-key", KEY)]).await;
        assert_eq!(r.status, 200, "{query}: {:?}", r.body);
        let seen = up.last();
        assert_eq!(seen.uri, "/x?page=2", "{query}");
        assert!(!key_reached(&seen), "{query}: the key reached the upstream");
    }
    // The folded name is also where a key is read from.
    let r = get(&kg.url(&format!("/x?API%5FKEY={KEY}&b=1")), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.last().uri, "/x?b=1");
    kg.stop().await;
}

/// Headers sent next to the key header, and the `Authorization` values the upstream must get.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

#[tokio::test]
async fn every_authorization_value_carrying_the_key_is_removed() {
    let up = Upstream::start().await;
    let kg = start(up.addr, "").await;
    let cases: [Case<'_>; 6] = [
        (
            &[("authorization", "Basic dXNlcjpwdw=="), ("authorization", &format!("Bearer {KEY}"))],
            &["Basic dXNlcjpwdw=="],
        ),
        (&[("authorization", &format!("Bearer\t{KEY}"))], &[]),
        (&[("authorization", &format!("bearer   {KEY}"))], &[]),
        (&[("authorization", &format!("Token {KEY}"))], &[]),
        (&[("authorization", KEY)], &[]),
        (&[("authorization", "Bearer user-token")], &["Bearer user-token"]),
    ];
    for (extra, kept) in cases {
        let mut headers = vec![("x-api-key", KEY)];
        headers.extend_from_slice(extra);
        let r = get(&kg.url("/x"), &headers).await;
        assert_eq!(r.status, 200, "{extra:?}: {:?}", r.body);
        let seen = up.last();
        assert_eq!(values(&seen.headers, "authorization"), kept, "{extra:?}");
        assert!(!key_reached(&seen), "{extra:?}: the key reached the upstream");
    }
    kg.stop().await;
}

#[tokio::test]
async fn a_key_in_a_later_authorization_value_is_read_and_only_it_removed() {
    let up = Upstream::start().await;
    let kg = start(up.addr, "").await;
    let bearer = format!("Bearer {KEY}");
    let r = get(&kg.url("/x"), &[("authorization", "Basic dXNlcjpwdw=="), ("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(values(&up.last().headers, "authorization"), ["Basic dXNlcjpwdw=="]);
    kg.stop().await;
}

#[tokio::test]
async fn two_values_for_the_key_in_one_place_are_refused() {
    let up = Upstream::start().await;
    let kg = start(up.addr, "[auth]\nquery_param = \"api_key\"\n").await;
    let bearer = format!("Bearer {KEY}");
    let cases: [(String, Vec<(&str, &str)>); 5] = [
        (format!("/x?api_key={KEY}&api_key=junk"), vec![]),
        (format!("/x?api_key={KEY}&api_key={KEY}"), vec![]),
        (format!("/x?api_key={KEY}&API%5FKEY=junk"), vec![]),
        ("/x".into(), vec![("x-api-key", KEY), ("x-api-key", "junk")]),
        ("/x".into(), vec![("authorization", bearer.as_str()), ("authorization", "Bearer junk")]),
    ];
    for (path, headers) in &cases {
        let r = get(&kg.url(path), headers).await;
        assert_eq!(r.status, 401, "{path} {headers:?}");
        assert_eq!(r.json()["error"], "invalid_api_key", "{path} {headers:?}");
    }
    assert_eq!(up.count(), 0, "nothing reaches the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn path_override_and_other_gateways_identity_headers_are_stripped() {
    let up = Upstream::start().await;
    let kg = start(up.addr, "").await;
    let spoofs = [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Consumer-Username",
        "X-Consumer-ID",
        "X-Consumer-Custom-ID",
        "X-Credential-Identifier",
        "X-Anonymous-Consumer",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Auth-Request-User",
        "X-Auth-Request-Email",
        "X_Consumer_Username",
    ];
    let mut headers: Vec<(&str, &str)> = spoofs.iter().map(|n| (*n, "/admin")).collect();
    headers.push(("x-api-key", KEY));
    headers.push(("x-kept", "1"));
    let r = get(&kg.url("/x?_method=DELETE"), &headers).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = up.last();
    for name in spoofs {
        assert!(values(&seen.headers, &name.to_ascii_lowercase()).is_empty(), "{name} reached the upstream");
    }
    assert_eq!(values(&seen.headers, "x-kept"), ["1"]);
    assert_eq!(seen.uri, "/x?_method=DELETE", "_method is left to the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn header_names_configured_with_underscores_cover_both_spellings() {
    let up = Upstream::start().await;
    let kg = start(up.addr, "[auth]\nheader = \"api_key\"\nidentity_header = \"x_client_id\"\n").await;
    let headers = [("api_key", KEY), ("api-key", KEY), ("X-Client-Id", "admin"), ("x_client-id", "admin")];
    let r = get(&kg.url("/x"), &headers).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = up.last();
    assert!(values(&seen.headers, "api-key").is_empty(), "the key in its other spelling reached the upstream");
    assert_eq!(values(&seen.headers, "x-client-id"), ["billing"], "one identity header, keygate's");
    assert!(seen.headers.get("x_client_id").is_some(), "set as configured");
    kg.stop().await;
}

/// A client `billing` with a named key and an unnamed one.
fn named_keys(up: SocketAddr, extra: &str) -> String {
    let clients = format!(
        "[clients.billing]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\", name = \"2026-12\" }}, {{ hash = \"{}\" }}]\n",
        hash(KEY),
        hash("second-key-of-billing-0001")
    );
    gateway_config(&[up], "", &format!("{clients}{extra}"))
}

#[tokio::test]
async fn credential_header_carries_the_keys_name_or_fingerprint_never_the_key() {
    let up = Upstream::start().await;
    let extra = "[admin]\naddress = \"127.0.0.1:0\"\n[auth]\ncredential_header = \"X-Credential-Id\"\n";
    let kg = Keygate::start(&named_keys(up.addr, extra)).await;
    let r = get(&kg.url("/x"), &[("x-api-key", KEY), ("x-credential-id", "forged"), ("x_credential_id", "f")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(values(&up.last().headers, "x-credential-id"), ["2026-12"]);
    let r = get(&kg.url("/x"), &[("x-api-key", "second-key-of-billing-0001")]).await;
    assert_eq!(r.status, 200);
    let fingerprint = &hash("second-key-of-billing-0001")["sha256:".len().."sha256:".len() + 8];
    assert_eq!(values(&up.last().headers, "x-credential-id"), [fingerprint]);
    let admin = kg.admin.expect("admin listener");
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("key=\"2026-12\""), "the name labels the key's series:\n{text}");
    assert!(!text.contains(KEY));
    kg.stop().await;
}

#[tokio::test]
async fn credential_header_is_off_by_default() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&named_keys(up.addr, "")).await;
    let r = get(&kg.url("/x"), &[("x-api-key", KEY), ("x-credential-id", "forged")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(values(&up.last().headers, "x-credential-id"), ["forged"], "not a header keygate owns unless set");
    kg.stop().await;
}

#[tokio::test]
async fn header_rules_remove_then_set_globally_and_per_route_and_keygate_wins() {
    let up = Upstream::start().await;
    let clients = billing_client(KEY);
    let rest = format!(
        r#"[request_headers]
remove = ["X-Debug", "X-Internal-*"]
set = {{ "X-Env" = "prod", "X-Team" = "core" }}

[[routes]]
name = "reports"
path = "/reports"
upstream = "main"
request_headers = {{ remove = ["X-Trace"], set = {{ "X-Env" = "reports" }} }}

{clients}"#
    );
    let kg = Keygate::start(&gateway_config(&[up.addr], "", &rest)).await;
    let sent = [
        ("x-api-key", KEY),
        ("x-debug", "1"),
        ("x_internal_token", "1"),
        ("x-trace", "1"),
        ("x-env", "dev"),
        ("x-client-id", "admin"),
    ];
    let r = get(&kg.url("/orders"), &sent).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = up.last();
    assert!(values(&seen.headers, "x-debug").is_empty() && values(&seen.headers, "x-internal-token").is_empty());
    assert_eq!(values(&seen.headers, "x-trace"), ["1"], "the route's rule applies to its route only");
    assert_eq!(values(&seen.headers, "x-env"), ["prod"]);
    assert_eq!(values(&seen.headers, "x-team"), ["core"]);
    assert_eq!(values(&seen.headers, "x-client-id"), ["billing"]);
    let r = get(&kg.url("/reports/1"), &sent).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(values(&seen.headers, "x-trace").is_empty() && values(&seen.headers, "x-debug").is_empty());
    assert_eq!(values(&seen.headers, "x-env"), ["reports"], "the route's set wins over the global one");
    assert_eq!(values(&seen.headers, "x-team"), ["core"]);
    kg.stop().await;
}

#[tokio::test]
async fn a_raw_key_in_authorization_only_when_enabled() {
    let up = Upstream::start().await;
    let off = start(up.addr, "").await;
    let r = get(&off.url("/x"), &[("authorization", KEY)]).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].clone()), (401, "missing_api_key".into()));
    off.stop().await;
    let on = start(up.addr, "[auth]\nauthorization_schemes = [\"Bearer\", \"\"]\n").await;
    let r = get(&on.url("/x"), &[("authorization", KEY)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(values(&up.last().headers, "authorization").is_empty(), "stripped like any key");
    let r = get(&on.url("/x"), &[("authorization", "Basic dXNlcjpwdw==")]).await;
    assert_eq!(r.status, 401, "a value with a scheme is never a raw key");
    on.stop().await;
}

#[tokio::test]
async fn the_challenge_names_the_realm_and_the_expected_scheme() {
    let up = Upstream::start().await;
    for (auth, want) in [
        ("", "Bearer realm=\"keygate\""),
        ("realm = \"orders\"", "Bearer realm=\"orders\""),
        ("realm = \"orders\"\nauthorization_schemes = [\"Token\", \"Bearer\"]", "Token realm=\"orders\""),
        ("realm = \"orders\"\nauthorization_schemes = []", "ApiKey realm=\"orders\""),
    ] {
        let kg = start(up.addr, &format!("[auth]\n{auth}\n")).await;
        let r = get(&kg.url("/x"), &[]).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some(want), "{auth}");
        kg.stop().await;
    }
}

/// `check`'s message for `toml` (which must be refused).
fn refused(toml: &str) -> String {
    let path = std::path::Path::new("keygate.toml");
    match keygate::config::load_str(toml, path, &Default::default()) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn check_refuses_bad_rules_names_and_realms_with_their_position() {
    let up: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let base = basic_config(up, KEY, "");
    let lines = base.lines().count();
    for (extra, field, what) in [
        ("[request_headers]\nset = { \"Host\" = \"x\" }", "request_headers.set", "keygate manages"),
        ("[request_headers]\nset = { \"X-Client-Id\" = \"x\" }", "request_headers.set", "keygate manages"),
        ("[request_headers]\nremove = [\"X-Forwarded-*\"]", "request_headers.remove", "keygate manages"),
        ("[request_headers]\nremove = [\"bad name\"]", "request_headers.remove", "not a header name"),
        ("[request_headers]\nset = { \"X-A-*\" = \"x\" }", "request_headers.set", "whole name"),
        ("[request_headers]\nset = { \"X-A\" = \"a\\u0001b\" }", "request_headers.set", "not a header value"),
        ("[auth]\nrealm = 'a\"b'", "auth.realm", "printable"),
        ("[auth]\ncredential_header = \"X-Client-Id\"", "auth.credential_header", "must differ"),
        ("[auth]\nheader = \"x_client_id\"", "auth.header", "must differ"),
    ] {
        let text = format!("{base}\n{extra}\n");
        let message = refused(&text);
        assert!(message.contains(&format!("keygate.toml:{}:", lines + 3)), "{extra}: no position in {message}");
        assert!(message.contains(field) && message.contains(what), "{extra}: {message}");
    }
}

#[test]
fn check_refuses_bad_and_duplicate_key_names() {
    let up: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let bad = format!("[clients.b]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\", name = \"a b\" }}]\n", hash("k1"));
    assert!(refused(&gateway_config(&[up], "", &bad)).contains("clients.b.keys[0].name"));
    let twice = format!(
        "[clients.b]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\", name = \"n\" }}, {{ hash = \"{}\", name = \"n\" }}]\n",
        hash("k1"),
        hash("k2")
    );
    assert!(refused(&gateway_config(&[up], "", &twice)).contains("clients.b.keys[1].name"));
}

#[test]
fn keygen_name_is_printed_written_and_checked() {
    let dir = tempdir();
    let file = dir.path().join("keygate.toml");
    let up: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    std::fs::write(&file, basic_config(up, KEY, "")).expect("write config");
    let keygen = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run")
    };
    let out = keygen(&["keygen", "--client", "billing", "--name", "2026-12", "--add-to", "keygate.toml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "name: 2026-12"));
    let text = std::fs::read_to_string(&file).expect("read config");
    assert!(text.contains("name = \"2026-12\""), "{text}");
    let checked = keygen(&["check", "-c", "keygate.toml"]);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let again = keygen(&["keygen", "--client", "billing", "--name", "2026-12", "--add-to", "keygate.toml"]);
    assert!(again.status.success());
    let twice = keygen(&["check", "-c", "keygate.toml"]);
    assert_eq!(twice.status.code(), Some(2), "two keys named alike are refused");
    let bad = keygen(&["keygen", "--name", "a b"]);
    assert_eq!(bad.status.code(), Some(2));
}
