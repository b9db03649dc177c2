//! Credentials: find the key in the request, then look its digest up.

use std::borrow::Cow;

use http::header::{self, HeaderMap};

use crate::config::Auth;
use crate::error::Reject;
use crate::keys::{self, KeyEntry, KeyTable};

/// Where the key was found, so that exactly that is removed before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Header,
    Authorization,
    Query,
}

/// A key presented by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    pub key: Cow<'a, [u8]>,
    pub source: KeySource,
}

impl Presented<'_> {
    /// Whether `Authorization` carries this key, so it must be stripped: when the
    /// key came from it, and also when the key header and `Bearer` repeat the key.
    pub fn in_authorization(&self, headers: &HeaderMap, auth: &Auth) -> bool {
        self.source == KeySource::Authorization
            || matches!(from_authorization(headers, &auth.schemes), Ok(Some(k)) if k == self.key.as_ref())
    }
}

/// Find the key: the key header, else `Authorization: <scheme> <key>`, else the
/// query parameter when one is configured. Two values in one place are refused.
pub fn extract<'a>(headers: &'a HeaderMap, query: Option<&'a str>, auth: &Auth) -> Result<Presented<'a>, Reject> {
    let mut values = headers.get_all(&auth.header).iter();
    if let Some(v) = values.next() {
        if values.next().is_some() {
            return Err(Reject::InvalidKey);
        }
        return non_empty(v.as_bytes(), KeySource::Header);
    }
    if !auth.schemes.is_empty() {
        if let Some(key) = from_authorization(headers, &auth.schemes)? {
            return non_empty(key, KeySource::Authorization);
        }
    }
    if let (Some(name), Some(query)) = (&auth.query_param, query) {
        if let Some(key) = query_value(query, name) {
            let key = match key {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            };
            return match key.is_empty() {
                true => Err(Reject::MissingKey),
                false => Ok(Presented { key, source: KeySource::Query }),
            };
        }
    }
    Err(Reject::MissingKey)
}

fn non_empty(key: &[u8], source: KeySource) -> Result<Presented<'_>, Reject> {
    if key.is_empty() {
        return Err(Reject::MissingKey);
    }
    Ok(Presented { key: Cow::Borrowed(key), source })
}

/// The key in `Authorization` when its scheme is an accepted one.
fn from_authorization<'a>(headers: &'a HeaderMap, schemes: &[String]) -> Result<Option<&'a [u8]>, Reject> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let split = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
    let (scheme, rest) = bytes.split_at(split);
    let accepted = schemes.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(scheme));
    if !accepted {
        return Ok(None);
    }
    if values.next().is_some() {
        return Err(Reject::InvalidKey);
    }
    Ok(Some(rest.trim_ascii()))
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Whether `query` holds a `name` parameter.
pub fn has_query_param(query: &str, name: &str) -> bool {
    query.split('&').any(|pair| param_name(pair) == name)
}

fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

/// `query` without any `name=` parameter; `None` when nothing remains.
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query.split('&').filter(|pair| param_name(pair) != name).collect();
    let joined = kept.join("&");
    (!joined.is_empty()).then_some(joined)
}

fn percent_decode(v: &str) -> Cow<'_, str> {
    if !v.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut bytes = v.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(hex_val);
                let lo = bytes.next().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex_val(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Look a presented key up: unknown, corrupt, expired and not-yet-valid keys
/// all give the same answer.
pub fn identify(table: &KeyTable, key: &[u8], now: i64) -> Result<KeyEntry, Reject> {
    if keys::is_corrupt_token(key) {
        return Err(Reject::InvalidKey);
    }
    match table.get(&keys::digest(key)) {
        Some(entry) if entry.valid_at(now) => Ok(*entry),
        _ => Err(Reject::InvalidKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn auth(query: Option<&str>) -> Auth {
        Auth {
            header: HeaderName::from_static("x-api-key"),
            schemes: vec!["bearer".into()],
            query_param: query.map(str::to_string),
            identity_header: HeaderName::from_static("x-client-id"),
            max_failures_per_minute: 20,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn header_first() {
        let h = headers(&[("x-api-key", "k1"), ("authorization", "Bearer k2")]);
        let p = extract(&h, None, &auth(None)).unwrap();
        assert_eq!((p.key.as_ref(), p.source), (&b"k1"[..], KeySource::Header));
    }

    #[test]
    fn authorization_repeating_the_header_key_carries_it() {
        let a = auth(None);
        let same = headers(&[("x-api-key", "k1"), ("authorization", "Bearer k1")]);
        assert!(extract(&same, None, &a).unwrap().in_authorization(&same, &a));
        let other = headers(&[("x-api-key", "k1"), ("authorization", "Bearer user-token")]);
        assert!(!extract(&other, None, &a).unwrap().in_authorization(&other, &a));
    }

    #[test]
    fn bearer_any_case() {
        let h = headers(&[("authorization", "bEaReR  k2 ")]);
        let p = extract(&h, None, &auth(None)).unwrap();
        assert_eq!((p.key.as_ref(), p.source), (&b"k2"[..], KeySource::Authorization));
    }

    #[test]
    fn other_scheme_is_not_a_key() {
        let h = headers(&[("authorization", "Basic abc")]);
        assert_eq!(extract(&h, None, &auth(None)), Err(Reject::MissingKey));
    }

    #[test]
    fn query_only_when_enabled() {
        let h = HeaderMap::new();
        assert_eq!(extract(&h, Some("api_key=k3"), &auth(None)), Err(Reject::MissingKey));
        let p = extract(&h, Some("a=1&api_key=k%33"), &auth(Some("api_key"))).unwrap();
        assert_eq!((p.key.as_ref(), p.source), (&b"k3"[..], KeySource::Query));
    }

    #[test]
    fn two_key_headers_are_refused() {
        let h = headers(&[("x-api-key", "a"), ("x-api-key", "b")]);
        assert_eq!(extract(&h, None, &auth(None)), Err(Reject::InvalidKey));
    }

    #[test]
    fn empty_key_is_missing() {
        let h = headers(&[("x-api-key", "")]);
        assert_eq!(extract(&h, None, &auth(None)), Err(Reject::MissingKey));
    }

    #[test]
    fn finds_a_param_by_exact_name() {
        assert!(has_query_param("a=1&api_key=x", "api_key"));
        assert!(has_query_param("api_key", "api_key"));
        assert!(!has_query_param("xapi_key=1&api_keys=2", "api_key"));
    }

    #[test]
    fn strip_keeps_other_params() {
        assert_eq!(strip_query_param("a=1&api_key=x&b=2", "api_key").as_deref(), Some("a=1&b=2"));
        assert_eq!(strip_query_param("api_key=x", "api_key"), None);
        assert_eq!(strip_query_param("api_key=x&api_key=y&c", "api_key").as_deref(), Some("c"));
    }
}
