//! Credentials, one step: find what the caller presented, where, and every
//! copy of it that must not be forwarded; then look the key up.
//!
//! Every place that may carry a key is read once, here. What comes out
//! ([`Presented`]) is all that identification (the credential) and header
//! and query stripping (its [`Copies`]) need: nothing is parsed again.

use std::borrow::Cow;

use http::header::{self, HeaderMap};

use crate::config::Auth;
use crate::error::Reject;
use crate::keys::{self, KeyEntry, KeyTable};

/// Where a credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configured key header.
    Header,
    /// `Authorization`, with an accepted scheme (or raw, when enabled).
    Authorization,
    /// The configured query parameter.
    Query,
}

/// What the caller presented to prove who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// An API key and where it was found.
    Key { value: Cow<'a, [u8]>, source: Source },
    /// A Bearer token shaped like a JWT (read only when `[[jwt]]` is configured).
    Token { value: &'a str },
}

/// The copies of the credential in the request, to be removed before
/// forwarding (and before the query is logged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copies {
    /// Bit `i` set: the `i`-th `Authorization` value carries the credential
    /// (bit 63 stands for the 64th value and every later one).
    pub authorization: u64,
    /// The query holds the key parameter (in any spelling).
    pub query: bool,
}

/// The credential step's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    pub credential: Credential<'a>,
    pub copies: Copies,
}

/// Find the key: the key header, else `Authorization`, else the query
/// parameter when one is configured. Two values in the place the key is read
/// from are refused (401 `invalid_api_key`), whatever the place.
pub fn extract<'a>(headers: &'a HeaderMap, query: Option<&'a str>, auth: &Auth) -> Result<Presented<'a>, Reject> {
    let params = match (&auth.query_param, query) {
        (Some(name), Some(query)) => scan_query(query, name),
        _ => Params::default(),
    };
    if let Some(token) = auth.tokens.then(|| bearer_token(headers, auth)).transpose()?.flatten() {
        // A key beside a token: which one speaks for the caller is unclear.
        if from_header(headers, auth)?.is_some() || params.count > 0 {
            return Err(Reject::BadRequest);
        }
        let copies = Copies { authorization: authorization_copies(headers, token.as_bytes()), query: false };
        return Ok(Presented { credential: Credential::Token { value: token }, copies });
    }
    let (value, source) = match from_header(headers, auth)? {
        Some(key) => (Cow::Borrowed(key), Source::Header),
        None => match from_authorization(headers, auth)? {
            Some(key) => (Cow::Borrowed(key), Source::Authorization),
            None => match params.first {
                _ if params.count > 1 => return Err(Reject::InvalidKey),
                Some(raw) => (percent_decode(raw), Source::Query),
                None => return Err(Reject::MissingKey),
            },
        },
    };
    if value.is_empty() {
        return Err(Reject::MissingKey);
    }
    let copies = Copies { authorization: authorization_copies(headers, &value), query: params.count > 0 };
    Ok(Presented { credential: Credential::Key { value, source }, copies })
}

/// The one `Authorization: Bearer` value shaped like a JWT. A second
/// credential in `Authorization` beside it (a key or a token) is a 400.
fn bearer_token<'a>(headers: &'a HeaderMap, auth: &Auth) -> Result<Option<&'a str>, Reject> {
    let (mut token, mut others) = (None, 0);
    for value in headers.get_all(header::AUTHORIZATION) {
        match split_authorization(value.as_bytes()) {
            (Some(scheme), cred)
                if scheme.eq_ignore_ascii_case(b"bearer") && crate::jwt::verify::looks_like_jwt(cred) =>
            {
                if token.replace(cred).is_some() {
                    return Err(Reject::BadRequest);
                }
            }
            _ => others += usize::from(accepted(value.as_bytes(), auth).is_some_and(|k| !k.is_empty())),
        }
    }
    match token {
        Some(_) if others > 0 => Err(Reject::BadRequest),
        Some(t) => Ok(std::str::from_utf8(t).ok()),
        None => Ok(None),
    }
}

/// The key header's value; two of them are refused.
fn from_header<'a>(headers: &'a HeaderMap, auth: &Auth) -> Result<Option<&'a [u8]>, Reject> {
    let mut values = headers.get_all(&auth.header).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Reject::InvalidKey);
    }
    Ok(first.map(|v| v.as_bytes()))
}

