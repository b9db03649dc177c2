//! `keygate healthcheck` with no URL probes the admin address `serve` would
//! use (`KEYGATE_ADMIN`, else the config file's `[admin]`), and only
//! keygate's own `/healthz` counts as healthy.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// Run `keygate healthcheck args…` with only `env`; exit code and stderr.
async fn healthcheck(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.arg("healthcheck").args(args).current_dir(dir).env_clear().envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run healthcheck")).await.expect("join");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn the_admin_address_is_found_in_the_environment_or_the_file() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, "hc-key", "\n[admin]\naddress = \"127.0.0.1:0\"\n")).await;
    let admin = kg.admin.expect("admin listener").to_string();
    let dir = tempdir();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, format!("[admin]\naddress = \"{admin}\"\n")).expect("write");
    let file = file.to_str().expect("utf-8 path");
    let wildcard = admin.replace("127.0.0.1", "0.0.0.0");
    let url = format!("http://{admin}/healthz");
    let healthy = [
        (vec![], vec![("KEYGATE_ADMIN", admin.as_str())]),
        (vec![], vec![("KEYGATE_ADMIN", wildcard.as_str())]),
        (vec![], vec![("KEYGATE_CONFIG", file)]),
        (vec!["-c", file], vec![]),
        (vec![url.as_str()], vec![]),
    ];
    for (args, env) in healthy {
        let (code, err) = healthcheck(&args, &env, dir.path()).await;
        assert_eq!(code, Some(0), "{args:?} {env:?}: {err}");
    }
    kg.stop().await;
}

#[tokio::test]
async fn another_server_answering_200_on_the_admin_port_is_unhealthy() {
    let foreign = Upstream::start().await;
    assert_eq!(get(&format!("http://{}/healthz", foreign.addr), &[]).await.status, 200, "the stand-in answers 200");
    let addr = foreign.addr.to_string();
    let url = format!("http://{addr}/healthz");
    let dir = tempdir();
    for (args, env) in [(vec![], vec![("KEYGATE_ADMIN", addr.as_str())]), (vec![url.as_str()], vec![])] {
        let (code, err) = healthcheck(&args, &env, dir.path()).await;
        assert_eq!(code, Some(1), "{args:?} {env:?}: {err}");
        assert!(err.contains("another server"), "{err}");
    }
}

#[tokio::test]
async fn no_admin_address_anywhere_is_a_usage_error() {
    let dir = tempdir();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, "[listen]\naddress = \"127.0.0.1:0\"\n").expect("write");
    for env in [vec![], vec![("KEYGATE_CONFIG", file.to_str().expect("utf-8"))]] {
        let (code, err) = healthcheck(&[], &env, dir.path()).await;
        assert_eq!(code, Some(2), "{env:?}: {err}");
        assert!(err.contains("KEYGATE_ADMIN"), "{err}");
    }
}
