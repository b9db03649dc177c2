//! The client address of a request: the connection's address, or — on a
//! connection from a trusted proxy — the right-most `X-Forwarded-For` hop
//! that is not itself a trusted proxy. Pure functions over the headers.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::header::HeaderValue;
use http::HeaderMap;

use crate::config::TrustedProxies;

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Where a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// The connection's client address: a PROXY header's source, else the TCP peer.
    pub addr: SocketAddr,
    /// The TCP peer itself.
    pub peer: SocketAddr,
    /// Whether `addr` is a trusted proxy, whose `X-Forwarded-For` is read.
    pub trusted: bool,
}

impl Remote {
    /// A connection whose client address is `addr`, from TCP peer `peer`.
    pub fn new(addr: SocketAddr, peer: SocketAddr, trusted: &TrustedProxies) -> Remote {
        Remote { addr, peer, trusted: trusted.contains(addr.ip()) }
    }
}

impl From<SocketAddr> for Remote {
    /// A direct connection from an untrusted peer.
    fn from(peer: SocketAddr) -> Remote {
        Remote { addr: peer, peer, trusted: false }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// The client address behind trusted proxy `proxy`: walk the
/// `X-Forwarded-For` hops from the right, skipping trusted proxies; the first
/// other address is the client. An entry that is not an address stops the
/// walk at the trusted hop that wrote it; when every hop is trusted, the
/// left-most is the client.
pub fn behind_proxy(headers: &HeaderMap, proxy: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut client = proxy;
    let hops = headers.get_all(X_FORWARDED_FOR).iter().rev().flat_map(|v| v.to_str().unwrap_or("?").rsplit(','));
    for hop in hops.map(str::trim).filter(|h| !h.is_empty()) {
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`192.0.2.1:80`, `[2001:db8::1]:80`) or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

/// The `X-Forwarded-For` to send on behind a trusted proxy: the caller's
/// chain (every header line, in order) with the proxy's address appended;
/// `None` when the caller sent none.
pub fn chain(headers: &HeaderMap, proxy: &HeaderValue) -> Option<HeaderValue> {
    let mut lines = headers.get_all(X_FORWARDED_FOR).iter().peekable();
    lines.peek()?;
    let mut out = Vec::with_capacity(64);
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(proxy.as_bytes());
    HeaderValue::from_bytes(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies(vec!["10.0.0.0/8".parse().unwrap(), "2001:db8:ff::/48".parse().unwrap()])
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn client_is_the_rightmost_untrusted_hop() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&[], "10.0.0.2"),
            (&["203.0.113.9"], "203.0.113.9"),
            (&["198.51.100.1, 203.0.113.9"], "203.0.113.9"),
            (&["203.0.113.9, 10.1.1.1"], "203.0.113.9"),
            (&["203.0.113.9, 10.1.1.1, 10.2.2.2"], "203.0.113.9"),
            (&["6.6.6.6", "203.0.113.9, 10.1.1.1"], "203.0.113.9"),
            (&["203.0.113.9", "10.1.1.1"], "203.0.113.9"),
            (&["10.9.9.9, 10.1.1.1"], "10.9.9.9"),
            (&["6.6.6.6, unknown, 10.1.1.1"], "10.1.1.1"),
            (&["6.6.6.6, unknown"], "10.0.0.2"),
            (&["203.0.113.9:4711"], "203.0.113.9"),
            (&["[2001:db8::9]:443"], "2001:db8::9"),
            (&["[2001:db8::9]"], "2001:db8::9"),
            (&["2001:db8::9, 2001:db8:ff::1"], "2001:db8::9"),
            (&["::ffff:203.0.113.9"], "203.0.113.9"),
            (&["::ffff:10.1.1.1, 10.1.1.1"], "10.1.1.1"),
            (&["203.0.113.9,,  "], "203.0.113.9"),
            (&["203.0.113.9 10.1.1.1"], "10.0.0.2"),
        ];
        for (lines, want) in cases {
            let got = behind_proxy(&xff(lines), proxy, &trusted());
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "{lines:?}");
        }
    }

    #[test]
    fn a_non_ascii_line_stops_the_walk() {
        let mut h = xff(&["6.6.6.6"]);
        h.append(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\xff1.2.3.4").unwrap());
        assert_eq!(behind_proxy(&h, "10.0.0.2".parse().unwrap(), &trusted()), "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn chain_appends_the_proxy_to_every_line() {
        let proxy = HeaderValue::from_static("10.0.0.2");
        assert_eq!(chain(&xff(&[]), &proxy), None);
        assert_eq!(chain(&xff(&["203.0.113.9"]), &proxy).unwrap(), "203.0.113.9, 10.0.0.2");
        assert_eq!(chain(&xff(&["a, b", "c"]), &proxy).unwrap(), "a, b, c, 10.0.0.2");
    }

    #[test]
    fn trust_follows_the_client_address_not_the_peer() {
        let lb: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let client: SocketAddr = "203.0.113.9:6000".parse().unwrap();
        assert!(Remote::new(lb, lb, &trusted()).trusted);
        assert!(!Remote::new(client, lb, &trusted()).trusted);
        assert!(!Remote::from(lb).trusted);
    }
}
