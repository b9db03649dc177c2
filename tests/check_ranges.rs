//! `check` refuses numbers and durations outside what `serve` can use (with
//! file:line:col), never echoes a value that may be a key, and a failed
//! reload logs the same safe text.

mod support;

use std::process::Command;
use std::time::Duration;

use support::ops::*;
use support::*;

/// `keygate check -c <dir>/keygate.toml` on `text`: exit code and stderr.
fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "-c"])
        .arg(&path)
        .env_clear()
        .output()
        .expect("run check");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A valid gateway with `line` added to the table `table`.
fn with(table: &str, line: &str) -> String {
    let base = gateway("127.0.0.1:9".parse().expect("addr"), "5s", &[("billing", "cr-key")]);
    let key = line.split(' ').next().unwrap_or_default();
    if let Some(old) = base.lines().find(|l| !key.is_empty() && l.starts_with(&format!("{key} ="))) {
        return base.replacen(old, line, 1);
    }
    let header = format!("[{table}]\n");
    match base.contains(&header) {
        true => base.replacen(&header, &format!("{header}{line}\n"), 1),
        false => format!("{base}\n{header}{line}\n"),
    }
}

/// 1-based line and column of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text.find(needle).expect("needle in text");
    let before = &text[..offset];
    (before.matches('\n').count() + 1, before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1)
}

#[test]
fn out_of_range_numbers_and_durations_are_refused_with_their_position() {
    let cases = [
        ("listen", "max_connections = 9223372036854775807", "listen.max_connections"),
        ("listen", "max_connections = 1000001", "listen.max_connections"),
        ("listen", "max_connections = 0", "listen.max_connections"),
        ("listen", "max_header_bytes = 100", "listen.max_header_bytes"),
        ("listen", "max_header_bytes = 99999999999", "listen.max_header_bytes"),
        ("listen", "max_headers = 100000", "listen.max_headers"),
        ("listen", "max_concurrent_streams = 4294967296", "listen.max_concurrent_streams"),
        ("listen", "idle_timeout = \"100000000y\"", "listen.idle_timeout"),
        ("listen", "header_read_timeout = \"25h\"", "listen.header_read_timeout"),
        ("listen", "body_timeout = \"10us\"", "listen.body_timeout"),
        ("upstreams.main", "request_timeout = \"1000000y\"", "upstreams.main.request_timeout"),
        ("auth", "max_failures_per_minute = 9223372036854775807", "auth.max_failures_per_minute"),
        ("rate_limit", "", "rate_limit.per_second"),
    ];
    for (table, line, field) in cases {
        let mut text = with(table, line);
        if table == "rate_limit" {
            text = text.replace("per_second = 100000", "per_second = 5e-324");
        }
        let (code, err) = check(&text);
        assert_eq!(code, Some(2), "{line}: {err}");
        let value = line.split_once('=').map_or("5e-324", |(_, v)| v.trim());
        let (l, c) = position(&text, value);
        assert!(err.contains(&format!("keygate.toml:{l}:{c}: {field}: must be")), "{line}:\n{err}");
    }
}

#[test]
fn values_at_the_edges_of_the_ranges_pass() {
    for (table, line) in [
        ("listen", "max_connections = 1000000"),
        ("listen", "max_header_bytes = 1024"),
        ("listen", "idle_timeout = \"24h\""),
        ("listen", "body_timeout = \"1ms\""),
        ("listen", "max_concurrent_streams = 10000"),
    ] {
        let (code, err) = check(&with(table, line));
        assert_eq!(code, Some(0), "{line}: {err}");
    }
}

const KEY: &str = "kg_7hQ2mXv9TzL4bNc8RwP1sYd6FgJ3kA5eUo0iHnB2rCt9qZ";

#[test]
fn a_plain_key_in_hash_or_env_is_never_echoed_by_check() {
    let uuid = "3f1c9a7e-52b4-4d8e-9c0a-7b6e5d4c3b2a";
    for (field, value) in
        [("hash", KEY), ("hash", uuid), ("env", KEY), ("env", uuid), ("hash", &*format!("sha256:{KEY}"))]
    {
        let text = format!(
            "{}\n[clients.orders]\nroutes = [\"*\"]\nkeys = [{{ {field} = \"{value}\" }}]\n",
            with("listen", "")
        );
        let (code, err) = check(&text);
        assert_eq!(code, Some(2), "{err}");
        let (l, c) = position(&text, &format!("\"{value}\""));
        assert!(err.contains(&format!("keygate.toml:{l}:{c}: clients.orders.keys[0].{field}")), "{err}");
        let secret = value.trim_start_matches("sha256:");
        assert!(!err.contains(&secret[4..]), "{field} = {value} echoed:\n{err}");
        if field == "hash" {
            assert!(err.contains("keygate hash"), "{err}");
        }
    }
}

#[tokio::test]
async fn a_failed_reload_does_not_log_a_plain_key_pasted_as_hash() {
    let up = Upstream::start().await;
    let (_dir, path, kg) = serve(up.addr, "5s", &[("billing", "cr-reload-key")]);
    let pasted = gateway(up.addr, "5s", &[("billing", "cr-reload-key")])
        .replace("{ hash = \"sha256:", &format!("{{ hash = \"{KEY}\" }}, {{ hash = \"sha256:"));
    replace_file(&path, &pasted);
    kg.signal("HUP");
    let failed = eventually(Duration::from_secs(5), || kg.output().contains("reload failed")).await;
    assert!(failed, "{}", kg.output());
    let out = kg.output();
    assert!(out.contains("not a hash"), "{out}");
    assert!(!out.contains(&KEY[4..]), "the pasted key was logged:\n{out}");
}
