//! What a newcomer meets first: the commands' answers when nothing is configured yet.

use std::process::Command;

#[test]
fn serve_and_check_without_configuration_name_the_ways_to_give_one() {
    for command in ["serve", "check"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg(command)
            .current_dir(dir.path())
            .env_clear()
            .output()
            .expect("run keygate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        for way in ["-c keygate.toml", "KEYGATE_CONFIG", "KEYGATE_UPSTREAM", "KEYGATE_KEY_", "keygate demo"] {
            assert!(stderr.contains(way), "{command} does not mention {way}: {stderr}");
        }
    }
}

/// `keygate check` in an empty folder with only `env`.
fn check(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("check")
        .current_dir(dir.path())
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run keygate");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_mistyped_variable_is_a_warning_with_a_hint() {
    let key = "newcomer-key-0123456789abcdef0123456789";
    let (code, out) = check(&[
        ("KEYGATE_UPSTREAM", "http://127.0.0.1:9"),
        ("KEYGATE_KEY_BILLING", key),
        ("KEYGATE_LISTN", "127.0.0.1:1"),
    ]);
    assert_eq!(code, Some(0), "a warning, not an error: {out}");
    assert!(
        out.contains("warning: KEYGATE_LISTN: keygate reads no such variable; did you mean \"KEYGATE_LISTEN\"?"),
        "{out}"
    );
    assert!(!out.contains(key), "no key in the output");
}

#[test]
fn a_configuration_without_clients_is_a_warning() {
    let (code, out) = check(&[("KEYGATE_UPSTREAM", "http://127.0.0.1:9")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("warning: clients: no client is defined"), "{out}");
    assert!(out.contains("ok (0 clients, 0 keys, 1 route, 1 upstream)"), "{out}");
}
