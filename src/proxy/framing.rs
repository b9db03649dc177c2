//! The checks hyper leaves to keygate: ambiguous framing and the header limits.
//!
//! hyper already refuses, with 400 and a closed connection, differing or
//! malformed `Content-Length`s, a final transfer coding other than `chunked`,
//! `Transfer-Encoding` on HTTP/1.0, obs-folds, and control bytes in header
//! values. Given both `Content-Length` and `Transfer-Encoding` it reads the
//! body as chunked, removes `Content-Length` and closes the connection after
//! the response. It accepts codings stacked before `chunked` (`gzip,
//! chunked`) and repeated `Transfer-Encoding`s, which other servers read
//! differently: those are refused here. The header limits are checked here,
//! below hyper's own (set higher in the listener), so that the caller gets
//! keygate's JSON 431 rather than hyper's bare one.

use http::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};

use crate::error::Reject;

/// Bytes a header costs beyond its name and value: `": "` and CRLF.
const PER_HEADER: usize = 4;

/// Refuse a message whose body length could be read two ways.
pub fn check(headers: &HeaderMap) -> Result<(), Reject> {
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(coding) = codings.next() else {
        return Ok(());
    };
    // Transfer codings are case-insensitive (RFC 9112 section 7); anything but
    // one plain `chunked` is a coding keygate would not pass on anyway. The
    // `Content-Length` test is for a message hyper did not already strip.
    let only_chunked = coding.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked");
    if !only_chunked || codings.next().is_some() || headers.contains_key(CONTENT_LENGTH) {
        return Err(Reject::BadRequest);
    }
    Ok(())
}

/// Refuse more than `max_count` headers or more than `max_bytes` of them.
pub fn check_limits(headers: &HeaderMap, max_bytes: usize, max_count: usize) -> Result<(), Reject> {
    if headers.len() > max_count {
        return Err(Reject::HeadersTooLarge);
    }
    let bytes = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + PER_HEADER)
        .fold(0usize, usize::saturating_add);
    if bytes > max_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let name = HeaderName::from_bytes(k.as_bytes()).expect("name");
            h.append(name, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn plain_messages_pass() {
        assert_eq!(check(&map(&[("content-length", "5")])), Ok(()));
        assert_eq!(check(&map(&[])), Ok(()));
    }

    #[test]
    fn chunked_alone_passes_in_any_case() {
        assert_eq!(check(&map(&[("transfer-encoding", "chunked")])), Ok(()));
        assert_eq!(check(&map(&[("transfer-encoding", " Chunked ")])), Ok(()));
    }

    #[test]
    fn length_and_chunked_together_are_refused() {
        let h = map(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        assert_eq!(check(&h), Err(Reject::BadRequest));
    }

    #[test]
    fn stacked_codings_are_refused() {
        for v in ["gzip, chunked", "chunked, chunked", "chunked;x=1", "identity"] {
            assert_eq!(check(&map(&[("transfer-encoding", v)])), Err(Reject::BadRequest), "{v}");
        }
    }

    #[test]
    fn two_transfer_encoding_headers_are_refused() {
        let h = map(&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]);
        assert_eq!(check(&h), Err(Reject::BadRequest));
    }

    #[test]
    fn header_count_limit() {
        let h = map(&[("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(check_limits(&h, 1000, 3), Ok(()));
        assert_eq!(check_limits(&h, 1000, 2), Err(Reject::HeadersTooLarge));
    }

    #[test]
    fn header_size_limit_counts_names_values_and_separators() {
        let h = map(&[("ab", "cdef")]);
        assert_eq!(check_limits(&h, 10, 10), Ok(()));
        assert_eq!(check_limits(&h, 9, 10), Err(Reject::HeadersTooLarge));
    }
}
