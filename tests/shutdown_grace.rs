//! `KEYGATE_SHUTDOWN_GRACE`: an env-only sidecar sets how long its drain may
//! last, so it fits inside a container engine's stop timeout.

mod support;

use std::time::{Duration, Instant};

use support::ops::*;
use support::*;

const KEY: &str = "sg-key-0123456789abcdef0123456789abcdef";

fn sidecar(up: &Upstream, grace: &str) -> Process {
    let upstream = format!("http://{}", up.addr);
    Process::serve(
        None,
        &[
            ("KEYGATE_UPSTREAM", &upstream),
            ("KEYGATE_LISTEN", "127.0.0.1:0"),
            ("KEYGATE_ADMIN", "127.0.0.1:0"),
            ("KEYGATE_KEY_BILLING", KEY),
            ("KEYGATE_SHUTDOWN_GRACE", grace),
        ],
    )
}

#[tokio::test]
async fn a_request_in_flight_at_sigterm_completes_within_the_grace() {
    let up = Upstream::start().await;
    let mut kg = sidecar(&up, "10s");
    let slow = slow_request(&kg, &up, 1500, KEY).await;
    kg.signal("TERM");
    let answer = tokio::time::timeout(Duration::from_secs(5), slow).await.expect("answered").expect("task");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("slow done"), "{answer}");
    assert_eq!(kg.wait_exit(Duration::from_secs(5)), Some(0), "{}", kg.output());
    assert!(kg.output().contains("grace=10s"), "{}", kg.output());
}

#[tokio::test]
async fn the_drain_ends_when_the_grace_set_in_the_environment_ends() {
    let up = Upstream::start().await;
    let mut kg = sidecar(&up, "1s");
    let _slow = slow_request(&kg, &up, 20_000, KEY).await;
    let signalled = Instant::now();
    kg.signal("TERM");
    // The default grace (30s) would outlast the 20 s request.
    assert_eq!(kg.wait_exit(Duration::from_secs(8)), Some(0), "{}", kg.output());
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(8), "exited after {took:?}");
    assert!(kg.output().contains("shutdown grace elapsed"), "{}", kg.output());
}

#[test]
fn a_bad_grace_is_refused_naming_the_variable() {
    for bad in ["soon", "0s", "25h"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("check")
            .env_clear()
            .env("KEYGATE_UPSTREAM", "http://127.0.0.1:9")
            .env("KEYGATE_KEY_BILLING", KEY)
            .env("KEYGATE_SHUTDOWN_GRACE", bad)
            .output()
            .expect("run check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("KEYGATE_SHUTDOWN_GRACE: "), "{bad}: {err}");
    }
}
