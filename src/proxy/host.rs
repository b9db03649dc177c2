//! The request's host: which value counts, what a valid one looks like, and
//! the one name it is matched by.
//!
//! Upstreams fold a host's letter case, one trailing dot and the port, and
//! some read userinfo (`x:1@internal.svc`) or escapes (`internal%2esvc`) in
//! their own way. A value is either a plain host name (or an IPv6 literal)
//! with an optional port, or it is refused; the name routes are matched by
//! is the folded one, so every spelling of a host reaches that host's routes.

use std::borrow::Cow;
use std::net::Ipv6Addr;

use http::header::{self, HeaderValue};
use http::request::Parts;

use crate::error::Reject;

/// Why a host value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A byte that is not a letter, digit, `-`, `_`, `.` or a port's `:`
    /// (userinfo `@`, escapes `%`, spaces, non-ASCII).
    #[error("not a host name")]
    Syntax,
    /// An empty label: `a..b`, `.a`, or more than one trailing dot.
    #[error("empty label in host name")]
    EmptyLabel,
    /// A port that is not 1–5 digits up to 65535.
    #[error("invalid port")]
    Port,
    /// Brackets that do not hold an IPv6 address.
    #[error("invalid IPv6 literal")]
    Ipv6,
}

/// The host the request is for: the URI's authority (absolute-form or HTTP/2
/// `:authority`) wins over `Host`; two `Host` headers are refused.
pub fn request_host(parts: &Parts) -> Result<Option<HeaderValue>, Reject> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject::BadRequest);
    }
    if let Some(authority) = parts.uri.authority() {
        return HeaderValue::from_str(authority.as_str()).map(Some).map_err(|_| Reject::BadRequest);
    }
    // RFC 9112: an HTTP/1.1 request without Host is refused.
    if first.is_none() && parts.version == http::Version::HTTP_11 {
        return Err(Reject::BadRequest);
    }
    Ok(first.cloned())
}

/// The name routes are matched by, for a `Host` or authority value; a value
/// that is not a host is a 400.
pub fn route_name(host: &HeaderValue) -> Result<Cow<'_, str>, Reject> {
    let text = std::str::from_utf8(host.as_bytes()).map_err(|_| Reject::BadRequest)?;
    parse(text).map_err(|_| Reject::BadRequest)
}

/// Validates `host[:port]` and returns the host name lower-cased, without
/// port and without one trailing dot. Borrowed unless letters were folded or
/// the value is an IPv6 literal (written in its canonical form). An empty
/// value (an empty `Host`) is the empty name: it matches no route's host.
pub fn parse(value: &str) -> Result<Cow<'_, str>, HostError> {
    let (name, port) = split_port(value)?;
    if let Some(port) = port {
        check_port(port)?;
    }
    if let Some(inside) = name.strip_prefix('[') {
        let address = inside.strip_suffix(']').ok_or(HostError::Ipv6)?;
        let address: Ipv6Addr = address.parse().map_err(|_| HostError::Ipv6)?;
        return Ok(Cow::Owned(format!("[{address}]")));
    }
    if value.is_empty() {
        return Ok(Cow::Borrowed(""));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    check_labels(name)?;
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(Cow::Owned(name.to_ascii_lowercase()));
    }
    Ok(Cow::Borrowed(name))
}

/// A route's `host` setting: a name as [`parse`] folds it, without port.
pub fn config_name(value: &str) -> Result<String, String> {
    let name = parse(value).map_err(|e| format!("\"{value}\": {e}"))?;
    if split_port(value).is_ok_and(|(_, port)| port.is_some()) {
        return Err(format!("\"{value}\": a route host has no port (ports are ignored in matching)"));
    }
    Ok(name.into_owned())
}

/// Splits off `:port`; the host part of an IPv6 literal keeps its brackets.
fn split_port(value: &str) -> Result<(&str, Option<&str>), HostError> {
    let end = match value.strip_prefix('[') {
        Some(rest) => rest.find(']').map(|i| i + 2).ok_or(HostError::Ipv6)?,
        None => value.find(':').unwrap_or(value.len()),
    };
    let (name, rest) = value.split_at_checked(end).ok_or(HostError::Syntax)?;
    match rest.strip_prefix(':') {
        Some(port) => Ok((name, Some(port))),
        None if rest.is_empty() => Ok((name, None)),
        None => Err(HostError::Syntax),
    }
}

