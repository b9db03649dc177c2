//! `keygate demo`: the printed curl commands work as printed (with `--cacert`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::tls::LIMIT;

/// What the demo printed: its key, its folder, and (comment, command) pairs.
struct Tour {
    key: String,
    dir: PathBuf,
    steps: Vec<(String, String)>,
}

/// Read the demo's output up to its last line.
fn read_tour(child: &mut Child) -> Tour {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut key, mut dir, mut steps, mut comment) = (None, None, Vec::new(), String::new());
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the demo printed its tour in time");
        let line = line.trim();
        if let Some(k) = line.strip_prefix("export KEY=") {
            key = Some(k.to_string());
        } else if let Some(config) = line.strip_prefix("config: ") {
            let config = PathBuf::from(config.split_whitespace().next().expect("config path"));
            dir = config.parent().map(PathBuf::from);
        } else if line.starts_with('#') {
            comment = line.to_string();
        } else if line.contains("curl ") {
            steps.push((comment.clone(), line.to_string()));
        } else if line.starts_with("Ctrl-C") {
            let key = key.expect("the demo printed its key");
            return Tour { key, dir: dir.expect("the demo printed its config path"), steps };
        }
    }
}

/// Run a printed command through the shell with `$KEY` set, adding a status line.
fn run_printed(command: &str, key: &str) -> String {
    assert!(command.contains("--cacert") && !command.contains(" -k"), "not a verifying command: {command}");
    let command = command.replacen("curl ", "curl -sS --max-time 10 -w '\\nstatus=%{http_code}\\n' ", 1);
    let out = Command::new("sh").arg("-c").arg(&command).env("KEY", key).output().expect("run sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The demo process, interrupted (as by Ctrl-C) when the test ends, killed if it hangs.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let interrupted = Command::new("kill").args(["-INT", &pid]).status().is_ok_and(|s| s.success());
        let deadline = std::time::Instant::now() + LIMIT;
        while interrupted && std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        assert!(std::thread::panicking(), "the demo did not stop on Ctrl-C");
    }
}

#[test]
fn the_demo_prints_working_verifying_curl_commands() {
    let child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keygate demo");
    let mut demo = Demo(child);
    let Tour { key, dir, steps } = read_tour(&mut demo.0);
    assert!(steps.len() >= 5, "{steps:?}");
    assert!(dir.join("keygate.toml").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the folder holding the demo's private key is open to others");

    let (_, accepted) = &steps[0];
    let out = run_printed(accepted, &key);
    assert!(out.contains("status=200"), "{out}");
    let body: serde_json::Value = serde_json::from_str(out.split("\nstatus=").next().unwrap()).expect("echo JSON");
    let headers = &body["headers"];
    assert!(headers.get("x-api-key").is_none(), "key forwarded: {headers}");
    assert_eq!(headers["x-client-id"], "demo");
    assert_eq!(headers["x-forwarded-proto"], "https");

    for (comment, command) in &steps[1..] {
        let expected = comment.split_whitespace().find(|w| w.len() == 3 && w.parse::<u16>().is_ok());
        let expected = expected.unwrap_or_else(|| panic!("no status in {comment:?}"));
        let out = run_printed(command, &key);
        assert!(out.contains(expected), "{comment}: {command} printed {out}");
    }

    drop(demo);
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}
