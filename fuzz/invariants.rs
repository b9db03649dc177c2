//! The invariants the fuzz targets assert, shared with `tests/proptests.rs`
//! (which includes this file by path) so that `cargo test` on stable checks
//! exactly what the fuzzers check. Every function panics on a violation.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use keygate::config::Auth;
use keygate::proxy::auth::{self, Copies, Credential};
use keygate::proxy::headers::{self, dashed_eq, dashed_prefix, Forwarded, Owned};
use keygate::proxy::path;

/// Normalising `input` either refuses it or yields a path that is normal,
/// stable under a second pass, and forwarded exactly as it was routed.
pub fn check_path(input: &str) {
    let Ok(out) = path::normalize(input) else { return };
    assert!(out.starts_with('/'), "{input:?} -> {out:?}: not origin-form");
    assert!(!out.contains("//"), "{input:?} -> {out:?}: empty segment");
    for bad in ["%2F", "%2f", "%5C", "%5c", "%00", "\\", "\0"] {
        assert!(!out.contains(bad), "{input:?} -> {out:?}: contains {bad:?}");
    }
    for segment in out.split('/') {
        // Servlet containers drop `;` parameters before resolving dots.
        let bare = segment.split(';').next().unwrap_or_default();
        let bare = bare.split("%3B").next().unwrap_or_default();
        assert!(bare != "." && bare != "..", "{input:?} -> {out:?}: dot segment");
        // Windows servers drop trailing dots and spaces.
        for name in [segment, path::segment_name(segment)] {
            assert!(!name.ends_with('.') && !name.ends_with("%20"), "{input:?} -> {out:?}: trailing dot or space");
        }
    }
    if let Cow::Borrowed(same) = &out {
        assert_eq!(*same, input, "borrowed output differs from input");
    }
    match path::normalize(&out) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, &*out, "not idempotent"),
        other => panic!("{input:?} -> {out:?} -> {other:?}: not idempotent"),
    }
    // What hyper accepted as a target must still be one after normalising,
    // and the upstream must see the very path that was routed.
    if PathAndQuery::try_from(input).is_ok_and(|pq| pq.path() == input) {
        let forwarded = PathAndQuery::try_from(&*out).unwrap_or_else(|e| panic!("{out:?} not forwardable: {e}"));
        assert_eq!(forwarded.path(), &*out, "forwarded path differs from routed path");
    }
}

/// The header configurations the header check cycles through.
const CONFIGS: [(&str, &str, Option<&str>); 3] = [
    ("x-api-key", "x-client-id", None),
    ("x-token", "x-identity", Some("api_key")),
    ("apikey", "x-caller", Some("key")),
];

/// Read `data` as a tiny request: byte 0 picks a configuration (and bit 2
/// whether raw keys in `Authorization` are on), line 1 is the
/// query, every further line is `name: value`. Malformed lines are skipped,
/// as hyper would never hand them over.
pub fn check_headers(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (key_name, identity_name, query_param) = CONFIGS[usize::from(pick) % CONFIGS.len()];
    let auth = Auth {
        header: HeaderName::from_static(key_name),
        schemes: vec!["bearer".into(), "apikey".into()],
        query_param: query_param.map(str::to_string),
        identity_header: HeaderName::from_static(identity_name),
        max_failures_per_minute: 20,
        raw_authorization: pick & 4 != 0,
        credential_header: None,
        challenge: HeaderValue::from_static("Bearer realm=\"keygate\""),
        tokens: pick & 8 != 0,
    };
    let mut lines = rest.split(|b| *b == b'\n');
    let query = lines.next().and_then(|q| std::str::from_utf8(q).ok()).filter(|q| !q.is_empty());
    let mut map = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    check_sanitize(map, query, &auth);
}

