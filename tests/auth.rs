//! Credentials and keys: where a key may come from, which keys are accepted,
//! and what a caller is told when it is refused.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const KEY: &str = "auth-test-key-0001-5f3c9a7e2b6d4081";

/// A gateway with one route `/` to `up` and the given client tables.
fn gateway(up: SocketAddr, clients: &str, extra: &str) -> String {
    gateway_config(&[up], "", &format!("{clients}\n{extra}"))
}

/// The error body without its request id, which differs per request.
fn body_without_id(r: &Reply) -> serde_json::Value {
    let mut v = r.json();
    let id = v.as_object_mut().and_then(|o| o.remove("request_id"));
    let id = id.as_ref().and_then(|id| id.as_str()).unwrap_or_default().to_string();
    assert!(!id.is_empty(), "error body has a request_id: {v}");
    assert_eq!(r.header("x-request-id"), Some(id.as_str()), "request_id matches X-Request-Id");
    v
}

/// A 401 as PRODUCT.md describes it, returning the body without request id.
fn assert_401(r: &Reply, code: &str, message: &str) -> serde_json::Value {
    assert_eq!(r.status, 401, "body: {:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("www-authenticate").is_some_and(|v| !v.is_empty()), "401 carries WWW-Authenticate");
    let body = body_without_id(r);
    assert_eq!(body, serde_json::json!({ "error": code, "message": message }));
    body
}

#[tokio::test]
async fn missing_key_is_401_missing_api_key() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let r = get(&kg.url("/x"), &[]).await;
    assert_401(&r, "missing_api_key", "API key missing");
    let empty = get(&kg.url("/x"), &[("x-api-key", "")]).await;
    assert_401(&empty, "missing_api_key", "API key missing");
    assert_eq!(up.count(), 0, "nothing reaches the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn unknown_key_is_401_invalid_api_key() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let r = get(&kg.url("/x"), &[("x-api-key", "not-a-known-key")]).await;
    assert_401(&r, "invalid_api_key", "Invalid API key");
    assert_eq!(up.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn expired_key_is_401_invalid_api_key() {
    let up = Upstream::start().await;
    let clients = format!(
        "[clients.old]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\", expires = \"2020-01-01T00:00:00Z\" }}]\n",
        hash("expired-key")
    );
    let kg = Keygate::start(&basic_config(up.addr, KEY, &clients)).await;
    let r = get(&kg.url("/x"), &[("x-api-key", "expired-key")]).await;
    assert_401(&r, "invalid_api_key", "Invalid API key");
    assert_eq!(up.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn not_yet_valid_key_is_401_invalid_api_key() {
    let up = Upstream::start().await;
    let clients = format!(
        "[clients.next]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\", not_before = \"2099-01-01T00:00:00Z\" }}]\n",
        hash("future-key")
    );
    let kg = Keygate::start(&basic_config(up.addr, KEY, &clients)).await;
    let r = get(&kg.url("/x"), &[("x-api-key", "future-key")]).await;
    assert_401(&r, "invalid_api_key", "Invalid API key");
    assert_eq!(up.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn unknown_expired_and_not_yet_valid_keys_look_the_same() {
    let up = Upstream::start().await;
    let clients = format!(
        "[clients.old]\nroutes = [\"*\"]\nkeys = [\n  {{ hash = \"{}\", expires = \"2020-01-01T00:00:00Z\" }},\n  {{ hash = \"{}\", not_before = \"2099-01-01T00:00:00Z\" }},\n]\n",
        hash("expired-key"),
        hash("future-key")
    );
    let kg = Keygate::start(&basic_config(up.addr, KEY, &clients)).await;
    let mut seen = Vec::new();
    for key in ["unknown-key", "expired-key", "future-key"] {
        let r = get(&kg.url("/x"), &[("x-api-key", key)]).await;
        let body = assert_401(&r, "invalid_api_key", "Invalid API key");
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "date" | "content-length"))
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.sort();
        seen.push((key, body, headers, r.body.len()));
    }
    let (_, first_body, first_headers, first_len) = &seen[0];
    for (key, body, headers, len) in &seen[1..] {
        assert_eq!(body, first_body, "{key}: same body as an unknown key");
        assert_eq!(headers, first_headers, "{key}: same headers as an unknown key");
        assert_eq!(len, first_len, "{key}: same body length (request ids have one length)");
    }
    kg.stop().await;
}

#[tokio::test]
async fn corrupt_token_is_refused_even_when_its_hash_is_configured() {
    let up = Upstream::start().await;
    let good = keygate::keys::new_token().expect("token");
    // Change the last checksum character: the checksum no longer matches the body.
    let mut broken = good.clone();
    let last = broken.pop().expect("non-empty token");
    broken.push(if last == 'A' { 'B' } else { 'A' });
    // The broken token's own hash is configured, so only the checksum check can refuse it.
    let clients = format!("[clients.corrupt]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\" }}]\n", hash(&broken));
    let kg = Keygate::start(&basic_config(up.addr, &good, &clients)).await;
    let ok = get(&kg.url("/x"), &[("x-api-key", &good)]).await;
    assert_eq!(ok.status, 200, "a well-formed token is accepted");
    let r = get(&kg.url("/x"), &[("x-api-key", &broken)]).await;
    assert_401(&r, "invalid_api_key", "Invalid API key");
    assert_eq!(up.count(), 1, "only the good token reached the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn both_keys_of_one_client_work() {
    let up = Upstream::start().await;
    let clients = format!(
        "[clients.billing]\nroutes = [\"*\"]\nkeys = [{{ hash = \"{}\" }}, {{ hash = \"{}\" }}]\n",
        hash("billing-old"),
        hash("billing-new")
    );
    let kg = Keygate::start(&gateway(up.addr, &clients, "")).await;
    for key in ["billing-old", "billing-new"] {
        let r = get(&kg.url("/x"), &[("x-api-key", key)]).await;
        assert_eq!(r.status, 200, "{key}");
        assert_eq!(up.last().headers.get("x-client-id").map(|v| v.as_bytes()), Some(&b"billing"[..]));
    }
    assert_eq!(up.count(), 2);
    kg.stop().await;
}

#[tokio::test]
async fn bearer_is_accepted_and_authorization_stripped() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let r = get(&kg.url("/x"), &[("authorization", &format!("Bearer {KEY}"))]).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(seen.headers.get("authorization").is_none(), "Authorization carried the key: removed");
    assert_eq!(seen.headers.get("x-client-id").map(|v| v.as_bytes()), Some(&b"billing"[..]));
    kg.stop().await;
}

#[tokio::test]
async fn bearer_repeating_the_header_key_is_stripped_too() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let bearer = format!("Bearer {KEY}");
    let r = get(&kg.url("/x"), &[("x-api-key", KEY), ("authorization", &bearer)]).await;
    assert_eq!(r.status, 200);
    assert!(up.last().headers.get("authorization").is_none(), "the key's copy in Authorization reached the upstream");
    let user = "Bearer end-user-token";
    let r = get(&kg.url("/x"), &[("x-api-key", KEY), ("authorization", user)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().headers.get("authorization").map(|v| v.as_bytes()),
        Some(user.as_bytes()),
        "not the key: kept"
    );
    kg.stop().await;
}

#[tokio::test]
async fn basic_authorization_is_not_a_key_and_passes_through() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let basic = "Basic dXNlcjpwYXNz";
    let alone = get(&kg.url("/x"), &[("authorization", basic)]).await;
    assert_401(&alone, "missing_api_key", "API key missing");
    let with_key = get(&kg.url("/x"), &[("x-api-key", KEY), ("authorization", basic)]).await;
    assert_eq!(with_key.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers.get("authorization").map(|v| v.as_bytes()), Some(basic.as_bytes()), "untouched");
    kg.stop().await;
}

#[tokio::test]
async fn custom_key_header_name() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "[auth]\nheader = \"X-Service-Token\"\n")).await;
    let r = get(&kg.url("/x"), &[("x-service-token", KEY)]).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(seen.headers.get("x-service-token").is_none(), "the configured key header is stripped");
    assert_eq!(seen.headers.get("x-client-id").map(|v| v.as_bytes()), Some(&b"billing"[..]));
    let default_header = get(&kg.url("/x"), &[("x-api-key", KEY)]).await;
    assert_401(&default_header, "missing_api_key", "API key missing");
    kg.stop().await;
}

#[tokio::test]
async fn query_param_key_when_configured_is_stripped_keeping_other_params() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "[auth]\nquery_param = \"api_key\"\n")).await;
    let r = get(&kg.url(&format!("/q?b=2&api_key={KEY}&a=1&z")), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/q?b=2&a=1&z", "key removed, the rest kept in order");
    let only = get(&kg.url(&format!("/q?api_key={KEY}")), &[]).await;
    assert_eq!(only.status, 200);
    assert_eq!(up.last().uri, "/q", "no empty query left behind");
    kg.stop().await;
}

