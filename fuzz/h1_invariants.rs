//! Invariants of keygate's upstream HTTP/1.1 reader, shared by the
//! `h1_response` fuzz target and `tests/h1_props.rs`: on any bytes it does
//! not panic, and what it reads does not depend on how the bytes were split
//! into reads (a reader whose result depends on packet boundaries is one an
//! upstream can steer); a chunked body encoded from any chunks reads back
//! exactly, leaving what followed it.

use bytes::BytesMut;
use keygate::upstream::h1::chunked::{Decoded, Decoder};
use keygate::upstream::h1::codec::{parse_head, Framing, Parsed};

/// What reading a response from `data` gave: the status, the body bytes,
/// whether it ended, and the error if it stopped on one.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub status: Option<u16>,
    pub body: Vec<u8>,
    pub ended: bool,
    pub error: Option<String>,
}

/// Read a response from `data` fed in pieces of the given sizes (the last
/// size repeats; sizes of 0 count as 1).
pub fn read(data: &[u8], pieces: &[usize]) -> Outcome {
    let mut out = Outcome { status: None, body: Vec::new(), ended: false, error: None };
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut step = 0;
    let mut feed = |buf: &mut BytesMut| -> bool {
        if fed == data.len() {
            return false;
        }
        let size = pieces.get(step).or(pieces.last()).copied().unwrap_or(1).max(1);
        step += 1;
        let end = (fed + size).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        true
    };
    let head = loop {
        match parse_head(&mut buf, false) {
            Ok(Parsed::Final(head)) => break head,
            Ok(Parsed::Interim) => continue,
            Ok(Parsed::Partial) if feed(&mut buf) => continue,
            Ok(Parsed::Partial) => return out,
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        }
    };
    out.status = Some(head.status.as_u16());
    match head.framing {
        Framing::Empty => out.ended = true,
        Framing::Length(n) => {
            while feed(&mut buf) {}
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            out.body = buf[..n.min(buf.len())].to_vec();
            out.ended = buf.len() >= n;
        }
        Framing::Close => {
            while feed(&mut buf) {}
            out.body = buf.to_vec();
            out.ended = true;
        }
        Framing::Chunked => {
            let mut decoder = Decoder::default();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(d)) => {
                        assert!(!d.is_empty(), "an empty data piece");
                        out.body.extend_from_slice(&d);
                    }
                    Ok(Decoded::End(_)) => {
                        out.ended = true;
                        break;
                    }
                    Ok(Decoded::NeedMore) if feed(&mut buf) => {}
                    Ok(Decoded::NeedMore) => break,
                    Err(e) => {
                        out.error = Some(e.to_string());
                        break;
                    }
                }
            }
        }
    }
    out
}

/// The response in `data` reads the same whatever the pieces.
pub fn check_splits(data: &[u8], pieces: &[usize]) {
    let whole = read(data, &[usize::MAX]);
    let split = read(data, pieces);
    assert_eq!(whole, split, "pieces {pieces:?} of {:?}", String::from_utf8_lossy(data));
}

/// A chunked response built from `chunks` (each with an extension when
/// `ext` says so) reads back as their concatenation, whatever the pieces.
pub fn check_chunked(chunks: &[Vec<u8>], ext: bool, pieces: &[usize]) {
    let mut raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        let e = if ext { ";name=\"v\"" } else { "" };
        raw.extend_from_slice(format!("{:X}{e}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
    let out = read(&raw, pieces);
    assert_eq!(out.error, None);
    assert!(out.ended);
    assert_eq!(out.body, chunks.concat());
}
