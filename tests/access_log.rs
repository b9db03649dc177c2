//! The access log: one line per request with the fields PRODUCT.md lists,
//! JSON with KEYGATE_LOG_FORMAT=json, and never the key.

mod support;

use std::time::{Duration, Instant};

use support::*;

const KEY: &str = "access-log-key-5c2e";

/// Wait (bounded) until the process has logged an access line for `request_id`.
fn access_line(p: &Process, request_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = p.output();
        let found = out.lines().find(|l| l.contains("keygate::access") && l.contains(request_id));
        if let Some(line) = found {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no access line for {request_id} in:\n{out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn start(format: &str) -> (Upstream, Process, tempfile::TempDir) {
    let up = Upstream::start().await;
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    let config = basic_config(up.addr, KEY, "[auth]\nquery_param = \"api_key\"\n");
    std::fs::write(&path, config).expect("write config");
    let p = Process::serve(Some(&path), &[("KEYGATE_LOG_FORMAT", format), ("KEYGATE_LOG", "info")]);
    (up, p, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn json_access_line_has_every_field_and_no_key() {
    let (_up, p, _dir) = start("json").await;
    let url = format!("http://{}/orders/7?api_key={KEY}&page=2", p.addr);
    let r = get(&url, &[("x-request-id", "log-test-1")]).await;
    assert_eq!(r.status, 200);
    let line = access_line(&p, "log-test-1");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["target"], "keygate::access");
    assert_eq!(v["request_id"], "log-test-1");
    assert!(v["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{v}");
    assert_eq!(v["client"], "billing");
    let fingerprint = &hash(KEY)["sha256:".len().."sha256:".len() + 8];
    assert_eq!(v["key"], fingerprint);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/orders/7?page=2", "path without the key parameter");
    assert_eq!(v["route"], "all");
    assert_eq!(v["upstream"], "main");
    assert_eq!(v["status"], 200);
    assert!(v["duration_us"].is_u64(), "an integer number of microseconds: {v}");
    for absent in ["error", "peer", "duration_ms"] {
        assert!(v.get(absent).is_none(), "{absent} is left out: {v}");
    }
    assert_eq!(v["bytes"].as_u64(), Some(r.body.len() as u64));
    assert!(!p.output().contains(KEY), "the key was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn pretty_access_line_for_a_refused_request() {
    let (_up, p, _dir) = start("pretty").await;
    let url = format!("http://{}/orders", p.addr);
    let r = get(&url, &[("x-request-id", "log-test-2"), ("x-api-key", "not-a-key-9d1f")]).await;
    assert_eq!(r.status, 401);
    let line = access_line(&p, "log-test-2");
    assert!(line.contains("status=401") && line.contains("error=\"invalid_api_key\""), "{line}");
    for absent in ["client=", "key=", "route=", "upstream=", "\"-\""] {
        assert!(!line.contains(absent), "{absent} is left out: {line}");
    }
    assert!(!p.output().contains("not-a-key-9d1f"), "a presented key was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_parameters_in_any_spelling_reach_neither_the_log_nor_the_upstream() {
    let (up, p, _dir) = start("json").await;
    let url = format!("http://{}/orders?API_KEY={KEY}&page=2&api%5Fkey={KEY}", p.addr);
    let r = get(&url, &[("x-request-id", "log-test-3"), ("x-api-key", KEY)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let line = access_line(&p, "log-test-3");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["path"], "/orders?page=2");
    assert_eq!(up.last().uri, "/orders?page=2");
    assert!(!p.output().contains(KEY), "the key was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_mode_prints_the_start_up_summary_as_one_json_event() {
    let (_up, p, dir) = start("json").await;
    let url = format!("http://{}/orders", p.addr);
    let r = get(&url, &[("x-request-id", "log-test-4"), ("x-api-key", "not-a-key-3b7a")]).await;
    assert_eq!(r.status, 401);
    let line = access_line(&p, "log-test-4");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["error"], "invalid_api_key");
    for absent in ["client", "key", "route", "upstream"] {
        assert!(v.get(absent).is_none(), "{absent} is left out: {v}");
    }
    let stdout = p.stdout.lock().expect("lock").clone();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {stdout}");
    let s: serde_json::Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(s["target"], "keygate::startup");
    assert_eq!(s["level"], "INFO");
    assert_eq!(s["listen"], format!("http://{}", p.addr));
    assert!(s["admin"].is_null(), "no admin listener: {s}");
    assert_eq!(s["tls"], "off (plain HTTP)");
    assert_eq!(s["config"], dir.path().join("keygate.toml").display().to_string());
    assert_eq!((s["clients"].as_u64(), s["keys"].as_u64()), (Some(1), Some(1)));
    assert_eq!((s["routes"].as_u64(), s["upstreams"].as_u64()), (Some(1), Some(1)));
}
