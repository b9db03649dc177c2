//! The commands besides `serve`: `check`, `keygen`, `hash`, help and usage.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// What a finished command left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run the keygate binary in `dir` with only `env` (and PATH), feeding `stdin`.
fn keygate(args: &[&str], dir: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.args(args).current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.envs(env.iter().copied());
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn keygate");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).expect("write stdin");
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("keygate {args:?} did not finish in time")
    });
    let out = out.expect("output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `keygate check -c keygate.toml` on `text`, run in a fresh folder.
fn check(text: &str, env: &[(&str, &str)]) -> Run {
    let dir = tempdir();
    std::fs::write(dir.path().join("keygate.toml"), text).expect("write config");
    keygate(&["check", "-c", "keygate.toml"], dir.path(), env, b"")
}

/// 1-based line and column of the `nth` (0-based) occurrence of `needle`.
fn position(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let offset = text.match_indices(needle).nth(nth).map(|(i, _)| i).expect("needle in text");
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A config that passes `check`, with `{clients}` standing for the client tables.
fn config(clients: &str) -> String {
    format!(
        r#"# gateway in front of the orders service
[listen]
address = "127.0.0.1:0"

[upstreams.orders]
servers = ["http://127.0.0.1:9"]

[[routes]]
name = "orders-read"
path = "/orders"
methods = ["GET"]
upstream = "orders"

[[routes]]
name = "orders-write"
path = "/orders"
methods = ["POST"]
upstream = "orders"

{clients}"#
    )
}

fn billing(hash: &str) -> String {
    format!("[clients.billing]\nroutes = [\"orders-read\"]\nkeys = [{{ hash = \"{hash}\" }}]\n")
}

fn assert_config_error(run: &Run, expected: &str) {
    assert_eq!(run.code, Some(2), "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    assert!(
        run.stderr.lines().any(|l| l.starts_with(expected)),
        "expected a line starting with\n  {expected}\ngot:\n{}",
        run.stderr
    );
}

#[test]
fn check_accepts_a_valid_file() {
    let run = check(&config(&billing(&hash("k1"))), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("ok"), "{}", run.stdout);
}

#[test]
fn check_names_an_unknown_field_with_its_line() {
    let run = check("[listen]\nadress = \"127.0.0.1:8443\"\n", &[]);
    assert_config_error(&run, "keygate.toml:2:1: listen.adress: unknown field");
    let text = config(&billing(&hash("k1"))).replacen(
        "path = \"/orders\"\nmethods = [\"POST\"]",
        "paht = \"/orders\"\nmethods = [\"POST\"]",
        1,
    );
    let (line, col) = position(&text, "paht", 0);
    assert_config_error(&check(&text, &[]), &format!("keygate.toml:{line}:{col}: routes[1].paht: unknown field"));
}

#[test]
fn check_names_an_unknown_field_inside_a_key_table() {
    let h = hash("k1");
    let clients = format!(
        "[clients.billing]\nroutes = [\"*\"]\nkeys = [\n  {{ hash = \"{h}\" }},\n  {{ hash = \"{}\", expirs = \"2030-01-01T00:00:00Z\" }},\n]\n",
        hash("k2")
    );
    let text = config(&clients);
    let (line, col) = position(&text, "expirs", 0);
    let expected = format!("keygate.toml:{line}:{col}: clients.billing.keys[1].expirs: unknown field");
    assert_config_error(&check(&text, &[]), &expected);
}

#[test]
fn check_names_the_table_missing_a_field() {
    let text = config(&billing(&hash("k1"))).replacen(
        "path = \"/orders\"\nmethods = [\"POST\"]\n",
        "methods = [\"POST\"]\n",
        1,
    );
    let (line, col) = position(&text, "[[routes]]", 1);
    let expected = format!("keygate.toml:{line}:{col}: routes[1]: missing field `path`");
    assert_config_error(&check(&text, &[]), &expected);
}

#[test]
fn check_validates_an_environment_only_config() {
    let dir = tempdir();
    let env =
        [("KEYGATE_UPSTREAM", "http://127.0.0.1:9"), ("KEYGATE_KEY_BILLING", "k1-0123456789abcdef0123456789abcdef")];
    let ok = keygate(&["check"], dir.path(), &env, b"");
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let bad = [env[0], env[1], ("KEYGATE_ROUTES_BILLING", "orders")];
    let run = keygate(&["check"], dir.path(), &bad, b"");
    assert_config_error(&run, "KEYGATE_ROUTES_BILLING: unknown route \"orders\"");
}

#[test]
fn check_names_an_unknown_route_in_a_client() {
    let text = config("[clients.billing]\nroutes = [\"orders-read\", \"orders-wrte\"]\nkeys = []\n");
    let (line, col) = position(&text, "\"orders-wrte\"", 0);
    let expected = format!("keygate.toml:{line}:{col}: clients.billing.routes: unknown route \"orders-wrte\"");
    assert_config_error(&check(&text, &[]), &expected);
}

#[test]
fn check_names_a_duplicate_route_name() {
    let text = config(&billing(&hash("k1"))).replace("name = \"orders-write\"", "name = \"orders-read\"");
    let (line, col) = position(&text, "\"orders-read\"", 1);
    let expected = format!("keygate.toml:{line}:{col}: routes[1].name: duplicate route name \"orders-read\"");
    assert_config_error(&check(&text, &[]), &expected);
}

#[test]
fn check_names_a_malformed_hash() {
    let text = config(&billing("sha256:not-hex"));
    let (line, col) = position(&text, "\"sha256:not-hex\"", 0);
    let expected = format!("keygate.toml:{line}:{col}: clients.billing.keys[0].hash: ");
    assert_config_error(&check(&text, &[]), &expected);
    let bare = config(&billing("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"));
    let (line, col) = position(&bare, "\"9f86", 0);
    assert_config_error(&check(&bare, &[]), &format!("keygate.toml:{line}:{col}: clients.billing.keys[0].hash: "));
}

#[test]
fn check_names_a_duplicate_hash_across_clients() {
    let h = hash("shared-key-0123456789abcdef0123456789");
    let ops = format!(
        "[clients.ops]\nroutes = [\"*\"]\nkeys = [\n  {{ hash = \"{}\" }},\n  {{ hash = \"{h}\" }},\n]\n",
        hash("ops-key")
    );
    let text = config(&(billing(&h) + &ops));
    let (line, col) = position(&text, &format!("\"{h}\""), 1);
    let expected = format!(
        "keygate.toml:{line}:{col}: clients.ops.keys[1]: duplicate key: the same key is clients.billing.keys[0]"
    );
    assert_config_error(&check(&text, &[]), &expected);
}

#[test]
fn check_names_the_variable_of_a_duplicate_env_key() {
    let text = config(&billing(&hash("shared-key-0123456789abcdef0123456789")));
    let run = check(&text, &[("KEYGATE_KEY_OPS", "shared-key-0123456789abcdef0123456789")]);
    assert_config_error(&run, "KEYGATE_KEY_OPS: clients.ops: duplicate key: the same key is clients.billing.keys[0]");
    assert!(
        !run.stderr.contains("shared-key-0123456789abcdef0123456789"),
        "the plain key is never printed: {}",
        run.stderr
    );
}

/// The `key:` and `hash:` lines of `keygen` output.
fn key_and_hash(stdout: &str) -> (String, String) {
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"))
    };
    (field("key:"), field("hash:"))
}

#[test]
fn keygen_prints_key_hash_and_snippet_and_hash_agrees() {
    let dir = tempdir();
    let run = keygate(&["keygen", "--client", "billing"], dir.path(), &[], b"");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (key, printed_hash) = key_and_hash(&run.stdout);
    assert!(uuid::Uuid::parse_str(&key).is_ok_and(|u| u.get_version_num() == 4), "a UUIDv4 by default: {key}");
    assert_eq!(printed_hash, hash(&key));
    assert!(run.stdout.contains("[clients.billing]"), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("hash = \"{printed_hash}\"")), "{}", run.stdout);
    let hashed = keygate(&["hash"], dir.path(), &[], key.as_bytes());
    assert_eq!(hashed.code, Some(0), "{}", hashed.stderr);
    assert_eq!(hashed.stdout.trim(), printed_hash);
}

