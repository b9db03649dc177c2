//! The config watcher reacts to the config file's name only, and tracing of
//! the events it ignores cannot feed itself: a log file in the config folder
//! at `KEYGATE_LOG=trace` does not grow on its own.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::ops::*;
use support::*;

/// Killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test]
async fn a_trace_log_inside_the_config_folder_does_not_loop() {
    let up = Upstream::start().await;
    let dir = tempdir();
    let config = dir.path().join("keygate.toml");
    replace_file(&config, &gateway(up.addr, "5s", &[("billing", "rw-key")]));
    let log_path = dir.path().join("keygate.toml.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["serve", "-c"])
            .arg(&config)
            .env_clear()
            .env("KEYGATE_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn keygate"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Read stdout to its end, so the summary's later lines have a reader.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim().starts_with("admin:") {
                let _ = tx.send(());
            }
        }
    });
    assert!(rx.recv_timeout(Duration::from_secs(30)).is_ok(), "keygate started");
    // Something else in the folder changes, which the watcher sees and ignores.
    std::fs::write(dir.path().join("other.txt"), "x").expect("write");
    let settled = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = size(&log_path);
    let window = Instant::now() + Duration::from_secs(1);
    while Instant::now() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = size(&log_path) - before;
    assert!(grown < 16 * 1024, "the log grew {grown} bytes in a second with nothing happening");
    // The config file itself is still watched.
    replace_file(&config, &gateway(up.addr, "5s", &[("billing", "rw-key"), ("orders", "rw-key-2")]));
    let reloaded = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("configuration reloaded"))
    });
    assert!(reloaded.await, "an edit of the config file reloads");
    assert!(child.0.try_wait().expect("try_wait").is_none());
}