/// The key in `Authorization`: the one value with an accepted scheme (or a
/// raw key, when enabled); two such values are refused.
fn from_authorization<'a>(headers: &'a HeaderMap, auth: &Auth) -> Result<Option<&'a [u8]>, Reject> {
    if auth.schemes.is_empty() && !auth.raw_authorization {
        return Ok(None);
    }
    let mut found = None;
    for value in headers.get_all(header::AUTHORIZATION) {
        let Some(key) = accepted(value.as_bytes(), auth) else { continue };
        if found.replace(key).is_some() {
            return Err(Reject::InvalidKey);
        }
    }
    Ok(found)
}

/// The key in one `Authorization` value, when the value is one keygate reads.
fn accepted<'a>(value: &'a [u8], auth: &Auth) -> Option<&'a [u8]> {
    let is_scheme = |s: &[u8]| auth.schemes.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(s));
    match split_authorization(value) {
        (Some(scheme), credential) => is_scheme(scheme).then_some(credential),
        // A lone word: a scheme without its credential (`Bearer`), else a raw key.
        (None, word) if is_scheme(word) => Some(&[]),
        (None, word) => auth.raw_authorization.then_some(word),
    }
}

/// `<scheme> <credential>`, split at the first run of spaces or tabs; a value
/// without whitespace is all credential.
fn split_authorization(value: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let value = value.trim_ascii();
    match value.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(at) => {
            let (scheme, rest) = value.split_at(at);
            (Some(scheme), rest.trim_ascii())
        }
        None => (None, value),
    }
}

/// Which `Authorization` values carry `key` as their credential, in any
/// scheme (accepted or not) or none: each is removed before forwarding.
fn authorization_copies(headers: &HeaderMap, key: &[u8]) -> u64 {
    let mut marked = 0u64;
    for (i, value) in headers.get_all(header::AUTHORIZATION).iter().enumerate() {
        if split_authorization(value.as_bytes()).1 == key {
            marked |= 1 << i.min(63);
        }
    }
    marked
}

/// Whether the `i`-th `Authorization` value is marked in `marked`.
pub fn is_marked(marked: u64, i: usize) -> bool {
    marked & (1 << i.min(63)) != 0
}

/// The key parameters of a query: the first one's raw value and how many.
#[derive(Debug, Default, Clone, Copy)]
struct Params<'a> {
    first: Option<&'a str>,
    count: usize,
}

fn scan_query<'a>(query: &'a str, name: &str) -> Params<'a> {
    let mut params = Params::default();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if param_is(k, name) {
            params.first = params.first.or(Some(v));
            params.count += 1;
        }
    }
    params
}

/// Whether a raw parameter name is `name` (lower case) once percent-decoded
/// and ASCII case-folded: `api%5Fkey` and `API_KEY` are `api_key`, as many
/// upstream frameworks read them.
pub fn param_is(raw: &str, name: &str) -> bool {
    // Decoding only shortens: a shorter raw name cannot match.
    if raw.len() < name.len() {
        return false;
    }
    let mut want = name.bytes();
    let mut got = Decode(raw.as_bytes().iter());
    loop {
        match (got.next(), want.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.to_ascii_lowercase() == b => {}
            _ => return false,
        }
    }
}

/// `query` without any parameter named `name` (see [`param_is`]); `None`
/// when nothing remains.
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let mut out = String::with_capacity(query.len());
    for pair in query.split('&') {
        if !param_is(pair.split_once('=').map_or(pair, |(k, _)| k), name) {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(pair);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Form decoding of bytes: `%XX` is a byte, `+` a space; a broken escape stays as written.
struct Decode<'a>(std::slice::Iter<'a, u8>);

impl Iterator for Decode<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.0.next()?;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                let rest = self.0.as_slice();
                match (rest.first().and_then(hex_val), rest.get(1).and_then(hex_val)) {
                    (Some(hi), Some(lo)) => {
                        self.0.nth(1);
                        Some(hi << 4 | lo)
                    }
                    _ => Some(b'%'),
                }
            }
            b => Some(b),
        }
    }
}

fn percent_decode(v: &str) -> Cow<'_, [u8]> {
    if !v.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(v.as_bytes());
    }
    Cow::Owned(Decode(v.as_bytes().iter()).collect())
}

