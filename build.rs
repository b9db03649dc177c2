//! Records the commit keygate is built from (`keygate_build_info{commit}`):
//! `git rev-parse --short HEAD` when git and the repository are there, else
//! "unknown". Reruns only when HEAD moves.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KEYGATE_COMMIT");
    let commit = std::env::var("KEYGATE_COMMIT").ok().filter(|c| !c.is_empty());
    let commit = commit.or_else(|| git(&["rev-parse", "--short", "HEAD"]));
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // HEAD names the branch; logs/HEAD changes with every commit and checkout.
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    let commit: String = commit.unwrap_or_default().chars().filter(char::is_ascii_alphanumeric).collect();
    let commit = if commit.is_empty() { "unknown" } else { &commit };
    println!("cargo:rustc-env=KEYGATE_COMMIT={commit}");
}
