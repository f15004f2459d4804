//! Request and response header rewriting: hop-by-hop removal and the
//! `X-Forwarded-*` family, written into the upstream request's head.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::base::head_fields::HeadFields;

pub(crate) use crate::base::header_names::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PREFIX, X_FORWARDED_PROTO,
    X_REAL_IP,
};
use crate::config::ForwardedFor;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes the hop-by-hop fields of RFC 9110 §7.6.1: `Connection` and every
/// field it names, plus the fixed set (`Keep-Alive`, `Proxy-Connection`,
/// `TE`, `Transfer-Encoding`, `Upgrade`, and HTTP/2's `HTTP2-Settings`).
/// hyper frames bodies itself, so `Transfer-Encoding` is regenerated as
/// needed. Returns whether the client's `TE` accepted trailers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Runs twice per request. One pass over the names first: most messages
    // carry at most `Connection: keep-alive`, and a lookup by name costs a
    // hash each, so only the fields present are looked up and removed.
    let present = headers
        .keys()
        .fold(0u8, |acc, name| acc | hop_by_hop_bit(name));
    if present == 0 {
        return false;
    }
    let has = |i: usize| present & (1 << i) != 0;
    // Fields named by Connection, besides the fixed set removed anyway.
    // Collected first (the map cannot change while it is read); the usual
    // tokens allocate nothing.
    let mut named: Vec<HeaderName> = Vec::new();
    if has(0) {
        for v in headers.get_all(header::CONNECTION) {
            let Ok(v) = v.to_str() else { continue };
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("upgrade")
                    || token.is_empty()
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    let te_trailers = has(3)
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if has(i) {
            headers.remove(*name);
        }
    }
    te_trailers
}

/// The fixed hop-by-hop fields (RFC 9110 §7.6.1), in the bit order of
/// [`hop_by_hop_bit`].
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &HTTP2_SETTINGS,
];

/// The bit of a fixed hop-by-hop field, 0 for any other name. Standard
/// names compare as enum values, so most fields cost a few comparisons.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    // The names' lengths (2, 7, 10, 14, 16, 17) rule out most fields with
    // one test; this runs for every field of every request and answer.
    if !matches!(name.as_str().len(), 2 | 7 | 10 | 14 | 16 | 17) {
        return 0;
    }
    HOP_BY_HOP
        .iter()
        .position(|h| *h == name)
        .map_or(0, |i| 1 << i)
}

/// What the proxy observed about the client's connection, and the
/// request's id: the fields every upstream request carries.
pub struct Forwarding<'a> {
    /// The client address, already rendered.
    pub client_ip: &'a HeaderValue,
    /// `http` or `https`: the scheme the request arrived over.
    pub proto: &'a HeaderValue,
    /// The `Host` (or HTTP/2 `:authority`) as the client sent it.
    pub host: Option<&'a HeaderValue>,
    pub prefix: Option<&'a HeaderValue>,
    pub mode: ForwardedFor,
    pub https: bool,
    pub request_id: &'a HeaderValue,
}

/// The fields [`Forwarding`] writes; the client's own are never passed on.
static FORWARDING: [&HeaderName; 7] = [
    &X_REAL_IP,
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_FORWARDED_PORT,
    &X_FORWARDED_PREFIX,
    &crate::base::header_names::X_REQUEST_ID,
];

