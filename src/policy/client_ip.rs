//! The real client address behind trusted proxies.
//!
//! Only a peer in `trusted_proxies` may speak for someone else. From such a
//! peer `X-Forwarded-For` is walked from the right past every trusted hop,
//! as nginx's `real_ip_recursive on` does; otherwise the peer address is the
//! client and every incoming `X-Forwarded-*` is ignored (STYLE rule 8;
//! AliasVault #1982 and #2325).

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderValue};

use crate::base::cidr::{any_contains, canonical, Cidr};
use crate::base::header_names::X_FORWARDED_FOR;

/// Runs once per request from a trusted peer. Returns the client address:
/// the rightmost untrusted entry of `X-Forwarded-For`, or the leftmost entry
/// when every hop is trusted. An entry that is not an address ends the walk
/// at the last good one.
pub fn resolve(peer: IpAddr, trusted: &[Cidr], headers: &HeaderMap) -> IpAddr {
    let mut client = peer;
    if !any_contains(trusted, peer) {
        return client;
    }
    // Several header lines form one list, in order (RFC 9110 §5.3).
    let lines: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for line in lines.iter().rev() {
        let Ok(text) = line.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !any_contains(trusted, ip) {
                return client;
            }
        }
    }
    client
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or `203.0.113.7:51000`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    let (host, port) = e.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::cidr::private_ranges;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let h = xff(&["1.2.3.4"]);
        assert_eq!(
            resolve(ip("203.0.113.9"), &private_ranges(), &h),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn walks_past_trusted_hops_from_the_right() {
        let t = private_ranges();
        // client, then two trusted proxies; the peer is a third.
        let h = xff(&["198.51.100.1, 10.0.0.2", "10.0.0.3"]);
        assert_eq!(resolve(ip("10.0.0.4"), &t, &h), ip("198.51.100.1"));
        // A spoofed entry left of the real client is never reached.
        let h = xff(&["6.6.6.6, 198.51.100.1, 10.0.0.2"]);
        assert_eq!(resolve(ip("10.0.0.4"), &t, &h), ip("198.51.100.1"));
        // Every hop trusted: the leftmost.
        let h = xff(&["10.9.9.9, 10.0.0.2"]);
        assert_eq!(resolve(ip("10.0.0.4"), &t, &h), ip("10.9.9.9"));
        // No header: the peer.
        assert_eq!(
            resolve(ip("10.0.0.4"), &t, &HeaderMap::new()),
            ip("10.0.0.4")
        );
    }

    #[test]
    fn garbage_stops_the_walk() {
        let t = private_ranges();
        let h = xff(&["198.51.100.1, unknown, 10.0.0.2"]);
        assert_eq!(resolve(ip("10.0.0.4"), &t, &h), ip("10.0.0.2"));
        let h = xff(&["[2001:db8::5]:443, 10.0.0.2:5000"]);
        assert_eq!(resolve(ip("10.0.0.4"), &t, &h), ip("2001:db8::5"));
    }
}
