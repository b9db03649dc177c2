//! Keys per upstream (`[clients.X] upstreams = [...]`) and `keygate routes`,
//! the permission matrix.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const KEY: &str = "perm-key-0123456789abcdef0123456789abcdef";

/// Upstreams `orders` and `inventory` on one recording server; `routes` and
/// `clients` are appended.
fn config(up: std::net::SocketAddr, routes: &str, clients: &str) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstreams.orders]
servers = ["http://{up}"]

[upstreams.inventory]
servers = ["http://{up}"]

[[routes]]
name = "orders-read"
path = "/orders"
upstream = "orders"

[[routes]]
name = "stock"
path = "/stock"
upstream = "inventory"

[[routes]]
name = "invoices"
path = "/invoices"
upstream = "inventory"
{routes}
{clients}"#
    )
}

fn reports(grants: &str) -> String {
    format!("[clients.reports]\n{grants}\nkeys = [{{ hash = \"{}\" }}]\n", hash(KEY))
}

async fn status(kg: &Keygate, path: &str) -> u16 {
    get(&kg.url(path), &[("x-api-key", KEY)]).await.status.as_u16()
}

#[tokio::test]
async fn an_upstream_grant_covers_routes_added_later_by_a_reload() {
    let up = Upstream::start().await;
    let clients = reports("upstreams = [\"orders\"]");
    let kg = Keygate::start(&config(up.addr, "", &clients)).await;
    assert_eq!(status(&kg, "/orders/7").await, 200);
    assert_eq!(status(&kg, "/stock/1").await, 403);
    assert_eq!(status(&kg, "/returns/1").await, 404);

    let added = "[[routes]]\nname = \"returns\"\npath = \"/returns\"\nupstream = \"orders\"\n";
    std::fs::write(&kg.config_path, config(up.addr, added, &clients)).expect("write config");
    let shared = &kg.handle.as_ref().expect("running").shared;
    assert!(keygate::reload::reload(shared, Some(&kg.config_path)), "reload applied");
    assert_eq!(status(&kg, "/returns/1").await, 200, "the new route of a granted upstream is allowed at once");
    assert_eq!(status(&kg, "/stock/1").await, 403);
    kg.stop().await;
}

#[tokio::test]
async fn routes_and_upstreams_grants_are_a_union() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&config(up.addr, "", &reports("routes = [\"stock\"]\nupstreams = [\"orders\"]"))).await;
    assert_eq!(status(&kg, "/orders/1").await, 200);
    assert_eq!(status(&kg, "/stock/1").await, 200);
    assert_eq!(status(&kg, "/invoices/1").await, 403, "another route of inventory is not granted by naming stock");
    kg.stop().await;
}

#[tokio::test]
async fn the_environment_grants_upstreams_too() {
    let up = Upstream::start().await;
    let env: BTreeMap<String, String> = [
        ("KEYGATE_KEY_REPORTS".to_string(), KEY.to_string()),
        ("KEYGATE_UPSTREAMS_REPORTS".to_string(), "inventory".to_string()),
    ]
    .into();
    let kg = Keygate::start_with_env(&config(up.addr, "", ""), &env).await;
    assert_eq!(status(&kg, "/stock/1").await, 200);
    assert_eq!(status(&kg, "/invoices/1").await, 200);
    assert_eq!(status(&kg, "/orders/1").await, 403);
    kg.stop().await;
}

/// Run the keygate binary with `args` in `dir`, with only `env`.
fn keygate(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run keygate");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn an_unknown_upstream_is_a_check_error_with_its_position_and_a_hint() {
    let dir = tempdir();
    let text = config("127.0.0.1:9".parse().expect("addr"), "", &reports("upstreams = [\"order\"]"));
    std::fs::write(dir.path().join("keygate.toml"), &text).expect("write");
    let (code, _, stderr) = keygate(&["check", "-c", "keygate.toml"], dir.path(), &[]);
    let offset = text.find("\"order\"").expect("needle");
    let line = text[..offset].matches('\n').count() + 1;
    let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
    let expected = format!(
        "keygate.toml:{line}:{col}: clients.reports.upstreams: unknown upstream \"order\"; did you mean \"orders\"?"
    );
    assert_eq!(code, Some(2));
    assert!(stderr.lines().any(|l| l == expected), "expected\n  {expected}\ngot\n{stderr}");
}

