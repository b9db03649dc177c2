//! Header rules for forwarding: pure functions over a `HeaderMap`.
//!
//! Order matters: first everything the caller may not pass on is removed
//! (hop-by-hop, whatever `Connection` names, every copy of the credential,
//! method and path overrides, other gateways' identity headers, keygate's own
//! headers in any spelling, and the configured `remove` rules); then the
//! configured `set` rules; only then does keygate set its own, so no header
//! sent by the caller or configured can remove or replace them.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::auth::{self, Copies};
use crate::config::{HeaderRules, NamePattern};

/// Headers removed because they describe one connection, not the message.
const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"];

/// Headers that would let a caller change the method the upstream sees.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Headers whose value upstreams trust to describe the caller.
const SPOOFABLE: [&str; 2] = ["forwarded", "x-real-ip"];

/// Headers that let a caller change the path an upstream framework routes on
/// (IIS URL Rewrite, Symfony, Zend, Laminas).
const PATH_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Identity headers set by other gateways and auth proxies (Kong, APISIX,
/// oauth2-proxy, Envoy, Authelia, Grafana's auth proxy): an upstream that once
/// sat behind one may still trust them. Always removed, in any spelling.
pub const GATEWAY_IDENTITY: [&str; 11] = [
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-userinfo",
    "x-jwt-payload",
    "x-remote-user",
    "x-webauth-user",
    "gap-auth",
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
];

/// Prefixes of other gateways' identity headers (the `X-Forwarded-*` family,
/// which holds oauth2-proxy's `X-Forwarded-User` and `-Email`, goes anyway).
pub const GATEWAY_IDENTITY_PREFIXES: [&str; 4] = ["x-consumer-", "x-authenticated-", "x-auth-request-", "x-envoy-"];

/// The request id header, kept if the caller sent a sane one.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a header name is one keygate manages, so it may not be configured as a key
/// or identity header.
pub fn is_reserved(name: &HeaderName) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n)
        || METHOD_OVERRIDES.contains(&n)
        || SPOOFABLE.contains(&n)
        || dashed_prefix(n, "x-forwarded-")
        || dashed_prefix(n, "proxy-")
        || n == "host"
        || n == "content-length"
        || n == "authorization"
        || n == REQUEST_ID.as_str()
}

/// `name` equals `target` once `_` and `-` are read as one (names are already
/// lower case), whichever of the two spells it.
pub fn dashed_eq(name: &str, target: &str) -> bool {
    name.len() == target.len() && dashed_prefix(name, target)
}

/// `name` starts with `prefix` once `_` and `-` are read as one.
pub fn dashed_prefix(name: &str, prefix: &str) -> bool {
    let dash = |b: u8| b == b'-' || b == b'_';
    name.len() >= prefix.len() && name.bytes().zip(prefix.bytes()).all(|(a, b)| a == b || (dash(a) && dash(b)))
}

/// The headers that carry or describe the caller's identity in this config,
/// and the configured `remove` rules.
#[derive(Debug, Clone)]
pub struct Owned<'a> {
    pub key_header: &'a HeaderName,
    pub identity_header: &'a HeaderName,
    pub credential_header: Option<&'a HeaderName>,
    pub remove: &'a [NamePattern],
}

/// Whether `name` must never be passed on from a caller.
fn must_strip(name: &str, owned: &Owned<'_>) -> bool {
    always_stripped(name)
        || dashed_eq(name, owned.key_header.as_str())
        || dashed_eq(name, owned.identity_header.as_str())
        || owned.credential_header.is_some_and(|h| dashed_eq(name, h.as_str()))
        || owned.remove.iter().any(|p| pattern_matches(p, name))
}

/// The fixed lists, looked up by first letter: a header like `accept` or
/// `user-agent` is cleared with one comparison instead of thirty.
fn always_stripped(name: &str) -> bool {
    let any = |list: &[&str]| list.iter().any(|h| dashed_eq(name, h));
    match name.as_bytes().first() {
        Some(b'x') => {
            dashed_prefix(name, "x-forwarded-")
                || any(&METHOD_OVERRIDES)
                || any(&SPOOFABLE)
                || any(&PATH_OVERRIDES)
                || gateway_identity(name)
        }
        Some(b'c' | b'k' | b't' | b'u') => any(&HOP_BY_HOP),
        Some(b'f') => any(&SPOOFABLE),
        Some(b'p') => dashed_prefix(name, "proxy-"),
        Some(b'g' | b'r') => gateway_identity(name),
        _ => false,
    }
}

