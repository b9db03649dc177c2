//! The chunked transfer coding of a response body (RFC 9112 §7.1), decoded
//! from the connection's read buffer without copying the data. Strict: line
//! ends are CRLF, sizes are at most 16 hex digits, extensions and trailers
//! are bounded, and anything else ends the body with an error.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::codec::{ParseError, MAX_HEADERS};

/// The longest chunk-size line (size and extensions) read.
const MAX_LINE: usize = 4 * 1024;
/// The largest trailer section read.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` read so far.
    Size {
        size: u64,
        digits: u8,
        line: usize,
    },
    /// After the size: extensions up to the CR.
    Extension {
        size: u64,
        line: usize,
    },
    /// The CR of the size line was read; LF next.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// CRLF after a chunk's data; `cr` once the CR was read.
    DataEnd {
        cr: bool,
    },
    Trailers,
    Done,
}

/// What one step found.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// More bytes are needed.
    NeedMore,
    Data(Bytes),
    /// The end, with the trailer fields when there were any.
    End(Option<HeaderMap>),
}

/// A chunked body being decoded.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder { state: State::Size { size: 0, digits: 0, line: 0 } }
    }
}

impl Decoder {
    /// Whether the last chunk and the trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Take the next piece of the body from the start of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ParseError> {
        loop {
            if let State::Data { left } = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                self.state = if left == 0 { State::DataEnd { cr: false } } else { State::Data { left } };
                return Ok(Decoded::Data(data));
            }
            if self.state == State::Trailers {
                return self.trailers(buf);
            }
            if self.state == State::Done {
                return Ok(Decoded::End(None));
            }
            let Some(&byte) = buf.first() else { return Ok(Decoded::NeedMore) };
            self.state = step(self.state, byte)?;
            buf.advance(1);
        }
    }

    /// The trailer section: an empty line, or header lines ending in one.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ParseError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(Decoded::End(None));
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete((len, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let name = http::HeaderName::from_bytes(f.name.as_bytes());
                    let value = http::HeaderValue::from_bytes(f.value);
                    let (Ok(name), Ok(value)) = (name, value) else { return Err(ParseError::Chunk("invalid trailer")) };
                    trailers.append(name, value);
                }
                buf.advance(len);
                self.state = State::Done;
                Ok(Decoded::End(Some(trailers)))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => Err(ParseError::Chunk("trailers too large")),
            Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
            Err(_) => Err(ParseError::Chunk("invalid trailer")),
        }
    }
}

/// One byte of the size line or of the CRLF after the data.
fn step(state: State, byte: u8) -> Result<State, ParseError> {
    let next = match state {
        State::Size { size, digits, line } => match (byte as char).to_digit(16) {
            Some(_) if digits == 16 => return Err(ParseError::Chunk("chunk size too large")),
            Some(d) => State::Size { size: size << 4 | u64::from(d), digits: digits + 1, line: line + 1 },
            None if digits == 0 => return Err(ParseError::Chunk("invalid chunk size")),
            None if byte == b'\r' => State::SizeLf { size },
            None if byte == b';' || byte == b' ' || byte == b'\t' => State::Extension { size, line: line + 1 },
            None => return Err(ParseError::Chunk("invalid chunk size")),
        },
        State::Extension { line, .. } if line >= MAX_LINE => return Err(ParseError::Chunk("chunk extension too long")),
        State::Extension { size, .. } if byte == b'\r' => State::SizeLf { size },
        State::Extension { .. } if byte != b'\t' && (byte < 0x20 || byte == 0x7f) => {
            return Err(ParseError::Chunk("control character in a chunk extension"))
        }
        State::Extension { size, line } => State::Extension { size, line: line + 1 },
        State::SizeLf { size } if byte == b'\n' => match size {
            0 => State::Trailers,
            left => State::Data { left },
        },
        State::DataEnd { cr: false } if byte == b'\r' => State::DataEnd { cr: true },
        State::DataEnd { cr: true } if byte == b'\n' => State::Size { size: 0, digits: 0, line: 0 },
        State::SizeLf { .. } | State::DataEnd { .. } => return Err(ParseError::Chunk("missing CRLF")),
        State::Data { .. } | State::Trailers | State::Done => state,
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `raw` fed in pieces of `step` bytes; the body, or the error.
    fn decode_all(raw: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, usize), ParseError> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End(trailers) => return Ok((body, trailers, buf.len() + raw.len() - fed)),
                Decoded::NeedMore if fed == raw.len() => return Err(ParseError::Chunk("truncated")),
                Decoded::NeedMore => {
                    let end = (fed + step).min(raw.len());
                    buf.extend_from_slice(&raw[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn valid_bodies_in_every_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"3;foo=bar\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n", b"abc0123456789"),
            (b"1 ;x\r\na\r\n0\r\n\r\n", b"a"),
            (b"0000003\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"0\r\n\r\n", b""),
        ];
        for (raw, want) in cases {
            for step in [1, 2, 3, 7, 1000] {
                let (body, trailers, left) = decode_all(raw, step).unwrap_or_else(|e| panic!("{raw:?}/{step}: {e}"));
                assert_eq!(&body, want, "{raw:?}/{step}");
                assert!(trailers.is_none());
                assert_eq!(left, 0);
            }
        }
    }

    #[test]
    fn trailers_are_returned_and_bytes_after_the_end_left() {
        let raw = b"2\r\nok\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\nHTTP/1.1 200";
        for step in [1, 5, 1000] {
            let (body, trailers, left) = decode_all(raw, step).unwrap();
            assert_eq!(body, b"ok");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["x-sum"], "1");
            assert_eq!(trailers["x-b"], "2");
            assert_eq!(left, "HTTP/1.1 200".len());
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let cases: &[&[u8]] = &[
            b"zz\r\n",
            b"\r\n",
            b"ffffffffffffffffff\r\n",
            b"-1\r\n",
            b"+1\r\na\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\nabc\n0\n\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"3;a\x00b\r\nabc\r\n0\r\n\r\n",
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"0\r\nx-a: a\r\n b\r\n\r\n",
            b"0\r\nbad header\r\n\r\n",
        ];
        for raw in cases {
            assert!(decode_all(raw, 1).is_err(), "{raw:?}");
            assert!(decode_all(raw, 1000).is_err(), "{raw:?}");
        }
        let long = [b"1;".as_slice(), &vec![b'a'; MAX_LINE], b"\r\na\r\n0\r\n\r\n"].concat();
        assert!(decode_all(&long, 1000).is_err());
        let trailers = [b"0\r\n".as_slice(), &b"x-a: b\r\n".repeat(MAX_TRAILERS / 8 + 2)].concat();
        assert!(decode_all(&trailers, 100_000).is_err());
    }

    #[test]
    fn sizes_up_to_sixteen_digits() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"ab"))));
        assert_eq!(d.decode(&mut buf), Ok(Decoded::NeedMore));
    }
}