#[test]
fn an_unknown_upstream_in_the_environment_names_the_variable() {
    let dir = tempdir();
    let env = [
        ("KEYGATE_UPSTREAM", "http://127.0.0.1:9"),
        ("KEYGATE_KEY_REPORTS", KEY),
        ("KEYGATE_UPSTREAMS_REPORTS", "defualt"),
    ];
    let (code, _, stderr) = keygate(&["check"], dir.path(), &env);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("KEYGATE_UPSTREAMS_REPORTS: unknown upstream \"defualt\"; did you mean \"default\"?"),
        "{stderr}"
    );
}

#[test]
fn a_client_granting_nothing_is_a_check_error() {
    let dir = tempdir();
    let text = config("127.0.0.1:9".parse().expect("addr"), "", &reports(""));
    std::fs::write(dir.path().join("keygate.toml"), &text).expect("write");
    let (code, _, stderr) = keygate(&["check", "-c", "keygate.toml"], dir.path(), &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("clients.reports: grants nothing"), "{stderr}");
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `keygate routes` on the gateway example, against its golden file in
/// tests/golden/. `UPDATE_GOLDEN=1` rewrites them.
#[test]
fn routes_matrix_of_the_examples_matches_the_golden_files() {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempdir();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert, pair.cert.pem()).expect("cert");
    std::fs::write(&key, pair.key_pair.serialize_pem()).expect("key");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let env = [("KEYGATE_TLS_CERT", cert.as_str()), ("KEYGATE_TLS_KEY", key.as_str())];
    let mut compared = 0;
    // mtls.toml needs a client CA file from certs/make-dev-certs.sh; its
    // grants are route names only, which the gateway example covers.
    for example in ["gateway"] {
        for format in ["text", "json", "csv"] {
            let file = format!("config/{example}.toml");
            let (code, stdout, stderr) = keygate(&["routes", "-c", &file, "--format", format], &root(), &env);
            assert_eq!(code, Some(0), "{file}: {stderr}");
            assert!(!stdout.contains("sha256:"), "no key material in the matrix");
            assert!(stdout.lines().all(|l| l.chars().count() <= 100) || format != "text", "fits 100 columns");
            let golden = root().join(format!("tests/golden/routes-{example}.{format}"));
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&golden, &stdout).expect("write golden");
            }
            let expected = std::fs::read_to_string(&golden).unwrap_or_default();
            assert_eq!(stdout, expected, "{} differs (UPDATE_GOLDEN=1 rewrites it)", golden.display());
            compared += 1;
        }
    }
    assert_eq!(compared, 3);
}

#[test]
fn a_matrix_too_wide_for_a_terminal_is_transposed() {
    let dir = tempdir();
    let routes: String = (0..30)
        .map(|i| format!("[[routes]]\nname = \"orders-{i}\"\npath = \"/o{i}\"\nupstream = \"orders\"\n"))
        .collect();
    let text = config("127.0.0.1:9".parse().expect("addr"), &routes, &reports("upstreams = [\"orders\"]"));
    std::fs::write(dir.path().join("keygate.toml"), &text).expect("write");
    let (code, stdout, stderr) = keygate(&["routes", "-c", "keygate.toml"], dir.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.lines().all(|l| l.chars().count() <= 100), "fits 100 columns:\n{stdout}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.split_whitespace().take(4).eq(["upstream", "route", "methods", "path"]),
        "routes become rows: {first}"
    );
    let row = stdout.lines().find(|l| l.contains("orders-29")).expect("a row per route");
    assert!(row.ends_with("upstream"), "reports holds it by its upstream grant: {row}");
}