/// Whether `name` is another gateway's identity header, in any spelling.
pub fn gateway_identity(name: &str) -> bool {
    GATEWAY_IDENTITY.iter().any(|h| dashed_eq(name, h))
        || GATEWAY_IDENTITY_PREFIXES.iter().any(|p| dashed_prefix(name, p))
}

/// Whether a configured name or prefix covers `name`, in any spelling.
pub fn pattern_matches(pattern: &NamePattern, name: &str) -> bool {
    match pattern {
        NamePattern::Exact(n) => dashed_eq(name, n),
        NamePattern::Prefix(p) => dashed_prefix(name, p),
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The hop-by-hop headers as names, in `HOP_BY_HOP`'s order.
const HOP_BY_HOP_NAMES: [HeaderName; 6] =
    [header::CONNECTION, KEEP_ALIVE, header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::UPGRADE];

/// Remove every header named in `Connection` and every hop-by-hop header.
///
/// One look over the names finds which hop-by-hop headers are there (most
/// responses carry `Connection` alone), and only those are removed: six
/// removals by name cost more than the rest of the response's handling.
pub fn strip_connection_headers(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name.as_str()) {
            if let Some(p) = present.get_mut(i) {
                *p = true;
            }
        }
    }
    if present.iter().any(|p| *p) {
        strip_connection_named(headers);
    }
    for (name, here) in HOP_BY_HOP_NAMES.into_iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
}

/// Remove the headers that `Connection` names (it may name any header).
fn strip_connection_named(headers: &mut HeaderMap) {
    let connection = headers.get_all(header::CONNECTION);
    // The usual values (`keep-alive`, `upgrade`) name only headers that go
    // anyway: nothing to collect.
    let only_hop_by_hop = connection.iter().all(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').map(str::trim).all(|t| HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h))))
    });
    if only_hop_by_hop {
        return;
    }
    let named: Vec<HeaderName> = connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Remove from a request everything the caller may not pass on: hop-by-hop
