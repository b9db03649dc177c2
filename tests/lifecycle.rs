//! The process lifecycle, against the real binary: hot reload (SIGHUP and
//! file changes) under load, invalid reloads, graceful drain, second signal,
//! and rotation with `keygen --add-to`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::ops::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_fail_no_request() {
    let up = Upstream::start().await;
    let (keep, d, c) = (("stay", "lc-stay-key"), ("dee", "lc-dee-key"), ("cee", "lc-cee-key"));
    let (_dir, path, mut kg) = serve(up.addr, "5s", &[keep, d]);
    let pid = kg.child.id();
    let url = format!("http://{}/load", kg.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for task in 0..4 {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            // Half the tasks keep one connection alive across the reloads, half connect anew.
            let kept = client();
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let fresh;
                let via = if task % 2 == 0 {
                    &kept
                } else {
                    fresh = client();
                    &fresh
                };
                match status_via(via, &url, keep.1).await {
                    Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for i in 0..10 {
        let (clients, added, removed) = if i % 2 == 0 { ([keep, c], c, d) } else { ([keep, d], d, c) };
        replace_file(&path, &gateway(up.addr, "5s", &clients));
        kg.signal("HUP");
        let second = Duration::from_secs(1);
        let accepted = until_status(&url, added.1, 200, second).await;
        assert!(accepted.is_some(), "reload {i}: {} not accepted within a second", added.0);
        let refused = until_status(&url, removed.1, 401, second).await;
        assert!(refused.is_some(), "reload {i}: {} not refused within a second", removed.0);
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("load stops").expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests ({ok} succeeded)");
    assert!(ok >= 100, "the load ran throughout: {ok} requests");
    assert!(kg.child.try_wait().expect("try_wait").is_none(), "the process is still running");
    assert_eq!(kg.child.id(), pid);
    let logged = eventually(Duration::from_secs(2), || kg.output().matches("configuration reloaded").count() >= 10);
    assert!(logged.await, "{}", kg.output());
    let out = kg.output();
    for key in [keep.1, c.1, d.1] {
        assert!(!out.contains(key), "a plain key in the output");
    }
}

#[tokio::test]
async fn invalid_config_on_reload_keeps_the_old_one_and_logs_what_check_prints() {
    let up = Upstream::start().await;
    let (_dir, path, kg) = serve(up.addr, "5s", &[("billing", "lc-inv-key")]);
    let url = format!("http://{}/x", kg.addr);
    let broken =
        gateway(up.addr, "5s", &[("billing", "lc-inv-key")]).replace("routes = [\"*\"]", "routes = [\"nope\"]");
    replace_file(&path, &broken);
    kg.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || kg.output().contains("reload failed")).await, "{}", kg.output());
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "-c"])
        .arg(&path)
        .env_clear()
        .output()
        .expect("run check");
    assert_eq!(check.status.code(), Some(2));
    let check_err = String::from_utf8_lossy(&check.stderr);
    let first = check_err.lines().next().expect("check printed an error");
    assert!(first.contains("unknown route"), "{first}");
    assert!(kg.output().contains(first), "the reload error reads as check's:\n{first}\n---\n{}", kg.output());
    assert_eq!(status(&url, "lc-inv-key").await, Some(200), "the old configuration still serves");
}

#[tokio::test]
async fn editing_the_file_reloads_without_a_signal() {
    let up = Upstream::start().await;
    let (_dir, path, kg) = serve(up.addr, "5s", &[("billing", "lc-edit-a")]);
    let url = format!("http://{}/x", kg.addr);
    assert_eq!(status(&url, "lc-edit-b").await, Some(401));
    // An in-place edit (truncate and write), as `cat > file` or many editors do.
    std::fs::write(&path, gateway(up.addr, "5s", &[("billing", "lc-edit-a"), ("orders", "lc-edit-b")])).expect("edit");
    let took = until_status(&url, "lc-edit-b", 200, Duration::from_secs(5)).await;
    assert!(took.is_some(), "the edit was not picked up: {}", kg.output());
    assert_eq!(status(&url, "lc-edit-a").await, Some(200));
    // The audit line is read from the child's stderr by another thread: let it catch up.
    assert!(eventually(Duration::from_secs(5), || kg.output().contains("trigger=\"file change\"")).await);
}

