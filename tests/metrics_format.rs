//! `/metrics` in both formats, negotiated by `Accept`: the classic text
//! format checked by `promtool check metrics` and Python prometheus_client's
//! classic parser, OpenMetrics by prometheus_client's OpenMetrics parser
//! (promtool reads the classic format only). Both carry the `process_*`
//! metrics and `keygate_build_info`.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

const KEY: &str = "metrics-format-key-71c4";
/// What Prometheus 2.x sends when scraping.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

async fn start() -> (Upstream, Keygate) {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "[admin]\naddress = \"127.0.0.1:0\"\n")).await;
    // A counted request and a counted failure, so counter families have samples.
    assert_eq!(get(&kg.url("/x"), &[("x-api-key", KEY)]).await.status, 200);
    assert_eq!(get(&kg.url("/x"), &[("x-api-key", "wrong-key-0000")]).await.status, 401);
    (up, kg)
}

async fn scrape(kg: &Keygate, accept: Option<&str>) -> (String, String) {
    let url = format!("http://{}/metrics", kg.admin.expect("admin listener"));
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let r = get(&url, &headers).await;
    assert_eq!(r.status, 200);
    let content_type = r.header("content-type").unwrap_or_default().to_string();
    (content_type, String::from_utf8(r.body.to_vec()).expect("UTF-8 body"))
}

/// Run `program args` with `input` on stdin; (exit success, stdout + stderr).
fn run(program: &str, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} ({e}): scripts/test.sh installs it"));
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The families Python prometheus_client's `parser` module reads, as "name type" lines.
fn python_families(module: &str, body: &str) -> String {
    let script = format!(
        "import sys\nfrom prometheus_client.{module} import text_string_to_metric_families as parse\n\
         for f in parse(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n"
    );
    let (ok, out) = run("/usr/bin/python3", &["-c", &script], body);
    assert!(ok, "prometheus_client.{module} refused the body:\n{out}\n{body}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_text_by_default_passes_promtool() {
    let (_up, kg) = start().await;
    for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4"), Some("application/json")] {
        let (content_type, body) = scrape(&kg, accept).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8", "{accept:?}");
        assert!(!body.contains("# EOF") && !body.contains("# UNIT"), "{body}");
        assert!(body.contains("# TYPE keygate_requests_total counter\n"), "{body}");
        let (ok, out) = run("promtool", &["check", "metrics"], &body);
        assert!(ok && out.trim().is_empty(), "promtool check metrics:\n{out}\n{body}");
        let families = python_families("parser", &body);
        assert!(!families.contains(" unknown "), "a family read as unknown:\n{families}");
        for want in ["keygate_requests counter", "keygate_auth_failures counter", "process_cpu_seconds counter"] {
            assert!(families.contains(want), "{want} in:\n{families}");
        }
    }
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openmetrics_when_the_scraper_asks() {
    let (_up, kg) = start().await;
    for accept in [PROMETHEUS_ACCEPT, "application/openmetrics-text; version=1.0.0"] {
        let (content_type, body) = scrape(&kg, Some(accept)).await;
        assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8", "{accept}");
        assert!(body.ends_with("# EOF\n") && body.matches("# EOF").count() == 1, "{body}");
        let families = python_families("openmetrics.parser", &body);
        assert!(!families.contains(" unknown "), "a family read as unknown:\n{families}");
        for want in ["keygate_requests counter", "process_cpu_seconds counter", "keygate_build_info gauge 1"] {
            assert!(families.contains(want), "{want} in:\n{families}");
        }
    }
    kg.stop().await;
}

/// The value of the sample named `name` (no labels).
fn sample(body: &str, name: &str) -> f64 {
    let line = body.lines().find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' '))).expect(name);
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn process_metrics_and_build_info() {
    let (_up, kg) = start().await;
    let (_, body) = scrape(&kg, None).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!(sample(&body, "process_cpu_seconds_total") > 0.0, "{body}");
    assert!(sample(&body, "process_resident_memory_bytes") > 1_000_000.0, "{body}");
    let (open, max) = (sample(&body, "process_open_fds"), sample(&body, "process_max_fds"));
    assert!(open >= 4.0 && max >= open, "open {open}, max {max}");
    let start = sample(&body, "process_start_time_seconds");
    assert!(start <= now + 1.0 && start > now - 3600.0, "started at {start}, now {now}");
    let build = body.lines().find(|l| l.starts_with("keygate_build_info{")).expect("keygate_build_info");
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(build.contains(&version) && build.ends_with("} 1"), "{build}");
    let commit = build.split("commit=\"").nth(1).and_then(|c| c.split('"').next()).expect("commit label");
    let head = Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok();
    match head.filter(|o| o.status.success()) {
        // Built in a git checkout: an abbreviated commit hash.
        Some(_) => assert!(commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()), "{build}"),
        None => assert_eq!(commit, "unknown", "{build}"),
    }
    kg.stop().await;
}
