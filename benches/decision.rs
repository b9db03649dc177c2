//! The per-request decision (credentials → key → route → permission → rate
//! limit), the header rewrite, and loading a config with 100,000 keys.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Method};
use keygate::config::{self, Env};
use keygate::proxy::{auth, headers};
use keygate::state::Snapshot;

/// A config with `keys` keys over 100 clients and `routes` routes.
fn config_text(keys: usize, routes: usize) -> String {
    let mut s =
        String::from("[listen]\naddress = \"127.0.0.1:0\"\n[rate_limit]\nper_second = 1e9\nburst = 1000000000\n");
    s += "[upstreams.main]\nservers = [\"http://127.0.0.1:9\"]\n";
    for r in 0..routes {
        s += &format!("[[routes]]\nname = \"r{r}\"\npath = \"/svc{r}/items\"\nupstream = \"main\"\n");
    }
    let clients = 100.min(keys);
    for c in 0..clients {
        s += &format!("[clients.c{c}]\nroutes = [\"*\"]\nkeys = [\n");
        for k in (c..keys).step_by(clients) {
            s += &format!(
                "  {{ hash = \"{}\" }},\n",
                keygate::keys::format_hash(&keygate::keys::digest(key(k).as_bytes()))
            );
        }
        s += "]\n";
    }
    s
}

fn key(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn snapshot(keys: usize, routes: usize) -> Snapshot {
    let text = config_text(keys, routes);
    let config = config::load_str(&text, Path::new("bench.toml"), &Env::new()).expect("valid config");
    Snapshot::build(config, None).expect("snapshot")
}

fn decide(snap: &Snapshot, headers: &HeaderMap, path: &str) -> bool {
    let Ok(presented) = auth::extract(headers, None, &snap.config.auth) else { return false };
    let Ok(entry) = auth::identify(&snap.keys, &presented.credential, 1_800_000_000) else { return false };
    let Ok(route) = snap.router.find(path, &Method::GET, None) else { return false };
    let Some(client) = snap.clients.get(entry.client as usize) else { return false };
    client.may_call(route) && client.limiter.check().now_or_never().is_some_and(|d| d.allowed())
}

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    for (keys, routes) in [(10, 10), (100_000, 10), (10, 1_000), (100_000, 1_000)] {
        let snap = snapshot(keys, routes);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_str(&key(keys / 2)).expect("key"));
        let path = format!("/svc{}/items/42", routes / 2);
        assert!(decide(&snap, &h, &path));
        group.bench_function(BenchmarkId::new("keys_routes", format!("{keys}_{routes}")), |b| {
            b.iter(|| decide(black_box(&snap), black_box(&h), black_box(&path)))
        });
    }
    group.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "orders.internal"),
        ("user-agent", "curl/8.0"),
        ("accept", "*/*"),
        ("x-api-key", "00000000-0000-4000-8000-000000000001"),
        ("content-type", "application/json"),
        ("x-forwarded-for", "10.0.0.1"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let key_header = http::HeaderName::from_static("x-api-key");
    let identity = http::HeaderName::from_static("x-client-id");
    let owned =
        headers::Owned { key_header: &key_header, identity_header: &identity, credential_header: None, remove: &[] };
    let client = HeaderValue::from_static("billing");
    let rid = HeaderValue::from_static("abc-1");
    c.bench_function("header_rewrite", |b| {
        b.iter(|| {
            let mut h = base.clone();
            headers::sanitize_request(&mut h, &owned, auth::Copies::default());
            let f = headers::Forwarded {
                client_id: &client,
                remote_ip: HeaderValue::from_static("127.0.0.1"),
                proto: "http",
                host: None,
                request_id: &rid,
                credential: None,
            };
            headers::set_forwarded(&mut h, &owned, f);
            black_box(h)
        })
    });
}

fn config_load(c: &mut Criterion) {
    let text = config_text(100_000, 10);
    let mut group = c.benchmark_group("config_load");
    group.sample_size(10);
    group.bench_function("100k_keys", |b| {
        b.iter(|| {
            let config = config::load_str(&text, Path::new("bench.toml"), &Env::new()).expect("valid");
            black_box(Snapshot::build(config, None).expect("snapshot"))
        })
    });
    group.finish();
}

criterion_group!(benches, decision, header_rewrite, config_load);
criterion_main!(benches);
