//! The HTTP/1.1 wire format of the upstream hop: the request head written
//! straight from the request's parts, and the response head parsed in place
//! with its body's framing (RFC 9112 §6.3). The reading is strict wherever a
//! lenient one could let one response smuggle another: both `Content-Length`
//! and `Transfer-Encoding`, differing or malformed lengths, `chunked` anywhere
//! but last, obs-fold, and an unasked-for `101` are all refused.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// The largest response head read; a larger one is refused (nginx's
/// `proxy_buffer_size` is 4–8 KiB; this leaves room for big cookies).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header lines in a response head (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// How many headers keygate may add to an upstream response.
const RESPONSE_HEADERS_ADDED: usize = 6;

/// Why an upstream response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("response head larger than 64 KiB")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    Head(&'static str),
    #[error("both Content-Length and Transfer-Encoding in a response")]
    LengthAndEncoding,
    #[error("invalid Content-Length in a response")]
    Length,
    #[error("invalid Transfer-Encoding in a response")]
    Encoding,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// No body (and no framing header, or `content-length: 0`).
    None,
    Length(u64),
    Chunked,
}

impl Upload {
    /// The framing for a body that is `empty` or of `exact` length.
    pub fn of(empty: bool, exact: Option<u64>) -> Upload {
        match (empty, exact) {
            (true, _) | (false, Some(0)) => Upload::None,
            (false, Some(n)) => Upload::Length(n),
            (false, None) => Upload::Chunked,
        }
    }
}

/// Write the request head: origin-form target, the headers as they are
/// except the caller's framing headers, then keygate's own framing.
pub fn encode_head(method: &Method, target: &str, headers: &HeaderMap, upload: Upload, dst: &mut BytesMut) {
    dst.reserve(256 + headers.len() * 32);
    dst.put_slice(method.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(target.as_bytes());
    dst.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    match upload {
        // hyper's rule: methods whose body has a meaning say it is empty.
        Upload::None if !matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT) => {
            dst.put_slice(b"content-length: 0\r\n");
        }
        Upload::None => {}
        Upload::Length(n) => {
            dst.put_slice(b"content-length: ");
            dst.put_slice(itoa::Buffer::new().format(n).as_bytes());
            dst.put_slice(b"\r\n");
        }
        Upload::Chunked => dst.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    dst.put_slice(b"\r\n");
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Everything until the server closes the connection.
    Close,
}

/// A final response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

/// What `parse_head` found at the start of `buf`.
#[derive(Debug)]
pub enum Parsed {
    /// Not all of the head has arrived.
    Partial,
    /// An interim (1xx) response, consumed and skipped.
    Interim,
    Final(Head),
}

/// Parse a response head from the start of `buf`, consuming it when
/// complete. `head_request`: the request was HEAD, so the response has no body.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, ParseError> {
    // Uninitialised slots: zeroing 100 of them cost more than the parse.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(ParseError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::Head("more than 100 header lines")),
        Err(e) => return Err(ParseError::Head(error_text(e))),
    };
    if len > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let code = response.code.ok_or(ParseError::Head("no status"))?;
    let status = StatusCode::from_u16(code).map_err(|_| ParseError::Head("invalid status"))?;
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ParseError::UnaskedUpgrade);
    }
    if status.is_informational() {
        let _ = buf.split_to(len);
        return Ok(Parsed::Interim);
    }
    // Where each name and value sits, so that the values can share the
    // head's bytes instead of being copied one by one.
    let base = buf.as_ptr() as usize;
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let count = response.headers.len();
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        // Offsets within a head of at most MAX_HEAD bytes fit in u32.
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        *span = [
            at(h.name.as_bytes()),
            at(h.name.as_bytes()) + h.name.len() as u32,
            at(h.value),
            at(h.value) + h.value.len() as u32,
        ];
    }
    let head = buf.split_to(len).freeze();
    let headers = header_map(spans.get(..count).unwrap_or_default(), &head)?;
    let (framing, keep_alive) = framing(status, version, &headers, head_request)?;
    Ok(Parsed::Final(Head { status, version, headers, framing, keep_alive }))
}

fn header_map(spans: &[[u32; 4]], head: &Bytes) -> Result<HeaderMap, ParseError> {
    // Room for the headers keygate adds to the response (`X-Request-Id`,
    // `RateLimit-*`), so that adding them does not grow the map.
    let mut headers = HeaderMap::with_capacity(spans.len() + RESPONSE_HEADERS_ADDED);
    for span in spans {
        let [name_start, name_end, start, end] = span.map(|n| n as usize);
        let name = head.get(name_start..name_end).ok_or(ParseError::Head("invalid header name"))?;
        let name = HeaderName::from_bytes(name).map_err(|_| ParseError::Head("invalid header name"))?;
        if start > end || end > head.len() {
            return Err(ParseError::Head("invalid header value"));
        }
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| ParseError::Head("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "more than 100 header lines",
        httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
    }
}

/// The body's framing and whether the connection stays open (RFC 9112 §6.3, §9.3).
pub fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    head_request: bool,
) -> Result<(Framing, bool), ParseError> {
    let keep_alive = match version {
        Version::HTTP_10 => has_token(headers, "keep-alive"),
        _ => !has_token(headers, "close"),
    };
    let bodiless = head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let encoding = headers.contains_key(header::TRANSFER_ENCODING);
    let length = headers.contains_key(header::CONTENT_LENGTH);
    if encoding && length {
        return Err(ParseError::LengthAndEncoding);
    }
    if bodiless {
        return Ok((Framing::Empty, keep_alive));
    }
    if encoding {
        if version == Version::HTTP_10 {
            return Err(ParseError::Encoding);
        }
        return match chunked_last(headers)? {
            true => Ok((Framing::Chunked, keep_alive)),
            false => Ok((Framing::Close, false)),
        };
    }
    if length {
        return match content_length(headers)? {
            0 => Ok((Framing::Empty, keep_alive)),
            n => Ok((Framing::Length(n), keep_alive)),
        };
    }
    Ok((Framing::Close, false))
}