/// headers, headers named in `Connection`, the key header and every
/// `Authorization` value carrying the credential, method and path overrides,
/// other gateways' identity headers, keygate's own headers in any spelling,
/// and the configured `remove` rules.
pub fn sanitize_request(headers: &mut HeaderMap, owned: &Owned<'_>, copies: Copies) {
    // Hop-by-hop headers themselves go in the pass below, in any spelling.
    strip_connection_named(headers);
    remove_authorization(headers, copies.authorization);
    // The key in its configured spelling is the usual one: removed by name,
    // the pass below then usually collects nothing (and allocates nothing).
    headers.remove(owned.key_header);
    let doomed: Vec<HeaderName> = headers.keys().filter(|name| must_strip(name.as_str(), owned)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Remove the `Authorization` values marked as carrying the credential,
/// keeping the others (a caller's own `Basic`, say) in order.
fn remove_authorization(headers: &mut HeaderMap, marked: u64) {
    if marked == 0 {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .enumerate()
        .filter(|(i, _)| !auth::is_marked(marked, *i))
        .map(|(_, v)| v.clone())
        .collect();
    headers.remove(header::AUTHORIZATION);
    for value in kept {
        headers.append(header::AUTHORIZATION, value);
    }
}

/// Apply the configured `set` rules (after stripping, before keygate's own).
pub fn apply_set(headers: &mut HeaderMap, rules: &HeaderRules) {
    for (name, value) in &rules.set {
        headers.insert(name.clone(), value.clone());
    }
}

/// What keygate tells the upstream about a forwarded request.
#[derive(Debug, Clone)]
pub struct Forwarded<'a> {
    pub client_id: &'a HeaderValue,
    pub remote_ip: HeaderValue,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
    /// The credential's label, when `auth.credential_header` is set.
    pub credential: Option<&'a HeaderValue>,
}

/// Set keygate's headers on a sanitised request.
pub fn set_forwarded(headers: &mut HeaderMap, owned: &Owned<'_>, f: Forwarded<'_>) {
    headers.insert(owned.identity_header.clone(), f.client_id.clone());
    if let (Some(name), Some(value)) = (owned.credential_header, f.credential) {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(X_FORWARDED_FOR, f.remote_ip);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    if let Some(host) = f.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    headers.insert(REQUEST_ID, f.request_id.clone());
}

/// A caller's request id is kept only if it is short and printable.
pub fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=@".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_names() -> (HeaderName, HeaderName) {
        (HeaderName::from_static("x-api-key"), HeaderName::from_static("x-client-id"))
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn owned<'a>(k: &'a HeaderName, i: &'a HeaderName, remove: &'a [NamePattern]) -> Owned<'a> {
        Owned { key_header: k, identity_header: i, credential_header: None, remove }
    }

    fn sanitized(pairs: &[(&str, &str)], key_in_auth: bool) -> HeaderMap {
        let (k, i) = owned_names();
        let mut h = map(pairs);
        let copies = Copies { authorization: u64::from(key_in_auth), query: false };
        sanitize_request(&mut h, &owned(&k, &i, &[]), copies);
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn response_hop_by_hop_headers_go_with_or_without_connection() {
        let mut h = map(&[("keep-alive", "timeout=5"), ("x-kept", "1")]);
        strip_connection_headers(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut h = map(&[("connection", "x-hop, close"), ("x-hop", "1"), ("trailer", "t"), ("x-kept", "1")]);
        strip_connection_headers(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut h = map(&[("x-kept", "1"), ("content-type", "text/plain")]);
        strip_connection_headers(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn strips_key_header_and_underscore_variant() {
        let h = sanitized(&[("x-api-key", "k"), ("x_api_key", "k"), ("accept", "*/*")], false);
        assert!(h.get("x-api-key").is_none() && h.get("x_api_key").is_none());
        assert!(h.get("accept").is_some());
    }

    #[test]
    fn strips_identity_spoofs_in_any_spelling() {
        let h = sanitized(&[("x-client-id", "a"), ("x_client_id", "b"), ("x_client-id", "c")], false);
        assert!(h.is_empty());
    }

    #[test]
    fn strips_forwarded_family() {
        let h = sanitized(
            &[("x-forwarded-for", "1"), ("x_forwarded_host", "h"), ("forwarded", "for=1"), ("x-real-ip", "1")],
            false,
        );
        assert!(h.is_empty());
    }

    #[test]
    fn strips_connection_named_and_hop_by_hop() {
        let h = sanitized(
            &[
                ("connection", "x-secret, keep-alive"),
                ("connection", "x-other"),
                ("x-secret", "1"),
                ("x-other", "2"),
                ("te", "trailers"),
                ("proxy-authorization", "p"),
                ("keep-alive", "5"),
                ("upgrade", "h2c"),
                ("x-kept", "3"),
            ],
            false,
        );
        assert_eq!(h.len(), 1);
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn authorization_removed_only_when_it_carried_the_key() {
        assert!(sanitized(&[("authorization", "Bearer k")], true).is_empty());
        assert!(sanitized(&[("authorization", "Basic x")], false).get("authorization").is_some());
    }

    #[test]
    fn strips_hop_by_hop_spelled_with_underscores() {
        // CGI-style upstreams read `transfer_encoding` as Transfer-Encoding.
        let h = sanitized(&[("transfer_encoding", "chunked"), ("keep_alive", "1"), ("x-kept", "1")], false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn strips_method_overrides() {
        let h = sanitized(
            &[("x-http-method-override", "DELETE"), ("x-http-method", "PUT"), ("x_method_override", "PUT")],
            false,
        );
        assert!(h.is_empty());
    }

    #[test]
    fn connection_cannot_remove_keygate_headers() {
        let (k, i) = owned_names();
        let owned = owned(&k, &i, &[]);
        let mut h = sanitized(&[("connection", "x-client-id, x-forwarded-for, x-request-id")], false);
        let id = HeaderValue::from_static("billing");
        let rid = HeaderValue::from_static("r1");
        set_forwarded(
            &mut h,
            &owned,
            Forwarded {
                client_id: &id,
                remote_ip: HeaderValue::from_static("127.0.0.1"),
                proto: "http",
                host: None,
                request_id: &rid,
                credential: None,
            },
        );
        assert_eq!(h.get("x-client-id").unwrap(), "billing");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(h.get("x-request-id").unwrap(), "r1");
    }

    #[test]
    fn only_the_marked_authorization_values_go() {
        let (k, i) = owned_names();
        let mut h =
            map(&[("authorization", "Basic dTpw"), ("authorization", "Bearer k"), ("authorization", "Digest x")]);
        sanitize_request(&mut h, &owned(&k, &i, &[]), Copies { authorization: 0b010, query: false });
        let left: Vec<&str> = h.get_all("authorization").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["Basic dTpw", "Digest x"]);
    }

    #[test]
    fn names_configured_with_underscores_cover_both_spellings() {
        let k = HeaderName::from_static("api_key");
        let i = HeaderName::from_static("x_client_id");
        let mut h = map(&[
            ("api-key", "k"),
            ("api_key", "k"),
            ("x-client-id", "admin"),
            ("X_Client-Id", "a"),
            ("accept", "*/*"),
        ]);
        sanitize_request(&mut h, &owned(&k, &i, &[]), Copies::default());
        assert_eq!(names(&h), ["accept"]);
        assert!(dashed_eq("x-client-id", "x_client_id") && dashed_eq("x_client_id", "x-client-id"));
    }

    #[test]
    fn strips_path_overrides() {
        let h = sanitized(&[("x-original-url", "/admin"), ("X_Rewrite_URL", "/admin"), ("x-kept", "1")], false);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn strips_other_gateways_identity_headers() {
        let spoofs = [
            "x-consumer-username",
            "x-consumer-id",
            "x-consumer-custom-id",
            "x_consumer_groups",
            "x-credential-identifier",
            "x-anonymous-consumer",
            "x-authenticated-userid",
            "x-auth-request-user",
            "x-auth-request-email",
            "x-forwarded-user",
            "x-forwarded-email",
            "x-userinfo",
            "x-envoy-original-path",
            "gap-auth",
            "remote-user",
        ];
        let mut pairs: Vec<(&str, &str)> = spoofs.iter().map(|n| (*n, "admin")).collect();
        pairs.extend([("x-user-agent-extra", "1"), ("accept", "*/*"), ("remote-addr-note", "1")]);
        let h = sanitized(&pairs, false);
        let mut left = names(&h);
        left.sort_unstable();
        assert_eq!(left, ["accept", "remote-addr-note", "x-user-agent-extra"]);
    }

    #[test]
    fn configured_removals_by_name_and_prefix_in_any_spelling() {
        let (k, i) = owned_names();
        let remove = [NamePattern::Exact("x-debug".into()), NamePattern::Prefix("x-internal-".into())];
        let mut h =
            map(&[("x-debug", "1"), ("x_debug", "1"), ("x-internal-a", "1"), ("X_Internal_B", "1"), ("x-kept", "1")]);
        sanitize_request(&mut h, &owned(&k, &i, &remove), Copies::default());
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn set_rules_replace_the_callers_and_keygate_wins_after() {
        let (k, i) = owned_names();
        let rules = HeaderRules {
            remove: Vec::new(),
            set: vec![(HeaderName::from_static("x-env"), HeaderValue::from_static("prod"))],
        };
        let mut h = map(&[("x-env", "dev"), ("x-env", "test")]);
        sanitize_request(&mut h, &owned(&k, &i, &rules.remove), Copies::default());
        apply_set(&mut h, &rules);
        let values: Vec<&str> = h.get_all("x-env").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(values, ["prod"]);
    }

    #[test]
    fn credential_header_is_stripped_then_set() {
        let (k, i) = owned_names();
        let c = HeaderName::from_static("x-credential-id");
        let o = Owned { key_header: &k, identity_header: &i, credential_header: Some(&c), remove: &[] };
        let mut h = map(&[("x_credential_id", "forged"), ("x-credential-id", "forged")]);
        sanitize_request(&mut h, &o, Copies::default());
        assert!(h.is_empty());
        let (id, rid, label) =
            (HeaderValue::from_static("b"), HeaderValue::from_static("r"), HeaderValue::from_static("2026-12"));
        let f = Forwarded {
            client_id: &id,
            remote_ip: HeaderValue::from_static("127.0.0.1"),
            proto: "http",
            host: None,
            request_id: &rid,
            credential: Some(&label),
        };
        set_forwarded(&mut h, &o, f);
        assert_eq!(h.get("x-credential-id").unwrap(), "2026-12");
    }

    #[test]
    fn every_fixed_list_entry_is_stripped_in_both_spellings() {
        let lists = [&HOP_BY_HOP[..], &METHOD_OVERRIDES, &SPOOFABLE, &PATH_OVERRIDES, &GATEWAY_IDENTITY];
        for name in lists.iter().flat_map(|l| l.iter()) {
            assert!(always_stripped(name) && always_stripped(&name.replace('-', "_")), "{name}");
        }
        for prefix in GATEWAY_IDENTITY_PREFIXES.iter().chain(&["x-forwarded-", "proxy-"]) {
            let name = format!("{prefix}anything");
            assert!(always_stripped(&name) && always_stripped(&name.replace('-', "_")), "{name}");
        }
        for kept in ["accept", "user-agent", "content-type", "x-kept", "cookie", "remote-addr-note", "te-x"] {
            assert!(!always_stripped(kept), "{kept}");
        }
    }

    #[test]
    fn reserved_names() {
        assert!(is_reserved(&HeaderName::from_static("x-forwarded-for")));
        assert!(is_reserved(&HeaderName::from_static("connection")));
        assert!(!is_reserved(&HeaderName::from_static("x-api-key")));
    }

    #[test]
    fn request_id_rules() {
        assert!(acceptable_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!acceptable_request_id(&HeaderValue::from_static("a b")));
        assert!(!acceptable_request_id(&HeaderValue::from_static("")));
    }
}