#[tokio::test]
async fn sighup_reloads_even_without_a_file_change() {
    let up = Upstream::start().await;
    let (_dir, _path, kg) = serve(up.addr, "5s", &[("billing", "lc-hup")]);
    kg.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || kg.output().contains("configuration reloaded")).await);
    assert!(kg.output().contains("SIGHUP"));
}
#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_zero() {
    let up = Upstream::start().await;
    let (_dir, _path, mut kg) = serve(up.addr, "5s", &[("billing", "lc-term")]);
    let slow = slow_request(&kg, &up, 1500, "lc-term").await;
    let signalled = Instant::now();
    kg.signal("TERM");
    let addr = kg.addr;
    let refused = eventually(Duration::from_secs(1), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    })
    .await;
    assert!(refused, "a new connection is refused while draining");
    assert!(signalled.elapsed() < Duration::from_millis(1500), "refused before the slow request ended");
    let answer = tokio::time::timeout(Duration::from_secs(5), slow).await.expect("answered").expect("task");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("slow done"));
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "HTTP/1 clients are told to close: {answer}");
    let code = kg.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", kg.output());
    assert!(signalled.elapsed() < Duration::from_secs(5), "exited within the grace");
}

#[tokio::test]
async fn readyz_turns_503_while_draining() {
    let up = Upstream::start().await;
    let (_dir, _path, mut kg) = serve(up.addr, "10s", &[("billing", "lc-ready")]);
    let admin = kg.admin.expect("admin listener");
    assert_eq!(readyz(admin).await, Some(200));
    let slow = slow_request(&kg, &up, 3000, "lc-ready").await;
    kg.signal("TERM");
    let mut last = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) && last != Some(503) {
        last = readyz(admin).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last, Some(503), "/readyz says not ready during the drain");
    let answer = tokio::time::timeout(Duration::from_secs(10), slow).await.expect("answered").expect("task");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(kg.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let up = Upstream::start().await;
    let (_dir, _path, mut kg) = serve(up.addr, "30s", &[("billing", "lc-twice")]);
    let admin = kg.admin.expect("admin listener");
    let _slow = slow_request(&kg, &up, 20_000, "lc-twice").await;
    kg.signal("TERM");
    let mut draining = false;
    let start = Instant::now();
    while !draining && start.elapsed() < Duration::from_secs(2) {
        draining = readyz(admin).await == Some(503);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(draining, "the first signal started the drain");
    let second = Instant::now();
    kg.signal("TERM");
    assert!(kg.wait_exit(Duration::from_secs(3)).is_some(), "the second signal ends the process");
    assert!(second.elapsed() < Duration::from_secs(3));
    assert!(eventually(Duration::from_secs(2), || kg.output().contains("second stop signal")).await, "{}", kg.output());
}

#[tokio::test]
async fn keygen_add_to_keeps_comments_and_the_running_proxy_takes_the_key() {
    let up = Upstream::start().await;
    let (_dir, path, kg) = serve(up.addr, "5s", &[("billing", "lc-rot-old")]);
    let url = format!("http://{}/x", kg.addr);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keygen", "--client", "billing", "--retire-after", "7d", "--add-to"])
        .arg(&path)
        .env_clear()
        .output()
        .expect("run keygen");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout.lines().find_map(|l| l.strip_prefix("key:")).expect("keygen printed a key").trim().to_string();
    let text = std::fs::read_to_string(&path).expect("read config");
    for comment in ["# managed by the lifecycle tests", "# the billing service", "# first key"] {
        assert!(text.contains(comment), "{comment:?} lost:\n{text}");
    }
    assert!(text.contains(&hash(&key)) && text.contains("expires ="), "{text}");
    let took = until_status(&url, &key, 200, Duration::from_secs(5)).await;
    assert!(took.is_some(), "the new key was not accepted: {}", kg.output());
    assert_eq!(status(&url, "lc-rot-old").await, Some(200), "the old key works until it expires");
    assert!(!kg.output().contains(&key), "the plain key reached keygate's output");
}

#[tokio::test]
async fn drain_sends_http2_clients_goaway_and_finishes_their_streams() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, "lc-h2", "")).await;
    let tcp = tokio::net::TcpStream::connect(kg.addr).await.expect("connect");
    let (h2, conn) =
        tokio::time::timeout(Duration::from_secs(5), h2::client::handshake(tcp)).await.expect("in time").expect("h2");
    let conn = tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("ready");
    let req = || http::Request::get(kg.url("/slow/1000")).header("x-api-key", "lc-h2").body(()).expect("request");
    let (in_flight, _) = h2.send_request(req(), true).expect("send");
    assert!(eventually(Duration::from_secs(5), || up.count() == 1).await);
    kg.handle.as_ref().expect("running").shutdown();
    // After GOAWAY the client may open no new stream on this connection.
    let mut refused = false;
    let start = Instant::now();
    while !refused && start.elapsed() < Duration::from_secs(2) {
        refused = match h2.clone().ready().await {
            Err(_) => true,
            Ok(mut s) => match s.send_request(req(), true) {
                Err(_) => true,
                Ok((res, _)) => tokio::time::timeout(Duration::from_secs(3), res).await.is_ok_and(|r| r.is_err()),
            },
        };
    }
    assert!(refused, "no GOAWAY seen");
    let res = tokio::time::timeout(Duration::from_secs(5), in_flight).await.expect("in time").expect("response");
    assert_eq!(res.status(), 200, "the stream in flight completes");
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await.expect("the connection closes");
    assert!(closed.expect("task").is_ok(), "closed gracefully");
    kg.stop().await;
}