#[tokio::test]
async fn query_param_is_stripped_even_when_the_key_came_from_the_header() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "[auth]\nquery_param = \"api_key\"\n")).await;
    let r = get(&kg.url(&format!("/q?a=1&api_key={KEY}")), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/q?a=1", "a second copy of the key must not reach the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn query_param_key_is_ignored_when_not_configured() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let r = get(&kg.url(&format!("/q?api_key={KEY}")), &[]).await;
    assert_401(&r, "missing_api_key", "API key missing");
    assert_eq!(up.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn env_only_config_serves_a_sidecar() {
    let up = Upstream::start().await;
    let upstream = format!("http://{}", up.addr);
    let kg = Process::serve(
        None,
        &[("KEYGATE_LISTEN", "127.0.0.1:0"), ("KEYGATE_UPSTREAM", &upstream), ("KEYGATE_KEY_BILLING", KEY)],
    );
    let r = get(&format!("http://{}/side?x=1", kg.addr), &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/side?x=1");
    assert_eq!(seen.headers.get("x-client-id").map(|v| v.as_bytes()), Some(&b"billing"[..]));
    assert!(seen.headers.get("x-api-key").is_none());
    let wrong = get(&format!("http://{}/side", kg.addr), &[("x-api-key", "wrong")]).await;
    assert_eq!(wrong.status, 401);
    let id = wrong.header("x-request-id").expect("request id");
    let out = wait_for_output(&kg, id);
    assert!(out.contains(id), "the access log was written: {out}");
    assert!(!out.contains(KEY), "the key leaked into the output:\n{out}");
}

#[tokio::test]
async fn env_routes_restrict_an_env_client() {
    let up = Upstream::start().await;
    let toml = format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.main]
servers = ["http://{}"]

[[routes]]
name = "orders"
path = "/orders"
upstream = "main"

[[routes]]
name = "items"
path = "/items"
upstream = "main"
"#,
        up.addr
    );
    let env: BTreeMap<String, String> = [("KEYGATE_KEY_BILLING_V2", KEY), ("KEYGATE_ROUTES_BILLING_V2", "orders")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let kg = Keygate::start_with_env(&toml, &env).await;
    let allowed = get(&kg.url("/orders/1"), &[("x-api-key", KEY)]).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(up.last().headers.get("x-client-id").map(|v| v.as_bytes()), Some(&b"billing-v2"[..]));
    let refused = get(&kg.url("/items/1"), &[("x-api-key", KEY)]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "forbidden");
    assert_eq!(up.count(), 1);
    kg.stop().await;
}

/// Wait until `text` shows up in the process output (the access log is
/// written when a response ends, possibly just after the client saw it).
fn wait_for_output(kg: &Process, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = kg.output();
        if out.contains(text) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn keys_never_appear_in_the_output() {
    let up = Upstream::start().await;
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    let file_key = "file-key-7f3a9c21d4e8";
    let env_key = "env-key-5b2e8d14c6a0-9f1b3c7d5e2a4068";
    let wrong_key = "wrong-key-9e1c4a7b3f52";
    let extra = "[auth]\nquery_param = \"api_key\"\n[clients.ops]\nroutes = [\"*\"]\nkeys = [{ env = \"OPS_KEY\" }]\n";
    std::fs::write(&path, basic_config(up.addr, file_key, extra)).expect("write config");
    let kg = Process::serve(Some(&path), &[("OPS_KEY", env_key)]);
    let base = format!("http://{}", kg.addr);
    let calls = [
        get(&format!("{base}/a"), &[("x-api-key", file_key)]).await,
        get(&format!("{base}/b"), &[("authorization", &format!("Bearer {env_key}"))]).await,
        get(&format!("{base}/c?x=1&api_key={file_key}"), &[]).await,
        get(&format!("{base}/d?api_key={wrong_key}"), &[]).await,
        get(&format!("{base}/e"), &[("x-api-key", wrong_key)]).await,
    ];
    let statuses: Vec<u16> = calls.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 401, 401]);
    let last_id = calls[4].header("x-request-id").expect("request id").to_string();
    let out = wait_for_output(&kg, &last_id);
    assert!(out.contains(&last_id), "the access log was written: {out}");
    for key in [file_key, env_key, wrong_key] {
        assert!(!out.contains(key), "key {key} leaked into the output:\n{out}");
    }
}
