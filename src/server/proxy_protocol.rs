//! The PROXY protocol (v1 text and v2 binary), read at the start of a
//! connection from a trusted load balancer, before TLS: it says which client
//! address the balancer accepted the connection from.
//!
//! The header is parsed by the `ppp` crate; this module only reads exactly
//! the header's bytes off the socket (peeking, so not one byte of the request
//! that follows is taken) and decides which address to believe.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::net::TcpStream;

use crate::config::{Listen, TrustedProxies};
use crate::proxy::client_addr::Remote;

/// The longest v1 header (the specification's 107 bytes).
const V1_MAX: usize = 107;
/// v2: a 16-byte fixed part whose last two bytes give the length of the rest.
const V2_FIXED: usize = 16;

/// Why a connection was closed before its first request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("PROXY header from a peer that is not a trusted proxy")]
    Untrusted,
    #[error("no PROXY header within the header read timeout")]
    Timeout,
    #[error("malformed PROXY header")]
    Malformed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Where a new connection from `peer` comes from, reading its PROXY header
/// first when the listener expects one; `None` when it must be closed.
pub async fn accept(tcp: &mut TcpStream, peer: SocketAddr, listen: &Listen) -> Option<Remote> {
    let trusted = &listen.trusted_proxies;
    match client_address(tcp, peer, listen.proxy_protocol, trusted, listen.header_read_timeout).await {
        Ok(addr) => Some(Remote::new(addr, peer, trusted)),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection closed before its first request");
            None
        }
    }
}

/// The client address of a connection from `peer`: with `proxy_protocol` on,
/// read from the PROXY header a trusted peer must send first (under
/// `timeout`); otherwise the peer itself.
pub async fn client_address(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    proxy_protocol: bool,
    trusted: &TrustedProxies,
    timeout: Duration,
) -> Result<SocketAddr, ProxyHeaderError> {
    if !proxy_protocol {
        return Ok(peer);
    }
    if !trusted.contains(peer.ip()) {
        return Err(ProxyHeaderError::Untrusted);
    }
    // Boxed: only PROXY listeners pay for the reader's state in the task.
    let read = Box::pin(read_header(tcp));
    let header = tokio::time::timeout(timeout, read).await.map_err(|_| ProxyHeaderError::Timeout)??;
    source(&header, peer).ok_or(ProxyHeaderError::Malformed)
}

/// Read exactly one PROXY header off `tcp`.
async fn read_header(tcp: &mut TcpStream) -> Result<Vec<u8>, ProxyHeaderError> {
    use tokio::io::AsyncReadExt;
    let mut header = Vec::with_capacity(V1_MAX + 1);
    let mut window = [0u8; V1_MAX + 1];
    loop {
        let seen = tcp.peek(&mut window).await?;
        let Some(seen) = window.get(..seen).filter(|s| !s.is_empty()) else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        };
        let take = header_bytes(&header, seen).filter(|n| *n > 0).ok_or(ProxyHeaderError::Malformed)?;
        let start = header.len();
        header.resize(start + take, 0);
        tcp.read_exact(header.get_mut(start..).unwrap_or_default()).await?;
        match HeaderResult::parse(&header) {
            h if h.is_incomplete() && header.len() <= V2_FIXED + usize::from(u16::MAX) => continue,
            _ => return Ok(header),
        }
    }
}

/// How many bytes of `seen` (peeked after the `have` bytes already read)
/// belong to the header; `None` when it is not a PROXY header at all.
fn header_bytes(have: &[u8], seen: &[u8]) -> Option<usize> {
    let first = have.first().or(seen.first())?;
    let take = match first {
        b'\r' if have.len() < V2_FIXED => V2_FIXED - have.len(),
        b'\r' => {
            let len: [u8; 2] = have.get(V2_FIXED - 2..V2_FIXED)?.try_into().ok()?;
            let rest = usize::from(u16::from_be_bytes(len));
            (V2_FIXED + rest).saturating_sub(have.len())
        }
        // A line ended without being a complete header: never read past it.
        b'P' if have.last() == Some(&b'\n') => return None,
        b'P' => seen.iter().position(|&b| b == b'\n').map_or(seen.len(), |i| i + 1),
        _ => return None,
    };
    (have.len() <= V1_MAX || *first == b'\r').then_some(take.min(seen.len()))
}