fn check_sanitize(mut map: HeaderMap, query: Option<&str>, auth: &Auth) {
    let presented = auth::extract(&map, query, auth).ok();
    let (key, copies) = match presented {
        Some(p) => {
            let value = match p.credential {
                Credential::Key { value, .. } => value.into_owned(),
                Credential::Token { value } => value.as_bytes().to_vec(),
            };
            (Some(value), p.copies)
        }
        None => (None, Copies::default()),
    };
    if let (Some(_), Some(name), Some(q)) = (&key, auth.query_param.as_deref(), query) {
        let kept = if copies.query { auth::strip_query_param(q, name) } else { Some(q.to_string()) };
        let survives = kept.as_deref().is_some_and(|k| {
            k.split('&').any(|pair| auth::param_is(pair.split_once('=').map_or(pair, |(n, _)| n), name))
        });
        assert!(!survives, "a key parameter survives in the query {kept:?}");
    }
    let owned = Owned {
        key_header: &auth.header,
        identity_header: &auth.identity_header,
        credential_header: None,
        remove: &[],
    };
    let connection_named = named_in_connection(&map);
    headers::sanitize_request(&mut map, &owned, copies);
    for name in map.keys() {
        let n = name.as_str();
        assert!(!dashed_eq(n, auth.header.as_str()), "key header {n} survives");
        assert!(!must_be_gone(n, auth), "owned header {n} survives");
        assert!(!connection_named.contains(name), "{n} named in Connection survives");
    }
    if let Some(key) = &key {
        for value in map.get_all(http::header::AUTHORIZATION) {
            assert_ne!(
                credential_of(value.as_bytes()),
                key.as_slice(),
                "an Authorization value carrying the key survives"
            );
        }
    }
    check_forwarded(map, &owned);
}

/// The credential of an `Authorization` value: after the scheme and its
/// spaces or tabs, or the whole value when it is one word.
fn credential_of(value: &[u8]) -> &[u8] {
    let value = value.trim_ascii();
    match value.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(at) => value.split_at(at).1.trim_ascii(),
        None => value,
    }
}

/// Headers keygate owns or that may never be passed on. Hop-by-hop names
/// are exact (they name the connection); the rest in any spelling.
fn must_be_gone(n: &str, auth: &Auth) -> bool {
    const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"];
    const ANY_SPELLING: [&str; 9] = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-credential-identifier",
        "x-anonymous-consumer",
    ];
    HOP_BY_HOP.contains(&n)
        || ANY_SPELLING.iter().any(|e| dashed_eq(n, e))
        || dashed_prefix(n, "x-consumer-")
        || dashed_prefix(n, "x-auth-request-")
        || dashed_eq(n, auth.identity_header.as_str())
        || dashed_prefix(n, "x-forwarded-")
        || dashed_prefix(n, "proxy-")
}

fn named_in_connection(map: &HeaderMap) -> Vec<HeaderName> {
    map.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// keygate's own headers, once set, hold exactly keygate's values.
fn check_forwarded(mut map: HeaderMap, owned: &Owned<'_>) {
    let client = HeaderValue::from_static("billing");
    let request_id = HeaderValue::from_static("req-1");
    let f = Forwarded {
        client_id: &client,
        remote_ip: HeaderValue::from_static("192.0.2.1"),
        proto: "https",
        host: None,
        request_id: &request_id,
        credential: None,
    };
    headers::set_forwarded(&mut map, owned, f);
    let only = |name: &str, want: &str| {
        let values: Vec<_> = map.get_all(name).iter().collect();
        assert_eq!(values, [want], "{name} is not keygate's");
    };
    only(owned.identity_header.as_str(), "billing");
    only("x-forwarded-for", "192.0.2.1");
    only("x-forwarded-proto", "https");
    only("x-request-id", "req-1");
    assert!(!map.contains_key("x-forwarded-host"), "caller's X-Forwarded-Host survives");
}

/// Loading any text as a config file returns a result and never panics; an
/// error renders. A NUL splits the text from `NAME=value` environment lines.
pub fn check_config(data: &[u8]) {
    let (text, env_part) = match data.iter().position(|b| *b == 0) {
        Some(i) => (data.get(..i).unwrap_or_default(), data.get(i + 1..).unwrap_or_default()),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let mut env = BTreeMap::new();
    for line in String::from_utf8_lossy(env_part).lines() {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    // A path in a folder that does not exist, so no certificate file is ever read.
    let path = Path::new("/nonexistent-keygate-fuzz/keygate.toml");
    match keygate::config::load_str(&text, path, &env) {
        Ok(config) => {
            let summary = keygate::app::summary::Summary::of(&config);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 8080));
            let _ = (summary.text(addr, None), summary.json(addr, Some(addr)));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
