//! Validation of `[auth]`, key names and request header rules
//! (`[request_headers]` and each route's `request_headers`).

use http::{HeaderName, HeaderValue};

use super::file::{self, FileConfig, HeaderRulesToml, Str};
use super::validate::Checker;
use super::{Auth, Config, HeaderRules, NamePattern};
use crate::proxy::headers;

pub(super) fn auth(c: &mut Checker<'_>, t: &file::AuthToml) -> Auth {
    let header = header_name(c, &t.header, "auth.header", "x-api-key");
    let identity_header = header_name(c, &t.identity_header, "auth.identity_header", "x-client-id");
    if headers::dashed_eq(header.as_str(), identity_header.as_str()) {
        let (field, set) = match &t.identity_header {
            Some(v) => ("auth.identity_header", Some(v)),
            None => ("auth.header", t.header.as_ref()),
        };
        if let Some(v) = set {
            c.error(v.span(), field, "auth.header and auth.identity_header must differ (also with `_` for `-`)");
        }
    }
    let credential_header = t.credential_header.as_ref().map(|v| {
        let name = header_name(c, &Some(v.clone()), "auth.credential_header", "x-credential-id");
        if [&header, &identity_header].iter().any(|h| headers::dashed_eq(h.as_str(), name.as_str())) {
            c.error(v.span(), "auth.credential_header", "must differ from auth.header and auth.identity_header");
        }
        name
    });
    let written: Vec<Str> = t.authorization_schemes.clone().unwrap_or_else(|| vec![Str::new(0..0, "Bearer".into())]);
    let raw_authorization = written.iter().any(|s| s.get_ref().is_empty());
    let named: Vec<&Str> = written.iter().filter(|s| !s.get_ref().is_empty() && scheme_ok(c, s)).collect();
    let query_param = t.query_param.as_ref().and_then(|q| {
        let v = q.get_ref();
        let ok = v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
        if !ok {
            c.error(q.span(), "auth.query_param", format!("\"{v}\" is not a plain parameter name"));
        }
        // Matched case-insensitively: stored lower case.
        (!v.is_empty() && ok).then(|| v.to_ascii_lowercase())
    });
    let max_failures_per_minute =
        super::validate::count(c, &t.max_failures_per_minute, "auth.max_failures_per_minute", 20)
            .try_into()
            .unwrap_or(u32::MAX);
    let challenge = challenge(c, named.first().map(|s| s.get_ref().as_str()), t.realm.as_ref());
    Auth {
        header,
        schemes: named.iter().map(|s| s.get_ref().to_ascii_lowercase()).collect(),
        query_param,
        identity_header,
        max_failures_per_minute,
        raw_authorization,
        credential_header,
        challenge,
        tokens: false,
    }
}

fn header_name(c: &mut Checker<'_>, v: &Option<Str>, field: &str, default: &'static str) -> HeaderName {
    let fallback = HeaderName::from_static(default);
    let Some(v) = v else { return fallback };
    match HeaderName::from_bytes(v.get_ref().as_bytes()) {
        Ok(h) if headers::is_reserved(&h) => {
            c.error(v.span(), field, format!("\"{}\" is a header keygate manages", v.get_ref()));
            fallback
        }
        Ok(h) => h,
        Err(_) => {
            c.error(v.span(), field, format!("\"{}\" is not a valid header name", v.get_ref()));
            fallback
        }
    }
}

fn scheme_ok(c: &mut Checker<'_>, s: &Str) -> bool {
    let v = s.get_ref();
    let ok = v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+".contains(&b));
    if !ok {
        c.error(s.span(), "auth.authorization_schemes", format!("\"{v}\" is not a scheme name (\"\" is a raw key)"));
    }
    ok
}

/// `<first scheme> realm="<realm>"`, or `ApiKey realm=…` when no scheme is accepted.
fn challenge(c: &mut Checker<'_>, scheme: Option<&str>, realm: Option<&Str>) -> HeaderValue {
    let text = realm.map_or("keygate", |r| r.get_ref().as_str());
    let plain = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if let (false, Some(r)) = (plain, realm) {
        c.error(r.span(), "auth.realm", "must be 1–64 printable characters without '\"' or '\\'");
    }
    let realm = if plain { text } else { "keygate" };
    let value = format!("{} realm=\"{realm}\"", scheme.unwrap_or("ApiKey"));
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("ApiKey realm=\"keygate\""))
}

