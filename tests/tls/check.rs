//! `keygate check` on certificate problems: each names the config file, the
//! line and column, the field and the certificate file; exit 2.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::tls::*;
use crate::support::*;
use crate::KEY;

/// Write a config with `[listen.tls]` for these files and run `keygate check`.
fn check(dir: &Path, cert: &Path, key: &Path, client_ca: Option<&Path>) -> (Option<i32>, String, PathBuf) {
    let upstream = "127.0.0.1:9".parse().unwrap();
    let config = dir.join("keygate.toml");
    std::fs::write(&config, basic_config(upstream, KEY, &listen_tls(cert, key, client_ca))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("check")
        .arg("-c")
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run keygate check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text, config)
}

/// Where `field = ...` is written in `config`, as `path:line:col: field: `.
fn located(config: &Path, field: &str) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let key = field.rsplit('.').next().unwrap();
    let (i, line) = text.lines().enumerate().find(|(_, l)| l.starts_with(&format!("{key} = "))).unwrap();
    format!("{}:{}:{}: {field}: ", config.display(), i + 1, line.find('"').unwrap() + 1)
}

/// Exit 2, with a line at the field's position naming `file` and saying `what`.
fn assert_reported(result: (Option<i32>, String, PathBuf), field: &str, file: &Path, what: &str) {
    let (code, text, config) = result;
    assert_eq!(code, Some(2), "{text}");
    let prefix = located(&config, field);
    let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"));
    assert!(line.contains(&file.display().to_string()), "file not named: {line}");
    assert!(line.contains(what), "{what:?} not said: {line}");
}

#[test]
fn a_valid_tls_config_passes() {
    let dir = tempdir();
    let ca = Ca::new("check CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let clients_ca = ca.write(dir.path(), "clients-ca.pem");
    let (code, text, _) = check(dir.path(), &cert, &key, Some(&clients_ca));
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn an_unreadable_certificate_file_is_reported() {
    let dir = tempdir();
    let (_, key) = Ca::new("check CA").server().write(dir.path(), "server");
    let missing = dir.path().join("missing.pem");
    assert_reported(check(dir.path(), &missing, &key, None), "listen.tls.cert", &missing, "cannot read");
}

#[test]
fn a_certificate_file_without_a_certificate_is_reported() {
    let dir = tempdir();
    let (_, key) = Ca::new("check CA").server().write(dir.path(), "server");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    assert_reported(check(dir.path(), &garbage, &key, None), "listen.tls.cert", &garbage, "no PEM certificate");
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_reported() {
    let dir = tempdir();
    let ca = Ca::new("check CA");
    let (cert, _) = ca.server().write(dir.path(), "server");
    let (_, other_key) = ca.server().write(dir.path(), "other");
    assert_reported(check(dir.path(), &cert, &other_key, None), "listen.tls.key", &other_key, "does not match");
}

#[test]
fn an_expired_certificate_is_reported() {
    let dir = tempdir();
    let expired = Ca::new("check CA").server_with(|p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (cert, key) = expired.write(dir.path(), "server");
    assert_reported(check(dir.path(), &cert, &key, None), "listen.tls.cert", &cert, "expired");
}

#[test]
fn a_client_ca_that_is_not_a_ca_is_reported() {
    let dir = tempdir();
    let ca = Ca::new("check CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let (leaf, _) = ca.client("billing").write(dir.path(), "not-a-ca");
    assert_reported(check(dir.path(), &cert, &key, Some(&leaf)), "listen.tls.client_ca", &leaf, "not a CA");
}

#[test]
fn a_problem_with_a_certificate_from_the_environment_names_the_variable() {
    let dir = tempdir();
    let expired = Ca::new("check CA").server_with(|p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (cert, key) = expired.write(dir.path(), "server");
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("check")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYGATE_UPSTREAM", "http://127.0.0.1:9")
        .env("KEYGATE_KEY_BILLING", KEY)
        .env("KEYGATE_TLS_CERT", &cert)
        .env("KEYGATE_TLS_KEY", &key)
        .output()
        .expect("run keygate check");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let prefix = format!("KEYGATE_TLS_CERT: listen.tls.cert: {}: certificate expired", cert.display());
    assert!(text.lines().any(|l| l.starts_with(&prefix)), "no {prefix:?} in:\n{text}");
}
