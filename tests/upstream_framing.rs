//! The HTTP/1 upstream hop against a scripted raw-TCP upstream: response
//! framing, malformed and smuggling responses (what goes upstream is in
//! upstream_requests.rs). Each row sends a second request through the same keygate, so a
//! connection left out of step by the first shows in the second answer.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use support::scripted::{keyed_request, Action, Scripted, Step};
use support::*;
use tokio::sync::Notify;

const KEY: &str = "upstream-framing-key";
const LIMIT: Duration = Duration::from_secs(10);
/// The marker of a response the upstream tried to smuggle in.
const SMUGGLED: &[u8] = b"SMUGGLED";
/// What the upstream answers the second request of every row.
const CLEAN: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean";

/// What the caller got (the details are for failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Got {
    /// A whole response.
    Done(StatusCode, Bytes),
    /// A head, then a body that failed.
    BodyError(StatusCode, String),
    /// No head at all: the connection failed.
    HeadError(String),
    /// No head, or no end of the body, in time.
    Hung(&'static str),
}

/// What the caller must get.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This status and exactly this body.
    Ok(u16, &'static [u8]),
    /// 502 `bad_gateway` JSON.
    BadGateway,
    /// 502, or a caller connection that fails (before the head or in the
    /// body): never a whole success, never a hang.
    Broken,
}

struct Row {
    name: &'static str,
    method: &'static str,
    step: Step,
    want: Want,
    /// Connections the upstream accepted after both requests, when it matters.
    accepts: Option<usize>,
}

fn row(name: &'static str, bytes: impl Into<Vec<u8>>, want: Want, accepts: Option<usize>) -> Row {
    Row { name, method: "GET", step: Step::reply(bytes), want, accepts }
}

/// Send `method path` with the key through a new caller connection; bounded.
async fn call(kg: &Keygate, method: &str, path: &str, body: Bytes) -> Got {
    let req = keyed_request(method, &kg.url(path), KEY, body);
    let res = match tokio::time::timeout(LIMIT, client().request(req)).await {
        Err(_) => return Got::Hung("no response head in time"),
        Ok(Err(e)) => return Got::HeadError(format!("{e:?}")),
        Ok(Ok(res)) => res,
    };
    let status = res.status();
    match tokio::time::timeout(LIMIT, res.into_body().collect()).await {
        Err(_) => Got::Hung("body not finished in time"),
        Ok(Err(e)) => Got::BodyError(status, format!("{e:?}")),
        Ok(Ok(body)) => Got::Done(status, body.to_bytes()),
    }
}

fn is_bad_gateway(status: StatusCode, body: &[u8]) -> bool {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    status == StatusCode::BAD_GATEWAY && json["error"] == "bad_gateway"
}

/// Why `got` is not `want`, if it is not.
fn mismatch(got: &Got, want: Want) -> Option<String> {
    let fine = match (got, want) {
        (Got::Done(s, b), Want::Ok(status, body)) => s.as_u16() == status && b.as_ref() == body,
        (Got::Done(s, b), Want::BadGateway | Want::Broken) => is_bad_gateway(*s, b),
        (Got::BodyError(..) | Got::HeadError(_), Want::Broken) => true,
        _ => false,
    };
    (!fine).then(|| format!("want {want:?}, got {got:?}"))
}

fn smuggled(got: &Got) -> bool {
    matches!(got, Got::Done(_, b) if b.windows(SMUGGLED.len()).any(|w| w == SMUGGLED))
}

/// Play `row` then a clean GET through one keygate; the failures, if any.
async fn run(row: Row) -> Vec<String> {
    let up = Scripted::start(vec![row.step, Step::reply(CLEAN)]).await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let first = call(&kg, row.method, "/first", Bytes::new()).await;
    let second = call(&kg, "GET", "/second", Bytes::new()).await;
    let mut failures = Vec::new();
    if let Some(m) = mismatch(&first, row.want) {
        failures.push(format!("{}: first: {m}", row.name));
    }
    if let Some(m) = mismatch(&second, Want::Ok(200, b"clean")) {
        failures.push(format!("{}: second: {m}", row.name));
    }
    if smuggled(&first) || smuggled(&second) {
        failures.push(format!("{}: a smuggled response reached a caller", row.name));
    }
    if let Some(n) = row.accepts {
        if up.accepts() != n {
            failures.push(format!("{}: {} upstream connections, want {n}", row.name, up.accepts()));
        }
    }
    if up.seen().len() != 2 {
        failures.push(format!("{}: the upstream read {} requests, want 2", row.name, up.seen().len()));
    }
    kg.stop().await;
    failures
}

