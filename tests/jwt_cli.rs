//! `keygate jwt` (the verdict on one token, exit 0/1/2), the env-only
//! issuer (`KEYGATE_JWT_*`) and the token metrics.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::jwks::{claims, jwks, Signer};
use support::*;

const ISS: &str = "https://auth.test";
const AUD: &str = "orders-api";

/// `keygate jwt -c config` with `token` on stdin: exit code and stdout.
fn jwt_command(config: &std::path::Path, token: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["jwt", "-c"])
        .arg(config)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A configuration it refuses ends the command before it reads stdin.
    if let Err(e) = child.stdin.take().unwrap().write_all(token.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn write_config(dir: &std::path::Path, signer: &Signer) -> std::path::PathBuf {
    std::fs::write(dir.join("jwks.json"), jwks(&[signer])).unwrap();
    let path = dir.join("keygate.toml");
    let toml = format!(
        "{}[[jwt]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\nalgorithms = [\"ES256\"]\njwks_file = \"jwks.json\"\n",
        basic_config("127.0.0.1:1".parse().unwrap(), "jwt-cli-key-0001", "")
    );
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn the_jwt_command_prints_header_claims_and_verdict_never_the_signature() {
    let dir = tempdir();
    let signer = Signer::ec("k1");
    let path = write_config(dir.path(), &signer);
    let good = signer.sign(&claims(ISS, AUD, "billing", 300));
    let (code, out) = jwt_command(&path, &format!("Bearer {good}\n"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"kid\":\"k1\"") && out.contains("\"sub\":\"billing\""), "{out}");
    assert!(out.contains("valid: issuer https://auth.test, client billing"), "{out}");
    assert!(!out.contains(good.rsplit('.').next().unwrap()), "the signature was printed");
    for (token, want) in [
        (signer.sign(&claims(ISS, "other-api", "billing", 300)), "Invalid token: audience"),
        (signer.sign(&claims(ISS, AUD, "billing", -3600)), "Invalid token: expired"),
        (Signer::ec("k1").sign(&claims(ISS, AUD, "billing", 300)), "Invalid token: signature"),
        (signer.sign(&claims(ISS, AUD, "nobody", 300)), "naming no configured client"),
        ("not-a-token".to_string(), "not a JWT"),
    ] {
        let (code, out) = jwt_command(&path, &token);
        assert_eq!(code, 1, "{want}: {out}");
        assert!(out.contains(want), "{want}: {out}");
    }
    std::fs::write(&path, "[[jwt]]\nissuer = \"x\"\nalgorithms = [\"none\"]\n").unwrap();
    assert_eq!(jwt_command(&path, &good).0, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_env_only_sidecar_verifies_tokens_and_counts_them() {
    let up = Upstream::start().await;
    let dir = tempdir();
    let signer = Signer::ed("d1");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&signer])).unwrap();
    let upstream = format!("http://{}", up.addr);
    let jwks_file = jwks_path.display().to_string();
    let env = [
        ("KEYGATE_LISTEN", "127.0.0.1:0"),
        ("KEYGATE_ADMIN", "127.0.0.1:0"),
        ("KEYGATE_UPSTREAM", upstream.as_str()),
        ("KEYGATE_KEY_BILLING", "env-only-key-for-billing-000000000001"),
        ("KEYGATE_JWT_ISSUER", ISS),
        ("KEYGATE_JWT_AUDIENCES", "a-api, orders-api"),
        ("KEYGATE_JWT_ALGORITHMS", "EdDSA"),
        ("KEYGATE_JWT_JWKS_FILE", jwks_file.as_str()),
    ];
    let p = Process::serve(None, &env);
    let token = signer.sign(&claims(ISS, AUD, "billing", 300));
    let url = format!("http://{}/x", p.addr);
    assert_eq!(get(&url, &[("authorization", &format!("Bearer {token}"))]).await.status, 200);
    assert_eq!(get(&url, &[("authorization", &format!("Bearer {token}"))]).await.status, 200, "from the cache");
    let forged = Signer::ed("d1").sign(&claims(ISS, AUD, "billing", 300));
    assert_eq!(get(&url, &[("authorization", &format!("Bearer {forged}"))]).await.status, 401);
    let metrics = get(&format!("http://{}/metrics", p.admin.unwrap()), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "keygate_jwt_verifications_total{issuer=\"https://auth.test\",result=\"ok\"} 1",
        "keygate_jwt_verifications_total{issuer=\"-\",result=\"signature\"} 1",
        "keygate_jwt_keys{issuer=\"https://auth.test\"} 1",
        "keygate_jwt_cache_hits_total 1",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    assert!(!p.output().contains("warning"), "a KEYGATE_JWT_* variable is unknown: {}", p.output());
}

#[test]
fn a_jwt_variable_without_the_issuer_is_an_error() {
    let env = keygate::config::Env::from([
        ("KEYGATE_UPSTREAM".to_string(), "http://127.0.0.1:1".to_string()),
        ("KEYGATE_JWT_ALGORITHMS".to_string(), "ES256".to_string()),
    ]);
    let e = keygate::config::load(None, &env).unwrap_err().to_string();
    assert!(e.contains("KEYGATE_JWT_ALGORITHMS") && e.contains("KEYGATE_JWT_ISSUER"), "{e}");
}