fn hex_val(b: &u8) -> Option<u8> {
    char::from(*b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Look a credential up: unknown, corrupt, expired and not-yet-valid keys
/// all give the same answer.
pub fn identify(table: &KeyTable, credential: &Credential<'_>, now: i64) -> Result<KeyEntry, Reject> {
    let Credential::Key { value, .. } = credential else { return Err(Reject::InvalidKey) };
    if keys::is_corrupt_token(value) {
        return Err(Reject::InvalidKey);
    }
    match table.get(&keys::digest(value)) {
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
            raw_authorization: false,
            credential_header: None,
            challenge: HeaderValue::from_static("Bearer realm=\"keygate\""),
            tokens: false,
        }
    }

    fn raw() -> Auth {
        Auth { raw_authorization: true, ..auth(None) }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// The key, its source and the copies found, or the refusal.
    fn found(h: &HeaderMap, query: Option<&str>, a: &Auth) -> Result<(Vec<u8>, Source, Copies), Reject> {
        let p = extract(h, query, a)?;
        match p.credential {
            Credential::Key { value, source } => Ok((value.into_owned(), source, p.copies)),
            Credential::Token { .. } => Err(Reject::NoRoute),
        }
    }

    fn key_and_source(h: &HeaderMap, query: Option<&str>, a: &Auth) -> Result<(Vec<u8>, Source), Reject> {
        found(h, query, a).map(|(k, s, _)| (k, s))
    }

    #[test]
    fn header_first() {
        let h = headers(&[("x-api-key", "k1"), ("authorization", "Bearer k2")]);
        assert_eq!(key_and_source(&h, None, &auth(None)), Ok((b"k1".to_vec(), Source::Header)));
    }

    #[test]
    fn authorization_values_carrying_the_key_are_marked_in_any_scheme_or_spacing() {
        let a = auth(None);
        for (value, carries) in [
            ("Bearer k1", true),
            ("bearer\tk1", true),
            ("Bearer \t k1 ", true),
            ("Token k1", true),
            ("k1", true),
            ("Bearer user-token", false),
            ("Basic azE6", false),
            ("Bearer k1x", false),
        ] {
            let mut h = headers(&[("x-api-key", "k1")]);
            h.append("authorization", HeaderValue::from_str(value).unwrap());
            let (_, _, copies) = found(&h, None, &a).unwrap();
            assert_eq!(copies.authorization != 0, carries, "{value:?}");
        }
    }

    #[test]
    fn every_authorization_value_is_inspected() {
        // Basic first, then the key again: only the second is marked.
        let h = headers(&[("x-api-key", "k1"), ("authorization", "Basic dTpw"), ("authorization", "Bearer k1")]);
        let (_, _, copies) = found(&h, None, &auth(None)).unwrap();
        assert_eq!(copies.authorization, 0b10);
        assert!(!is_marked(copies.authorization, 0) && is_marked(copies.authorization, 1));
        // Without a key header, a Bearer after a Basic is the key.
        let h = headers(&[("authorization", "Basic dTpw"), ("authorization", "Bearer k2")]);
        assert_eq!(
            found(&h, None, &auth(None)),
            Ok((b"k2".to_vec(), Source::Authorization, Copies { authorization: 0b10, query: false }))
        );
    }

    #[test]
    fn far_authorization_values_are_marked_too() {
        let mut h = HeaderMap::new();
        for _ in 0..70 {
            h.append("authorization", HeaderValue::from_static("Basic dTpw"));
        }
        h.append("authorization", HeaderValue::from_static("Token k1"));
        h.append("x-api-key", HeaderValue::from_static("k1"));
        let (_, _, copies) = found(&h, None, &auth(None)).unwrap();
        assert!(is_marked(copies.authorization, 70));
    }

    #[test]
    fn bearer_any_case_and_whitespace() {
        for value in ["bEaReR  k2 ", "Bearer\tk2", "Bearer \t k2"] {
            let mut h = HeaderMap::new();
            h.append("authorization", HeaderValue::from_str(value).unwrap());
            assert_eq!(key_and_source(&h, None, &auth(None)), Ok((b"k2".to_vec(), Source::Authorization)), "{value:?}");
        }
    }

    #[test]
    fn other_scheme_is_not_a_key() {
        let h = headers(&[("authorization", "Basic abc")]);
        assert_eq!(extract(&h, None, &auth(None)), Err(Reject::MissingKey));
    }

    #[test]
    fn a_scheme_without_credential_is_missing() {
        let h = headers(&[("authorization", "Bearer")]);
        assert_eq!(extract(&h, None, &auth(None)), Err(Reject::MissingKey));
        assert_eq!(extract(&h, None, &raw()), Err(Reject::MissingKey));
    }

    #[test]
    fn raw_authorization_only_when_enabled_and_only_one_word() {
        let h = headers(&[("authorization", "k9")]);
        assert_eq!(extract(&h, None, &auth(None)), Err(Reject::MissingKey));
        assert_eq!(key_and_source(&h, None, &raw()), Ok((b"k9".to_vec(), Source::Authorization)));
        let basic = headers(&[("authorization", "Basic abc")]);
        assert_eq!(extract(&basic, None, &raw()), Err(Reject::MissingKey));
        let bearer = headers(&[("authorization", "Bearer k2")]);
        assert_eq!(key_and_source(&bearer, None, &raw()), Ok((b"k2".to_vec(), Source::Authorization)));
    }

    #[test]
    fn query_only_when_enabled() {
        let h = HeaderMap::new();
        assert_eq!(extract(&h, Some("api_key=k3"), &auth(None)), Err(Reject::MissingKey));
        let p = found(&h, Some("a=1&api_key=k%33"), &auth(Some("api_key")));
        assert_eq!(p, Ok((b"k3".to_vec(), Source::Query, Copies { authorization: 0, query: true })));
    }

    #[test]
    fn query_names_are_folded() {
        let a = auth(Some("api_key"));
        for q in ["api%5Fkey=k3", "API_KEY=k3", "Api%5fKey=k3", "%61pi_key=k3"] {
            assert_eq!(key_and_source(&HeaderMap::new(), Some(q), &a), Ok((b"k3".to_vec(), Source::Query)), "{q}");
        }
    }

    #[test]
    fn two_values_in_one_place_are_refused() {
        let a = auth(Some("api_key"));
        let none = HeaderMap::new();
        for q in ["api_key=k&api_key=junk", "api_key=k&api_key=k", "api_key=k&API%5FKEY=k"] {
            assert_eq!(extract(&none, Some(q), &a), Err(Reject::InvalidKey), "{q}");
        }
        let h = headers(&[("x-api-key", "a"), ("x-api-key", "b")]);
        assert_eq!(extract(&h, None, &a), Err(Reject::InvalidKey));
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "bearer a")]);
        assert_eq!(extract(&h, None, &a), Err(Reject::InvalidKey));
    }

    #[test]
    fn a_key_header_with_query_copies_marks_them() {
        let h = headers(&[("x-api-key", "k1")]);
        let (_, source, copies) = found(&h, Some("API_KEY=x&api_key=y"), &auth(Some("api_key"))).unwrap();
        assert_eq!((source, copies.query), (Source::Header, true));
        let (_, _, copies) = found(&h, Some("page=2"), &auth(Some("api_key"))).unwrap();
        assert!(!copies.query);
    }

    #[test]
    fn empty_key_is_missing() {
        let h = headers(&[("x-api-key", "")]);
        assert_eq!(extract(&h, None, &auth(None)), Err(Reject::MissingKey));
        assert_eq!(extract(&HeaderMap::new(), Some("api_key="), &auth(Some("api_key"))), Err(Reject::MissingKey));
    }

    #[test]
    fn param_names_match_after_decoding_and_folding_only() {
        assert!(param_is("api_key", "api_key"));
        assert!(param_is("API%5fKEY", "api_key"));
        assert!(!param_is("xapi_key", "api_key"));
        assert!(!param_is("api_keys", "api_key"));
        assert!(!param_is("api_ke", "api_key"));
        assert!(!param_is("api%5", "api_key"));
    }

    #[test]
    fn strip_keeps_other_params() {
        assert_eq!(strip_query_param("a=1&api_key=x&b=2", "api_key").as_deref(), Some("a=1&b=2"));
        assert_eq!(strip_query_param("api_key=x", "api_key"), None);
        assert_eq!(strip_query_param("api_key=x&API_KEY=y&c", "api_key").as_deref(), Some("c"));
        assert_eq!(strip_query_param("a=1&api%5Fkey=x", "api_key").as_deref(), Some("a=1"));
    }

    #[test]
    fn decoding_keeps_broken_escapes() {
        assert_eq!(percent_decode("a%zzb%4").as_ref(), b"a%zzb%4");
        assert_eq!(percent_decode("a+b%41").as_ref(), b"a bA");
    }
}