#[test]
fn hash_ignores_one_trailing_newline() {
    let dir = tempdir();
    let key = "3f2b8c1e-9a7d-4e5f-8b6a-1c2d3e4f5a6b";
    let plain = keygate(&["hash"], dir.path(), &[], key.as_bytes());
    let echoed = keygate(&["hash"], dir.path(), &[], format!("{key}\n").as_bytes());
    assert_eq!(plain.code, Some(0));
    assert_eq!(plain.stdout.trim(), hash(key));
    assert_eq!(echoed.stdout, plain.stdout, "echo \"$KEY\" | keygate hash");
    let two = keygate(&["hash"], dir.path(), &[], format!("{key}\n\n").as_bytes());
    assert_ne!(two.stdout, plain.stdout, "only one newline is ignored");
}

#[test]
fn keygen_token_format() {
    let dir = tempdir();
    let run = keygate(&["keygen", "--format", "token"], dir.path(), &[], b"");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (key, printed_hash) = key_and_hash(&run.stdout);
    let body = key.strip_prefix("kg_").unwrap_or_else(|| panic!("kg_ prefix: {key}"));
    assert_eq!(body.len(), 49, "{key}");
    assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()), "base62: {key}");
    assert_eq!(printed_hash, hash(&key));
    let other = key_and_hash(&keygate(&["keygen", "--format", "token"], dir.path(), &[], b"").stdout).0;
    assert_ne!(other, key, "every key is new");
}

