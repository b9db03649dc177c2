//! A listener that dies at start-up ends the process with an error instead of
//! leaving it alive without listeners.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn a_listener_panic_at_start_up_makes_run_return_an_error() {
    let toml = basic_config("127.0.0.1:9".parse().expect("addr"), "sf-key", "");
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, &toml).expect("write config");
    let mut config = keygate::config::load(Some(&path), &Default::default()).expect("valid config");
    // Past what `check` allows: tokio's semaphore panics on it in the accept loop.
    config.listen.max_connections = usize::MAX;
    let run = tokio::time::timeout(Duration::from_secs(10), keygate::app::run(config, None)).await;
    let err = run.expect("run returns instead of serving nothing").expect_err("an error");
    assert!(err.to_string().contains("listener task panicked"), "{err:#}");
}
