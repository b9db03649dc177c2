//! `keygen --add-to` rewrites a config file atomically and keeps what the
//! file was: its mode, its owner, and a symlink pointing at it.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use support::*;

const FILE: &str = "[clients.billing]\nroutes = [\"*\"]\nkeys = [\n  { hash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\" },\n]\n";

fn add_to(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keygen", "--client", "billing", "--add-to"])
        .arg(file)
        .env_clear()
        .output()
        .expect("run keygen");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn added(path: &Path) -> bool {
    std::fs::read_to_string(path).expect("read").matches("sha256:").count() == 2
}

#[test]
fn the_mode_is_kept() {
    for m in [0o600, 0o640, 0o644] {
        let dir = tempdir();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, FILE).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).expect("chmod");
        let (code, out) = add_to(&path);
        assert_eq!(code, Some(0), "{out}");
        assert!(added(&path));
        assert_eq!(mode(&path), m, "mode {m:o} changed");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(left.len(), 1, "a temporary file was left: {left:?}");
    }
}

#[test]
fn a_symlink_stays_a_symlink_and_its_target_is_written() {
    let dir = tempdir();
    let real_dir = dir.path().join("real");
    std::fs::create_dir(&real_dir).expect("mkdir");
    let target = real_dir.join("keygate.toml");
    std::fs::write(&target, FILE).expect("write");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let link = dir.path().join("keygate.toml");
    std::os::unix::fs::symlink("real/keygate.toml", &link).expect("symlink");
    let (code, out) = add_to(&link);
    assert_eq!(code, Some(0), "{out}");
    let meta = std::fs::symlink_metadata(&link).expect("lstat");
    assert!(meta.file_type().is_symlink(), "the link was replaced by a file");
    assert_eq!(std::fs::read_link(&link).expect("readlink"), Path::new("real/keygate.toml"));
    assert!(added(&target), "the target holds the new key");
    assert_eq!(mode(&target), 0o600);
    assert_eq!(std::fs::read_dir(&real_dir).expect("ls").count(), 1, "no temporary file left beside the target");
}

#[test]
fn the_owner_is_kept_when_running_as_root() {
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, FILE).expect("write");
    let root = std::fs::metadata(&path).expect("metadata").uid() == 0;
    if !root {
        eprintln!("not root: cannot give the file another owner to check this");
        return;
    }
    std::os::unix::fs::chown(&path, Some(65532), Some(65532)).expect("chown");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (code, out) = add_to(&path);
    assert_eq!(code, Some(0), "{out}");
    let meta = std::fs::metadata(&path).expect("metadata");
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (65532, 65532, 0o640));
    assert!(added(&path));
}

#[test]
fn a_retire_after_too_long_is_an_error_not_a_panic() {
    let dir = tempdir();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, FILE).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keygen", "--client", "billing", "--retire-after", "500000000y", "--add-to"])
        .arg(&path)
        .env_clear()
        .output()
        .expect("run keygen");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&path).expect("read"), FILE, "the file is unchanged");
}
