//! gRPC on the request path: which requests are gRPC calls, their
//! `grpc-timeout`, and keygate's refusals rendered as gRPC answers
//! (trailers-only: HTTP 200 with `grpc-status` and `grpc-message`).

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;

use super::respond;
use crate::body::ResponseBody;
use crate::error::Reject;
use crate::limit::Decision;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether the request is a gRPC call: `content-type: application/grpc`,
/// alone or with a `+format` or `;parameters`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(header::CONTENT_TYPE) else { return false };
    let v = v.as_bytes();
    let prefix = b"application/grpc";
    v.len() >= prefix.len()
        && v.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        && matches!(v.get(prefix.len()), None | Some(b'+' | b';'))
}

/// The caller's `grpc-timeout` (1 to 8 digits and a unit: H M S m u n).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether the caller sent `te: trailers` (stripped as hop-by-hop, then
/// restored towards HTTP/2 upstreams, where gRPC servers require it).
pub fn asks_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))))
}

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%`.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        match b {
            b' '..=b'~' if b != b'%' => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A refusal as a gRPC answer: HTTP 200, trailers-only, with the same
/// `x-request-id` (set by the caller of this) and rate-limit headers as JSON.
pub fn reject(reject: Reject, limit: Option<&Decision>) -> Response<ResponseBody> {
    let (_, _, message) = reject.parts();
    let mut response = Response::new(ResponseBody::empty());
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS, HeaderValue::from(u16::from(reject.grpc_status())));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert(GRPC_MESSAGE, v);
    }
    if let Some(seconds) = reject.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(decision) = limit {
        respond::rate_limit_headers(h, decision);
    }
    response
}

/// The `grpc-status` in `headers` (a trailers-only answer, or trailers), as
/// a metric label: a valid code 0 to 16 (other values are `unknown`).
pub fn status(headers: &HeaderMap) -> Option<&'static str> {
    const CODES: [&str; 17] =
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
    let v = headers.get(GRPC_STATUS)?.to_str().ok()?;
    Some(CODES.iter().find(|c| **c == v).copied().unwrap_or("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_content_types() {
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
            ("application/grp", false),
        ] {
            assert_eq!(is_grpc(&with(header::CONTENT_TYPE, ct)), grpc, "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_in_every_unit_and_malformed_ones() {
        for (v, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789m", None),
            ("m", None),
            ("10", None),
            ("10x", None),
            ("-1S", None),
            ("1 S", None),
        ] {
            assert_eq!(timeout(&with(GRPC_TIMEOUT, v)), want, "{v}");
        }
    }

    #[test]
    fn te_trailers_among_others() {
        assert!(asks_trailers(&with(header::TE, "trailers")));
        assert!(asks_trailers(&with(header::TE, "gzip, Trailers")));
        assert!(!asks_trailers(&with(header::TE, "gzip")));
        assert!(!asks_trailers(&HeaderMap::new()));
    }

    #[test]
    fn status_labels() {
        assert_eq!(status(&with(GRPC_STATUS, "0")), Some("0"));
        assert_eq!(status(&with(GRPC_STATUS, "16")), Some("16"));
        assert_eq!(status(&with(GRPC_STATUS, "17")), Some("unknown"));
        assert_eq!(status(&with(GRPC_STATUS, "01")), Some("unknown"));
        assert_eq!(status(&HeaderMap::new()), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("API key missing"), "API key missing");
        assert_eq!(percent_encode("100% sure"), "100%25 sure");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn the_contract_mapping() {
        for (reject, code) in [
            (Reject::MissingKey, 16),
            (Reject::InvalidKey, 16),
            (Reject::Forbidden, 7),
            (Reject::NoRoute, 12),
            (Reject::RateLimited { retry_after: 1 }, 8),
            (Reject::QuotaExceeded { retry_after: 1 }, 8),
            (Reject::BadGateway, 14),
            (Reject::GatewayTimeout, 4),
            (Reject::BadRequest, 13),
        ] {
            let response = super::reject(reject, None);
            assert_eq!(response.status(), http::StatusCode::OK);
            assert_eq!(response.headers()[GRPC_STATUS], code.to_string().as_str(), "{reject:?}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        }
    }
}
