//! Keys given through the environment (`KEYGATE_KEY_<CLIENT>` and
//! `{ env = "…" }`) shorter than 32 characters are refused by `check` and
//! `serve`, naming the variable and never printing the value (issue 12);
//! whatever `keygen` prints passes.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// What a finished command left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run the keygate binary in `dir` with only `env` (and PATH); killed after 20 s.
fn keygate(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.args(args).current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn keygate");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keygate {args:?} did not exit: a short key was accepted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const UPSTREAM: (&str, &str) = ("KEYGATE_UPSTREAM", "http://127.0.0.1:9");
const LISTEN: (&str, &str) = ("KEYGATE_LISTEN", "127.0.0.1:0");

/// Short keys of several shapes: each is refused with the variable named.
#[test]
fn check_and_serve_refuse_a_short_keygate_key_variable() {
    let dir = tempdir();
    let short = ["k1", "password123", "0123456789abcdef0123456789abcde", "ééééééééééééééééééééééééééééééé"];
    for key in short {
        for command in ["check", "serve"] {
            let run = keygate(&[command], dir.path(), &[UPSTREAM, LISTEN, ("KEYGATE_KEY_BILLING", key)]);
            assert_eq!(run.code, Some(2), "{command} with a {}-character key: {}", key.chars().count(), run.stderr);
            let want = format!(
                "KEYGATE_KEY_BILLING: environment variable KEYGATE_KEY_BILLING holds a key of {} characters",
                key.chars().count()
            );
            assert!(run.stderr.contains(&want), "{command}: {}", run.stderr);
            assert!(run.stderr.contains("at least 32"), "{}", run.stderr);
            assert!(!run.stderr.contains(key) && !run.stdout.contains(key), "the key is never printed");
        }
    }
}

#[test]
fn a_short_key_behind_env_in_the_file_is_refused_at_its_position() {
    let dir = tempdir();
    let text = format!(
        "{}[clients.ops]\nroutes = [\"*\"]\nkeys = [{{ env = \"OPS_KEY\" }}]\n",
        gateway_config(&["127.0.0.1:9".parse().expect("address")], "", "")
    );
    std::fs::write(dir.path().join("keygate.toml"), &text).expect("write config");
    let line = text.lines().position(|l| l.contains("OPS_KEY")).expect("line") + 1;
    let col = text.lines().nth(line - 1).and_then(|l| l.find("\"OPS_KEY\"")).expect("col") + 1;
    for command in ["check", "serve"] {
        let run = keygate(&[command, "-c", "keygate.toml"], dir.path(), &[LISTEN, ("OPS_KEY", "short-ops-key")]);
        assert_eq!(run.code, Some(2), "{command}: {}", run.stderr);
        let want = format!(
            "keygate.toml:{line}:{col}: clients.ops.keys[0].env: environment variable OPS_KEY holds a key of 13 characters"
        );
        assert!(run.stderr.lines().any(|l| l.starts_with(&want)), "{command}: want {want}\n{}", run.stderr);
        assert!(!run.stderr.contains("short-ops-key"), "the key is never printed");
    }
}

/// Exactly 32 characters pass, and so does every format `keygen` makes.
#[test]
fn keygen_keys_and_32_characters_pass() {
    let dir = tempdir();
    let mut keys = vec!["0123456789abcdef0123456789abcdef".to_string()];
    for format in ["uuid", "token"] {
        let run = keygate(&["keygen", "--format", format], dir.path(), &[]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let key = run.stdout.lines().find_map(|l| l.strip_prefix("key:")).expect("key line").trim().to_string();
        keys.push(key);
    }
    for key in &keys {
        let run = keygate(&["check"], dir.path(), &[UPSTREAM, ("KEYGATE_KEY_BILLING", key)]);
        assert_eq!(run.code, Some(0), "{key}: {}", run.stderr);
    }
}
