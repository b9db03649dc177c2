mod support;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn probe(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn explore() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, "k1", "")).await;
    let probes: Vec<(&str, Vec<u8>)> = vec![
        ("cl+te", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("two cl differ", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec()),
        ("two cl same", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("cl list", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec()),
        ("cl +5", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: +5\r\n\r\nhello".to_vec()),
        ("cl empty", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: \r\n\r\nhello".to_vec()),
        ("cl overflow", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: 99999999999999999999999\r\n\r\nhello".to_vec()),
        ("cl -1", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: -1\r\n\r\nhello".to_vec()),
        ("cl 0x5", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nContent-Length: 0x5\r\n\r\nhello".to_vec()),
        ("te gzip", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec()),
        ("te gzip,chunked", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("te chunked,chunked", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("te CHUNKED", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n".to_vec()),
        ("te two headers", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("te xchunked", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("te chunked;q", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: chunked ;\r\n\r\n0\r\n\r\n".to_vec()),
        ("te http1.0", b"POST /a HTTP/1.0\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("obs-fold", b"GET /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nX-Foo: a\r\n  b\r\n\r\n".to_vec()),
        ("obs-fold tab", b"GET /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nX-Foo: a\r\n\tb\r\n\r\n".to_vec()),
        ("bare cr", b"GET /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nX-Foo: a\rb\r\n\r\n".to_vec()),
        ("nul", b"GET /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nX-Foo: a\0b\r\n\r\n".to_vec()),
        ("bare lf", b"GET /a HTTP/1.1\nHost: x\nx-api-key: k1\n\n".to_vec()),
        ("two hosts", b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\nx-api-key: k1\r\n\r\n".to_vec()),
        ("no host", b"GET /a HTTP/1.1\r\nx-api-key: k1\r\n\r\n".to_vec()),
        ("space before colon", b"GET /a HTTP/1.1\r\nHost: x\r\nx-api-key : k1\r\n\r\n".to_vec()),
        ("absolute", b"GET http://other/a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\n\r\n".to_vec()),
        ("chunk ext bad", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: chunked\r\n\r\n5;\nx\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("chunk size overflow", b"POST /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("del in value", b"GET /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nX-Foo: a\x7fb\r\n\r\n".to_vec()),
        ("ctl in value", b"GET /a HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nX-Foo: a\x01b\r\n\r\n".to_vec()),
        ("http/1.0 ka", b"GET /a HTTP/1.0\r\nHost: x\r\nx-api-key: k1\r\n\r\n".to_vec()),
    ];
    for (name, bytes) in probes {
        let before = up.count();
        let (out, closed) = probe(kg.addr, &bytes).await;
        let first = out.lines().next().unwrap_or("").to_string();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        println!("{name:22} closed={closed} upstream+={} {first} {}", up.count() - before, &body[..body.len().min(60)]);
    }
}