/// A key's `name`: travels in a header and metric labels, so kept plain.
pub(super) fn key_name(c: &mut Checker<'_>, name: Option<&Str>, field: &str) -> Option<String> {
    let name = name?;
    if !crate::keys::valid_key_name(name.get_ref()) {
        c.error(name.span(), &format!("{field}.name"), "may only hold 1–64 letters, digits, '-', '_' and '.'");
        return None;
    }
    Some(name.get_ref().clone())
}

/// Two keys of one client with the same label would share their metrics.
pub(super) fn duplicate_key_names(c: &mut Checker<'_>, config: &Config) {
    for client in &config.clients {
        let mut seen = std::collections::HashSet::new();
        for key in client.keys.iter().filter(|k| !seen.insert(k.label())) {
            let message = format!("two keys of this client are labelled \"{}\"", key.label());
            match &key.origin {
                super::KeyOrigin::File { field, span } => c.error(span.clone(), &format!("{field}.name"), message),
                super::KeyOrigin::Env(var) => {
                    c.push(super::Origin::Env(var.clone()), &format!("clients.{}", client.id), message)
                }
            }
        }
    }
}

/// Merge `[request_headers]` into every route's own rules (the route's `set`
/// wins for a name both set).
pub(super) fn route_rules(c: &mut Checker<'_>, config: &mut Config, file: &FileConfig) {
    let owned = owned_names(&config.auth);
    let global = file.request_headers.as_ref().map(|t| rules(c, t, "request_headers", &owned)).unwrap_or_default();
    for (i, route) in config.routes.iter_mut().enumerate() {
        let own = file.routes.get(i).and_then(|r| r.request_headers.as_ref());
        let own = own.map(|t| rules(c, t, &format!("routes[{i}].request_headers"), &owned)).unwrap_or_default();
        let mut merged = global.clone();
        merged.remove.extend(own.remove);
        merged.set.retain(|(name, _)| own.set.iter().all(|(n, _)| n != name));
        merged.set.extend(own.set);
        route.request_headers = merged;
    }
}

/// The header names keygate sets or strips as credentials in this config.
fn owned_names(auth: &Auth) -> Vec<HeaderName> {
    let mut names = vec![auth.header.clone(), auth.identity_header.clone()];
    names.extend(auth.credential_header.clone());
    names
}

fn rules(c: &mut Checker<'_>, t: &HeaderRulesToml, field: &str, owned: &[HeaderName]) -> HeaderRules {
    let remove = t.remove.iter().filter_map(|n| pattern(c, n, &format!("{field}.remove"), owned)).collect();
    let set = t
        .set
        .iter()
        .filter_map(|(name, value)| {
            let field = format!("{field}.set");
            let name = match pattern(c, name, &field, owned)? {
                NamePattern::Exact(n) => HeaderName::from_bytes(n.as_bytes()).ok()?,
                NamePattern::Prefix(_) => {
                    c.error(name.span(), &field, "a set header needs a whole name, not a prefix");
                    return None;
                }
            };
            match HeaderValue::from_str(value.get_ref()) {
                Ok(v) => Some((name, v)),
                Err(_) => {
                    c.error(value.span(), &field, "is not a header value (printable characters only)");
                    None
                }
            }
        })
        .collect();
    HeaderRules { remove, set }
}

/// A header name or `prefix-*`, refused when it is one keygate manages.
fn pattern(c: &mut Checker<'_>, v: &Str, field: &str, owned: &[HeaderName]) -> Option<NamePattern> {
    let text = v.get_ref();
    let (name, prefix) = match text.strip_suffix('*') {
        Some(p) => (p, true),
        None => (text.as_str(), false),
    };
    let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
        c.error(v.span(), field, format!("\"{text}\" is not a header name (or a prefix ending in '*')"));
        return None;
    };
    let lower = parsed.as_str().to_string();
    let managed = (headers::is_reserved(&parsed) && parsed != http::header::AUTHORIZATION)
        || owned
            .iter()
            .any(|o| headers::dashed_eq(o.as_str(), &lower) || (prefix && headers::dashed_prefix(o.as_str(), &lower)));
    if managed {
        c.error(v.span(), field, format!("\"{text}\" is a header keygate manages"));
        return None;
    }
    Some(if prefix { NamePattern::Prefix(lower) } else { NamePattern::Exact(lower) })
}
