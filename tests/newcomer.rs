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

/// `keygate serve | head -1`: whoever reads the summary may stop reading;
/// the proxy must go on serving, not die of a broken pipe.
#[test]
fn serve_keeps_serving_when_its_stdout_is_closed() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("serve")
        .env_clear()
        .env("KEYGATE_LISTEN", &listen)
        .env("KEYGATE_UPSTREAM", "http://127.0.0.1:9")
        .env("KEYGATE_KEY_BILLING", "newcomer-key-0123456789abcdef0123456789")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn keygate");
    drop(child.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        if let Ok(mut tcp) = std::net::TcpStream::connect(&listen) {
            tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
            let mut out = String::new();
            let _ = tcp.read_to_string(&mut out);
            break out;
        }
        let exited = child.try_wait().expect("try_wait");
        assert!(exited.is_none() && Instant::now() < deadline, "keygate did not serve: exited {exited:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}