async fn run_all(rows: Vec<Row>) {
    let mut failures = Vec::new();
    for row in rows {
        failures.extend(run(row).await);
    }
    assert!(failures.is_empty(), "{} failing:\n{}", failures.len(), failures.join("\n"));
}

fn chunked(chunks: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}")
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

#[tokio::test]
async fn well_framed_responses_arrive_whole_and_the_connection_is_kept_when_it_can_be() {
    let rows = vec![
        row("content-length", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", Want::Ok(200, b"ok\n"), Some(1)),
        row("chunked, several chunks", chunked("2\r\nok\r\n1\r\n\n\r\n0\r\n\r\n"), Want::Ok(200, b"ok\n"), Some(1)),
        row("chunk extensions", chunked("3;foo=bar\r\nok\n\r\n0;last\r\n\r\n"), Want::Ok(200, b"ok\n"), Some(1)),
        row("uppercase hex sizes", chunked("1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"), Want::Ok(200, ALPHABET), Some(1)),
        Row {
            name: "close-delimited HTTP/1.1",
            method: "GET",
            step: Step::reply_close("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close"),
            want: Want::Ok(200, b"until the close"),
            accepts: Some(2),
        },
        // A kept-alive connection the server closes while idle is noticed
        // before it carries the next request, which goes on a new one.
        Row {
            name: "kept alive, then closed while idle",
            method: "GET",
            step: Step {
                read_body: true,
                actions: vec![Action::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_vec()), Action::Close],
            },
            want: Want::Ok(200, b"ok\n"),
            accepts: Some(2),
        },
        // The upstream keeps the connection open: reusing it would be wrong anyway.
        row("HTTP/1.0 with a length", "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n", Want::Ok(200, b"ok\n"), Some(2)),
        Row {
            name: "HEAD with a length and no body",
            method: "HEAD",
            step: Step::reply("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
            want: Want::Ok(200, b""),
            accepts: None,
        },
        row("length with spaces around", "HTTP/1.1 200 OK\r\nContent-Length:  3 \r\n\r\nok\n", Want::Ok(200, b"ok\n"), Some(1)),
        row("length without a space", "HTTP/1.1 200 OK\r\ncontent-length:3\r\n\r\nok\n", Want::Ok(200, b"ok\n"), Some(1)),
        row("Chunked in capitals", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n", Want::Ok(200, b"ok\n"), Some(1)),
        Row {
            name: "a length response a byte per write",
            method: "GET",
            step: Step::drip(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"),
            want: Want::Ok(200, b"ok\n"),
            accepts: Some(1),
        },
        Row {
            name: "a chunked response a byte per write",
            method: "GET",
            step: Step::drip(chunked("3;x=y\r\nok\n\r\n0\r\n\r\n").as_bytes()),
            want: Want::Ok(200, b"ok\n"),
            accepts: Some(1),
        },
        row("204", "HTTP/1.1 204 No Content\r\n\r\n", Want::Ok(204, b""), Some(1)),
        row("204 with a length", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", Want::Ok(204, b""), Some(1)),
        row("304 with a length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", Want::Ok(304, b""), Some(1)),
        Row {
            name: "HEAD answered as chunked, no body",
            method: "HEAD",
            step: Step::reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            want: Want::Ok(200, b""),
            accepts: Some(1),
        },
        // The upstream keeps the connection open: reusing it would be wrong anyway.
        row("Connection: close", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n", Want::Ok(200, b"ok\n"), Some(2)),
        row("304", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", Want::Ok(304, b""), Some(1)),
        row(
            "100 Continue first",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
            Want::Ok(200, b"ok\n"),
            Some(1),
        ),
        row(
            "twenty 100 Continue first",
            format!("{}HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", "HTTP/1.1 100 Continue\r\n\r\n".repeat(20)),
            Want::Ok(200, b"ok\n"),
            Some(1),
        ),
        row(
            "a 100 with a length has no body",
            "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
            Want::Ok(200, b"ok\n"),
            Some(1),
        ),
        row(
            "103 Early Hints first",
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
            Want::Ok(200, b"ok\n"),
            Some(1),
        ),
    ];
    run_all(rows).await;
}

/// The body ends with its trailers frame; the connection must still go back
/// to the pool (with hyper's client it was closed instead of reused).
#[tokio::test]
async fn a_trailer_section_keeps_the_connection_reusable() {
    let rows = vec![
        row(
            "a trailer section",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nok\n\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
            Want::Ok(200, b"ok\n"),
            Some(1),
        ),
        row(
            "all of it",
            chunked("3;foo=bar\r\nok\n\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n"),
            Want::Ok(200, b"ok\n0123456789"),
            Some(1),
        ),
    ];
    run_all(rows).await;
}

#[tokio::test]
async fn the_last_chunk_may_come_later_in_its_own_write() {
    let later = Arc::new(Notify::new());
    let first = Step {
        read_body: true,
        actions: vec![
            Action::Write(chunked("3\r\nok\n\r\n4\r\nmore\r\n").into_bytes()),
            Action::Wait(later.clone()),
            Action::Write(b"0\r\n\r\n".to_vec()),
        ],
    };
    let up = Scripted::start(vec![first, Step::reply(CLEAN)]).await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    let req = Request::get(kg.url("/later")).header("x-api-key", KEY).body(Full::new(Bytes::new())).expect("request");
    let res = tokio::time::timeout(LIMIT, client().request(req)).await.expect("head in time").expect("head");
    assert_eq!(res.status(), 200);
    // The head is through while the upstream still holds the last chunk back.
    later.notify_one();
    let body = tokio::time::timeout(LIMIT, res.into_body().collect()).await.expect("in time").expect("body");
    assert_eq!(body.to_bytes(), "ok\nmore");
    let second = call(&kg, "GET", "/second", Bytes::new()).await;
    assert!(mismatch(&second, Want::Ok(200, b"clean")).is_none(), "{second:?}");
    assert_eq!(up.accepts(), 1, "the connection was not reused");
    kg.stop().await;
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(support::upstream::pattern).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn twenty_mebibytes_stream_intact_chunked_and_with_a_length() {
    const SIZE: usize = 20 * 1024 * 1024;
    let data = pattern(SIZE);
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in data.chunks(60_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut sized = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").into_bytes();
    sized.extend_from_slice(&data);
    let up = Scripted::start(vec![Step::reply(chunked), Step::reply(sized), Step::reply(CLEAN)]).await;
    let kg = Keygate::start(&basic_config(up.addr, KEY, "")).await;
    for which in ["chunked", "sized"] {
        match call(&kg, "GET", "/big", Bytes::new()).await {
            Got::Done(status, body) => {
                assert_eq!(status, 200, "{which}");
                assert_eq!(body.len(), SIZE, "{which}");
                assert_eq!(sha256_hex(&body), sha256_hex(&data), "{which}");
            }
            other => panic!("{which}: {other:?}"),
        }
    }
    let last = call(&kg, "GET", "/after", Bytes::new()).await;
    assert!(mismatch(&last, Want::Ok(200, b"clean")).is_none(), "{last:?}");
    assert_eq!(up.accepts(), 1, "the connection was not reused");
    kg.stop().await;
}

/// A response head `name: value` around a 3-byte body.
fn with_header(line: &str) -> String {
    format!("HTTP/1.1 200 OK\r\n{line}\r\nContent-Length: 3\r\n\r\nok\n")
}

#[tokio::test]
async fn malformed_responses_are_502_and_never_poison_the_next_request() {
    let bad = |name, bytes: String| row(name, bytes, Want::BadGateway, Some(2));
    let big = |size: usize| with_header(&format!("X-Big: {}", "a".repeat(size)));
    let rows = vec![
        bad("two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nok\nX".into()),
        bad("a length list", "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nok\nX".into()),
        bad("length +3", "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nok\n".into()),
        bad("length -1", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok\n".into()),
        bad("length 0x3", "HTTP/1.1 200 OK\r\nContent-Length: 0x3\r\n\r\nok\n".into()),
        bad("length 3 3", "HTTP/1.1 200 OK\r\nContent-Length: 3 3\r\n\r\nok\n".into()),
        bad("length of 25 digits", "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000000000003\r\n\r\nok\n".into()),
        bad("obs-fold", with_header("X-A: a\r\n b")),
        bad("NUL in a value", with_header("X-A: a\0b")),
        bad("bare CR in a value", with_header("X-A: a\rb")),
        bad("space before the colon", "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nok\n".into()),
        bad("space before another colon", with_header("X-A : a")),
        bad("80 KiB head", big(80 * 1024)),
        bad("1 MiB head", big(1024 * 1024)),
        bad("status 2OO", "HTTP/1.1 2OO OK\r\nContent-Length: 3\r\n\r\nok\n".into()),
        bad("status line FOO", "FOO\r\n\r\n".into()),
        bad("HTTP/2 status line", "HTTP/2 200\r\nContent-Length: 3\r\n\r\nok\n".into()),
        Row {
            name: "closed after a 100 Continue",
            method: "GET",
            step: Step::reply_close("HTTP/1.1 100 Continue\r\n\r\n"),
            want: Want::BadGateway,
            accepts: Some(2),
        },
        Row {
            name: "closed inside the head",
            method: "GET",
            step: Step::reply_close("HTTP/1.1 200 OK\r\nContent-Len"),
            want: Want::BadGateway,
            accepts: Some(2),
        },
        Row {
            name: "closed without a byte",
            method: "GET",
            step: Step { read_body: true, actions: vec![Action::Close] },
            want: Want::BadGateway,
            accepts: Some(2),
        },
    ];
    run_all(rows).await;
}

/// RFC 9112 §6.3: a response with both is a smuggling attempt (hyper's
/// client read it as chunked). A 101 nobody asked for is no answer to a
/// plain request (hyper's client handed it on).
#[tokio::test]
async fn content_length_beside_chunked_and_an_unasked_101_are_502() {
    let bad = |name, bytes: &str| row(name, bytes, Want::BadGateway, Some(2));
    let rows = vec![
        bad(
            "content-length and chunked",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
        ),
        bad(
            "chunked and content-length",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 8\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
        ),
        bad(
            "chunked and a smaller content-length",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
        ),
        bad(
            "101 to a plain request",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        ),
    ];
    run_all(rows).await;
}

#[tokio::test]
async fn broken_bodies_fail_the_caller_and_never_poison_the_next_request() {
    let broken = |name, bytes: String| row(name, bytes, Want::Broken, Some(2));
    let rows = vec![
        broken("chunk size zz", chunked("zz\r\nok\n\r\n0\r\n\r\n")),
        broken("empty chunk size", chunked("\r\nok\n\r\n0\r\n\r\n")),
        broken("chunk size overflow", chunked("ffffffffffffffffff\r\nok\n\r\n0\r\n\r\n")),
        broken("no CRLF after chunk data", chunked("3\r\nok\nXY0\r\n\r\n")),
        broken("bare LF chunk lines", chunked("3\nok\n\n0\n\n")),
        broken("a valid chunk, then an invalid size", chunked("3\r\nok\n\r\nzz\r\nmore\r\n0\r\n\r\n")),
        Row {
            name: "shorter than its length, then closed",
            method: "GET",
            step: Step::reply_close("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            want: Want::Broken,
            accepts: Some(2),
        },
        Row {
            name: "chunked, closed before the last chunk",
            method: "GET",
            step: Step::reply_close(chunked("3\r\nok\n\r\n")),
            want: Want::Broken,
            accepts: Some(2),
        },
    ];
    run_all(rows).await;
}

#[tokio::test]
async fn bytes_after_a_complete_response_never_answer_the_next_request() {
    let tail = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED";
    let rows = vec![
        row(
            "after a length",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n{tail}"),
            Want::Ok(200, b"ok\n"),
            Some(2),
        ),
        row("after a chunked body", chunked(&format!("3\r\nok\n\r\n0\r\n\r\n{tail}")), Want::Ok(200, b"ok\n"), Some(2)),
        row("after a 204", format!("HTTP/1.1 204 No Content\r\n\r\n{tail}"), Want::Ok(204, b""), Some(2)),
        row("after a 304", format!("HTTP/1.1 304 Not Modified\r\n\r\n{tail}"), Want::Ok(304, b""), Some(2)),
        row(
            "a body longer than its length",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\nSMUGGLED".to_string(),
            Want::Ok(200, b"ok\n"),
            Some(2),
        ),
        Row {
            name: "a body after a HEAD answer",
            method: "HEAD",
            step: Step::reply(format!("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED{tail}")),
            want: Want::Ok(200, b""),
            accepts: Some(2),
        },
    ];
    run_all(rows).await;
}