/// Whether `chunked` is the last coding; an error when it appears elsewhere
/// or twice (a body chunked twice would reach the caller half-decoded).
fn chunked_last(headers: &HeaderMap) -> Result<bool, ParseError> {
    let (mut seen, mut last) = (false, false);
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let text = value.to_str().map_err(|_| ParseError::Encoding)?;
        for coding in text.split(',').map(str::trim) {
            // Anything after a `chunked` (another one included) is an error.
            if coding.is_empty() || seen {
                return Err(ParseError::Encoding);
            }
            last = coding.eq_ignore_ascii_case("chunked");
            seen = last;
        }
    }
    Ok(last)
}

/// Every `Content-Length` value, comma lists included, must be the same
/// run of at most 19 digits.
fn content_length(headers: &HeaderMap) -> Result<u64, ParseError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(ParseError::Length);
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match length {
                Some(seen) if seen != n => return Err(ParseError::Length),
                _ => length = Some(n),
            }
        }
    }
    length.ok_or(ParseError::Length)
}

/// Whether a `Connection` header lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, head_request: bool) -> Result<Parsed, ParseError> {
        parse_head(&mut BytesMut::from(raw), head_request)
    }

    fn final_head(raw: &str) -> Head {
        match parse(raw, false) {
            Ok(Parsed::Final(head)) => head,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    type Want = Result<(Framing, bool), ParseError>;

    #[test]
    fn framing_table() {
        let cases: &[(&str, Want)] = &[
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", Ok((Framing::Length(3), true))),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", Ok((Framing::Length(3), true))),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n", Ok((Framing::Length(3), true))),
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Ok((Framing::Empty, true))),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", Ok((Framing::Chunked, true))),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, CHUNKED\r\n\r\n", Ok((Framing::Chunked, true))),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", Ok((Framing::Close, false))),
            ("HTTP/1.1 200 OK\r\n\r\n", Ok((Framing::Close, false))),
            ("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n", Ok((Framing::Length(1), false))),
            ("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Ok((Framing::Length(1), false))),
            ("HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n", Ok((Framing::Length(1), true))),
            ("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n", Ok((Framing::Empty, true))),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", Ok((Framing::Empty, true))),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                Err(ParseError::LengthAndEncoding),
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n", Err(ParseError::Length)),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n", Err(ParseError::Length)),
            ("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n", Err(ParseError::Length)),
            ("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", Err(ParseError::Length)),
            ("HTTP/1.1 200 OK\r\ncontent-length: 0x3\r\n\r\n", Err(ParseError::Length)),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3 3\r\n\r\n", Err(ParseError::Length)),
            ("HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n", Err(ParseError::Length)),
            ("HTTP/1.1 200 OK\r\ncontent-length: 12345678901234567890123\r\n\r\n", Err(ParseError::Length)),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n", Err(ParseError::Encoding)),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n", Err(ParseError::Encoding)),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n", Err(ParseError::Encoding)),
            ("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", Err(ParseError::Encoding)),
        ];
        for (raw, want) in cases {
            let got = parse(raw, false).map(|p| match p {
                Parsed::Final(h) => (h.framing, h.keep_alive),
                other => panic!("{raw:?}: {other:?}"),
            });
            assert_eq!(&got, want, "{raw:?}");
        }
    }

    #[test]
    fn malformed_heads_are_refused() {
        let cases = [
            "HTTP/1.1 2OO OK\r\n\r\n",
            "FOO\r\n\r\n",
            "HTTP/2 200\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        ];
        for raw in cases {
            assert!(parse(raw, false).is_err(), "{raw:?} was accepted");
        }
    }

    #[test]
    fn interim_heads_are_consumed_and_head_requests_have_no_body() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert!(matches!(parse_head(&mut buf, false), Ok(Parsed::Interim)));
        let Ok(Parsed::Final(head)) = parse_head(&mut buf, false) else { panic!("no final head") };
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(&buf[..], b"ok");
        assert_eq!(final_head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n").headers["content-length"], "2");
        let Ok(Parsed::Final(head)) = parse("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", true) else { panic!() };
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert!(matches!(parse("HTTP/1.1 200 OK\r\ncontent-len", false), Ok(Parsed::Partial)));
        let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&huge, false).err(), Some(ParseError::HeadTooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).is_err());
    }

    #[test]
    fn request_heads() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("svc"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let cases = [
            (Method::GET, Upload::None, "GET /p?q HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\n\r\n"),
            (Method::POST, Upload::None, "POST /p?q HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n"),
            (Method::PUT, Upload::Length(12), "PUT /p?q HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\ncontent-length: 12\r\n\r\n"),
            (
                Method::POST,
                Upload::Chunked,
                "POST /p?q HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            ),
        ];
        for (method, upload, want) in cases {
            let mut dst = BytesMut::new();
            encode_head(&method, "/p?q", &headers, upload, &mut dst);
            assert_eq!(std::str::from_utf8(&dst).unwrap(), want);
        }
        assert_eq!(Upload::of(true, Some(5)), Upload::None);
        assert_eq!(Upload::of(false, Some(0)), Upload::None);
        assert_eq!(Upload::of(false, None), Upload::Chunked);
    }
}