/// The address a complete `header` names; `peer` for a health check from
/// the balancer itself (v2 `LOCAL`, v1 `UNKNOWN`) or a non-IP source.
fn source(header: &[u8], peer: SocketAddr) -> Option<SocketAddr> {
    let address = match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) if h.header.len() == header.len() => match h.addresses {
            v1::Addresses::Tcp4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            v1::Addresses::Tcp6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            v1::Addresses::Unknown => peer,
        },
        HeaderResult::V2(Ok(h)) if h.len() == header.len() => match (h.command, h.addresses) {
            (v2::Command::Local, _) => peer,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)
            }
            (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => peer,
        },
        HeaderResult::V1(_) | HeaderResult::V2(_) => return None,
    };
    Some(SocketAddr::new(address.ip().to_canonical(), address.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.9:40000".parse().unwrap()
    }

    fn v2(command: v2::Command, addresses: v2::Addresses) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses).build().unwrap()
    }

    #[test]
    fn sources_of_well_formed_headers() {
        let four: v2::Addresses = ("203.0.113.7:5555".parse().unwrap(), "10.0.0.1:443".parse().unwrap()).into();
        let six: v2::Addresses = ("[2001:db8::7]:5555".parse().unwrap(), "[2001:db8::1]:443".parse().unwrap()).into();
        let cases: Vec<(&str, Vec<u8>, SocketAddr)> = vec![
            ("v1 tcp4", b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n".to_vec(), "203.0.113.7:5555".parse().unwrap()),
            (
                "v1 tcp6",
                b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n".to_vec(),
                "[2001:db8::7]:5555".parse().unwrap(),
            ),
            ("v1 unknown", b"PROXY UNKNOWN\r\n".to_vec(), peer()),
            ("v2 ipv4", v2(v2::Command::Proxy, four), "203.0.113.7:5555".parse().unwrap()),
            ("v2 ipv6", v2(v2::Command::Proxy, six), "[2001:db8::7]:5555".parse().unwrap()),
            ("v2 local", v2(v2::Command::Local, v2::Addresses::Unspecified), peer()),
        ];
        for (name, header, want) in cases {
            assert_eq!(source(&header, peer()), Some(want), "{name}");
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5555\r\n",
            b"PROXY TCP4 999.0.113.7 10.0.0.1 5555 443\r\n",
            b"PROXY TCP9 203.0.113.7 10.0.0.1 5555 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x01\x02",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02",
            b"",
        ];
        for header in cases {
            assert_eq!(source(header, peer()), None, "{:?}", String::from_utf8_lossy(header));
        }
        assert_eq!(header_bytes(&[], b"GET / HTTP/1.1"), None);
    }

    #[test]
    fn v1_takes_up_to_the_line_end_only() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(header_bytes(&[], line), Some(42));
        let half = &line[..20];
        assert_eq!(header_bytes(&[], half), Some(20));
        assert_eq!(header_bytes(half, &line[20..]), Some(22));
        assert_eq!(header_bytes(&[b'P'; 108], b"x"), None, "longer than a v1 header can be");
    }

    #[test]
    fn v2_takes_the_declared_length_only() {
        let four: v2::Addresses = ("203.0.113.7:5555".parse().unwrap(), "10.0.0.1:443".parse().unwrap()).into();
        let mut bytes = v2(v2::Command::Proxy, four);
        let len = bytes.len();
        bytes.extend_from_slice(b"\x16\x03\x01 client hello");
        assert_eq!(header_bytes(&[], &bytes), Some(V2_FIXED));
        assert_eq!(header_bytes(&bytes[..V2_FIXED], &bytes[V2_FIXED..]), Some(len - V2_FIXED));
    }
}