fn check_port(port: &str) -> Result<(), HostError> {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(_) if digits => Ok(()),
        _ => Err(HostError::Port),
    }
}

/// Every dot-separated label is non-empty and made of host name bytes.
fn check_labels(name: &str) -> Result<(), HostError> {
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(HostError::Syntax);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(value: &str) -> String {
        parse(value).unwrap_or_else(|e| panic!("{value:?} refused: {e}")).into_owned()
    }

    #[test]
    fn folds_case_port_and_one_trailing_dot() {
        for value in [
            "internal.svc",
            "INTERNAL.SVC",
            "Internal.Svc:8080",
            "internal.svc.",
            "internal.svc.:80",
            "internal.svc:443",
        ] {
            assert_eq!(name(value), "internal.svc", "{value:?}");
        }
    }

    #[test]
    fn plain_lower_case_names_are_borrowed() {
        for value in ["internal.svc", "internal.svc:8080", "internal.svc.", "10.0.0.1:80", "my_service", "a-b.c"] {
            assert!(matches!(parse(value), Ok(Cow::Borrowed(_))), "{value:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_host_name() {
        for value in [
            "x:1@internal.svc",
            "x@internal.svc",
            "internal%2esvc",
            "internal.svc ",
            " internal.svc",
            "internal svc",
            "internal.svc/x",
            "internal.svc\\",
            "internal.svc?",
            "internal.svc#",
            "caf\u{e9}.svc",
            "a,b",
            "a:1:2",
        ] {
            assert!(parse(value).is_err(), "{value:?} accepted");
        }
    }

    #[test]
    fn refuses_empty_labels() {
        for value in ["internal.svc..", "internal..svc", ".internal.svc", ".", "..", "internal.svc..:80"] {
            assert_eq!(parse(value), Err(HostError::EmptyLabel), "{value:?}");
        }
    }

    #[test]
    fn refuses_bad_ports() {
        for value in ["a:", "a:x", "a:65536", "a:123456", "a:-1", "a:+1", "[::1]:", "[::1]:x"] {
            assert_eq!(parse(value), Err(HostError::Port), "{value:?}");
        }
        assert_eq!(name("a:65535"), "a");
        assert_eq!(name("a:0"), "a");
    }

    #[test]
    fn ipv6_literals_in_canonical_form() {
        assert_eq!(name("[::1]"), "[::1]");
        assert_eq!(name("[0:0::1]:8443"), "[::1]");
        assert_eq!(name("[2001:DB8::1]"), "[2001:db8::1]");
        for value in ["[::1", "[::1]x", "[fe80::1%25eth0]", "[v1.x]", "[]", "[::1]]", "::1"] {
            assert!(parse(value).is_err(), "{value:?} accepted");
        }
    }

    #[test]
    fn empty_host_matches_no_host() {
        assert_eq!(name(""), "");
        assert_eq!(parse(":80"), Err(HostError::EmptyLabel));
    }

    #[test]
    fn route_hosts_fold_the_same_and_have_no_port() {
        assert_eq!(config_name("Internal.SVC.").as_deref(), Ok("internal.svc"));
        assert!(config_name("internal.svc:443").is_err());
        assert!(config_name("x@internal.svc").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_is_stable(value in "[a-zA-Z0-9.:_@%\\[\\] -]{0,24}") {
            if let Ok(name) = parse(&value) {
                let again = parse(&name);
                proptest::prop_assert_eq!(again.as_deref(), Ok(&*name));
                proptest::prop_assert!(!name.bytes().any(|b| b.is_ascii_uppercase() || b == b'@' || b == b'%'));
            }
        }
    }

    #[test]
    fn route_name_refuses_with_400() {
        assert_eq!(route_name(&HeaderValue::from_static("x:1@internal.svc")), Err(Reject::BadRequest));
        let value = HeaderValue::from_static("INTERNAL.svc.:80");
        assert_eq!(route_name(&value).as_deref(), Ok("internal.svc"));
    }
}