/// The forwarding fields sent upstream, written into the request head after
/// the client's fields (issue 13: not through the map). The client's own
/// `X-Real-IP`/`X-Forwarded-*`/`X-Request-Id` are replaced, never trusted
/// (AliasVault #2325: appending let a client spoof its address), unless the
/// route asks for `forwarded_for = "append"`, where the client's
/// `X-Forwarded-For` list is kept in front of the address.
impl HeadFields for Forwarding<'_> {
    fn gives_way(&self, name: &HeaderName, _: &mut u64) -> bool {
        // All seven are `x-` names of 9 to 18 bytes: most fields are told
        // apart by their length or first bytes.
        let s = name.as_str().as_bytes();
        (9..=18).contains(&s.len())
            && s.starts_with(b"x-")
            && FORWARDING.iter().any(|n| n.as_str().as_bytes() == s)
    }

    fn write(&self, headers: &HeaderMap, _: u64, out: &mut Vec<u8>) {
        // Each line end is written with the next field's name: half as many
        // copies as field by field.
        let ip = self.client_ip.as_bytes();
        out.extend_from_slice(b"x-real-ip: ");
        out.extend_from_slice(ip);
        out.extend_from_slice(b"\r\nx-forwarded-for: ");
        if self.mode == ForwardedFor::Append {
            for v in headers.get_all(&X_FORWARDED_FOR) {
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(ip);
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto.as_bytes());
        let port: &[u8] = match self.host {
            Some(host) => {
                out.extend_from_slice(b"\r\nx-forwarded-host: ");
                out.extend_from_slice(host.as_bytes());
                port_of(host.as_bytes(), self.https)
            }
            None if self.https => b"443",
            None => b"80",
        };
        out.extend_from_slice(b"\r\nx-forwarded-port: ");
        out.extend_from_slice(port);
        if let Some(p) = self.prefix {
            out.extend_from_slice(b"\r\nx-forwarded-prefix: ");
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The port the client connected to as it sees it: the one in its Host, or
/// the scheme's default. Behind Docker's port mapping this is the public
/// port, which is what an app needs to build its own URLs (AliasVault #940).
fn port_of(host: &[u8], https: bool) -> &[u8] {
    match split_port(host) {
        Some(port) if !port.is_empty() && port.iter().all(u8::is_ascii_digit) => port,
        _ if https => b"443",
        _ => b"80",
    }
}

/// The port part of `host:port` or `[v6]:port`, if any.
fn split_port(host: &[u8]) -> Option<&[u8]> {
    let after_v6 = match host.iter().rposition(|b| *b == b']') {
        Some(i) => &host[i + 1..],
        None => host,
    };
    let colon = after_v6.iter().rposition(|b| *b == b':')?;
    Some(&after_v6[colon + 1..])
}

/// The host without its port: `example.com:8443` → `example.com`,
/// `[::1]:8080` → `[::1]`.
pub(crate) fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, _)) => h,
        None => host,
    }
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 upstreams expect
/// one, joined with "; " (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// `Location: http://HOST/...` for the request's own host becomes
/// `https://HOST/...` when the request came over HTTPS: an app behind the
/// proxy sees plain HTTP and would otherwise send the browser off TLS
/// (nginx's `proxy_redirect http:// https://`, limited to our own host).
pub(crate) fn rewrite_location(headers: &mut HeaderMap, request_host: &[u8]) {
    let Some(loc) = headers.get(header::LOCATION) else {
        return;
    };
    let bytes = loc.as_bytes();
    let Some(rest) = bytes.strip_prefix(b"http://") else {
        return;
    };
    let Some(after_host) = rest.strip_prefix(request_host) else {
        return;
    };
    if !(after_host.is_empty() || matches!(after_host[0], b'/' | b'?' | b'#')) {
        return;
    }
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.extend_from_slice(b"https://");
    v.extend_from_slice(rest);
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        headers.insert(header::LOCATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_connection_tokens_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers, gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        assert!(strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
        let mut h = map(&[("te", "gzip")]);
        assert!(!strip_hop_by_hop(&mut h));
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
        ] {
            let mut h = map(&[(name, "x"), ("x-kept", "yes")]);
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}");
            assert_eq!(h["x-kept"], "yes");
        }
        let mut h = map(&[("x-kept", "yes")]);
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1);
        // Two Connection fields: the fields both name go.
        let mut h = map(&[("connection", "x-a"), ("x-a", "1"), ("x-b", "2")]);
        h.append("connection", HeaderValue::from_static("x-b"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    /// The fields an upstream request carries: the map's that stay, then
    /// the forwarding fields, as the HTTP/1 writer puts them on the wire.
    fn sent(h: &HeaderMap, f: &Forwarding<'_>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        crate::base::head_fields::write_with(h, f, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n"), "{text:?}");
        text.trim_end_matches("\r\n")
            .split("\r\n")
            .map(|line| {
                let (n, v) = line.split_once(": ").expect("name: value");
                (n.to_string(), v.to_string())
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forwarding_replaces_spoofed_values() {
        let ip = HeaderValue::from_static("203.0.113.7");
        let https = HeaderValue::from_static("https");
        let host = HeaderValue::from_static("vault.example.com:8443");
        let prefix = HeaderValue::from_static("/admin/");
        let id = HeaderValue::from_static("0123abcd");
        let h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("accept", "*/*"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-prefix", "/evil"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "1"),
            ("x-request-id", "chosen-by-the-client"),
            ("x-forwarded-by", "kept"),
        ]);
        let f = Forwarding {
            client_ip: &ip,
            proto: &https,
            host: Some(&host),
            prefix: Some(&prefix),
            mode: ForwardedFor::Replace,
            https: true,
            request_id: &id,
        };
        assert_eq!(
            sent(&h, &f),
            pairs(&[
                ("accept", "*/*"),
                ("x-forwarded-by", "kept"),
                ("x-real-ip", "203.0.113.7"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "vault.example.com:8443"),
                ("x-forwarded-port", "8443"),
                ("x-forwarded-prefix", "/admin/"),
                ("x-request-id", "0123abcd"),
            ])
        );

        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-prefix", "/evil"),
        ]);
        h.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        let f = Forwarding {
            prefix: None,
            host: None,
            mode: ForwardedFor::Append,
            ..f
        };
        assert_eq!(
            sent(&h, &f),
            pairs(&[
                ("x-real-ip", "203.0.113.7"),
                ("x-forwarded-for", "1.2.3.4, 5.6.7.8, 203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-port", "443"),
                ("x-request-id", "0123abcd"),
            ])
        );
    }

    #[test]
    fn ports_and_hosts() {
        assert_eq!(port_of(b"example.com", true), b"443");
        assert_eq!(port_of(b"example.com", false), b"80");
        assert_eq!(port_of(b"example.com:8443", true), b"8443");
        assert_eq!(port_of(b"[::1]:9000", false), b"9000");
        assert_eq!(port_of(b"[::1]", true), b"443");
        assert_eq!(port_of(b"example.com:", false), b"80");
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn location_rewritten_only_for_own_host() {
        for (loc, want) in [
            (
                "http://v.example:8443/admin/",
                "https://v.example:8443/admin/",
            ),
            ("http://v.example:8443", "https://v.example:8443"),
            ("http://v.example:84430/", "http://v.example:84430/"),
            ("http://other.example/", "http://other.example/"),
            ("/relative", "/relative"),
        ] {
            let mut h = map(&[("location", loc)]);
            rewrite_location(&mut h, b"v.example:8443");
            assert_eq!(h["location"], want, "{loc}");
        }
    }

    #[test]
    fn cookies_joined_for_http1() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
    }
}