#[test]
fn help_of_every_command_shows_an_example() {
    let dir = tempdir();
    for command in [&[][..], &["serve"], &["check"], &["keygen"], &["hash"], &["demo"], &["healthcheck"]] {
        let mut args = command.to_vec();
        args.push("--help");
        let run = keygate(&args, dir.path(), &[], b"");
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        assert!(run.stdout.contains("Example"), "{args:?} --help shows no example:\n{}", run.stdout);
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempdir();
    for args in [&["frobnicate"][..], &["keygen", "--format", "nope"], &["check", "--nope"], &[]] {
        let run = keygate(args, dir.path(), &[], b"");
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
    }
    let empty = keygate(&["hash"], dir.path(), &[], b"");
    assert_eq!(empty.code, Some(2), "no key on stdin: {}", empty.stderr);
}

#[test]
fn keygen_add_to_keeps_comments_and_adds_the_hash() {
    let dir = tempdir();
    let file = dir.path().join("keygate.toml");
    let clients = "[clients.billing] # the billing service\nroutes = [\"orders-read\"]\nkeys = [\n  # the current key\n  { hash = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" },\n]\n";
    std::fs::write(&file, config(clients)).expect("write config");
    let run = keygate(&["keygen", "--client", "billing", "--add-to", "keygate.toml"], dir.path(), &[], b"");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (_, new_hash) = key_and_hash(&run.stdout);
    let text = std::fs::read_to_string(&file).expect("read config");
    for comment in ["# gateway in front of the orders service", "# the billing service", "# the current key"] {
        assert!(text.contains(comment), "{comment:?} lost:\n{text}");
    }
    assert!(text.contains("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"), "old key kept");
    assert!(text.contains(&format!("hash = \"{new_hash}\"")), "new hash added:\n{text}");
    let checked = keygate(&["check", "-c", "keygate.toml"], dir.path(), &[], b"");
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(checked.stdout.contains("2 keys"), "{}", checked.stdout);
}