#[tokio::test]
async fn a_kubernetes_configmap_update_is_picked_up() {
    use std::os::unix::fs::symlink;
    let up = Upstream::start().await;
    // The layout kubelet mounts: keygate.toml -> ..data/keygate.toml, ..data -> ..<version>.
    let dir = tempdir();
    let version = |name: &str, text: &str| {
        std::fs::create_dir(dir.path().join(name)).expect("version folder");
        std::fs::write(dir.path().join(name).join("keygate.toml"), text).expect("write");
    };
    version("..v1", &gateway(up.addr, "5s", &[("billing", "lc-k8s-a")]));
    symlink("..v1", dir.path().join("..data")).expect("link");
    let path = dir.path().join("keygate.toml");
    symlink("..data/keygate.toml", &path).expect("link");
    let kg = Process::serve(Some(&path), &[]);
    let url = format!("http://{}/x", kg.addr);
    assert_eq!(status(&url, "lc-k8s-b").await, Some(401));
    version("..v2", &gateway(up.addr, "5s", &[("billing", "lc-k8s-a"), ("orders", "lc-k8s-b")]));
    symlink("..v2", dir.path().join("..data_tmp")).expect("link");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");
    let took = until_status(&url, "lc-k8s-b", 200, Duration::from_secs(5)).await;
    assert!(took.is_some(), "the swapped ConfigMap was not picked up: {}", kg.output());
}

#[tokio::test]
async fn a_changed_listen_address_needs_a_restart_and_is_not_rebound() {
    let up = Upstream::start().await;
    let (_dir, path, kg) = serve(up.addr, "5s", &[("billing", "lc-addr")]);
    let url = format!("http://{}/x", kg.addr);
    let moved = gateway(up.addr, "5s", &[("billing", "lc-addr")])
        .replace("address = \"127.0.0.1:0\"\nshutdown", "address = \"127.0.0.1:1\"\nshutdown");
    replace_file(&path, &moved);
    kg.signal("HUP");
    // The rest of the change applies: the reload succeeds.
    let reloaded = eventually(Duration::from_secs(5), || kg.output().contains("configuration reloaded")).await;
    assert!(reloaded, "{}", kg.output());
    assert!(kg.output().contains("listen.address changed"), "{}", kg.output());
    assert_eq!(status(&url, "lc-addr").await, Some(200), "still serving where it was bound");
}
