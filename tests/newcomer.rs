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
