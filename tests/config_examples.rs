//! The example configurations in config/ pass `keygate check`, and the README's
//! configuration reference names every field of the schema.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch tree with config/ copied and development certificates made by
/// certs/make-dev-certs.sh, laid out as in the repository.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
    for entry in std::fs::read_dir(root().join("config")).expect("config/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name");
        std::fs::copy(&path, dir.path().join("config").join(name)).expect("copy");
    }
    let out = dir.path().join("certs/dev");
    let status = Command::new("bash")
        .arg(root().join("certs/make-dev-certs.sh"))
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run make-dev-certs.sh (needs openssl)");
    assert!(status.success(), "make-dev-certs.sh failed");
    dir
}

fn check(config: Option<&Path>, env: &[(String, String)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.arg("check").env_clear();
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.envs(env.iter().cloned());
    let out = cmd.output().expect("run keygate check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn dev_tls_env(dir: &Path) -> Vec<(String, String)> {
    let certs = dir.join("certs/dev");
    vec![
        ("KEYGATE_TLS_CERT".into(), certs.join("server.crt").display().to_string()),
        ("KEYGATE_TLS_KEY".into(), certs.join("server.key").display().to_string()),
    ]
}

#[test]
fn every_toml_example_passes_check() {
    let dir = scratch();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path().join("config")).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out) = check(Some(&path), &dev_tls_env(dir.path()));
            assert_eq!(code, 0, "{}: {out}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected the gateway and mTLS examples");
}

#[test]
fn sidecar_env_example_passes_check() {
    let dir = scratch();
    let text = std::fs::read_to_string(root().join("config/sidecar.env")).expect("sidecar.env");
    let mut env: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.starts_with("KEYGATE_TLS_"))
        .collect();
    assert!(env.iter().any(|(k, _)| k == "KEYGATE_UPSTREAM"));
    env.extend(dev_tls_env(dir.path()));
    let (code, out) = check(None, &env);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn readme_reference_names_every_schema_field() {
    let schema = std::fs::read_to_string(root().join("src/config/file.rs")).expect("file.rs");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let reference =
        readme.split("## Configuration reference").nth(1).expect("README has a \"## Configuration reference\" section");
    let reference = reference.split("\n## ").next().unwrap_or(reference);
    let missing: Vec<&str> = schema
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .filter(|name| !reference.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "README configuration reference lacks: {missing:?}");
}
