//! Header names more than one layer uses (the forwarding family, RFC 7239
//! predecessors), as values built once, the token rule field names,
//! methods and upgrade protocols share, and the reading of a field that is
//! a comma-separated list of tokens (`Connection`, `Transfer-Encoding`).

use http::HeaderName;

pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A byte of a token (RFC 9110 §5.6.2), as a method is made of.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `b` without the optional whitespace (SP, HTAB) around it (RFC 9110
/// §5.6.3).
pub fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Whether a field value that is a comma-separated list (RFC 9110 §5.6.1)
/// names `token`, compared without regard to case: `close` in
/// `Connection: keep-alive, Close`.
pub fn list_has(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// What a `Connection` field says of the connection it came on, read in
/// one pass over its tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTokens {
    /// `close` (RFC 9112 §9.6).
    pub close: bool,
    /// `keep-alive` (HTTP/1.0's persistence, RFC 9112 §9.3).
    pub keep_alive: bool,
    /// Every token is `close` or `keep-alive` (or empty): the field names
    /// no other field and asks for no upgrade, so it concerns this
    /// connection alone and is never forwarded (RFC 9110 §7.6.1).
    pub only_persistence: bool,
}

/// Reads a `Connection` field value (RFC 9110 §7.6.1).
pub fn connection_tokens(value: &[u8]) -> ConnectionTokens {
    let mut t = ConnectionTokens {
        only_persistence: true,
        ..ConnectionTokens::default()
    };
    for token in value.split(|b| *b == b',') {
        let token = trim_ows(token);
        if token.eq_ignore_ascii_case(b"close") {
            t.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            t.keep_alive = true;
        } else if !token.is_empty() {
            t.only_persistence = false;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_fields() {
        let read = |v: &[u8]| {
            let t = connection_tokens(v);
            (t.close, t.keep_alive, t.only_persistence)
        };
        assert_eq!(read(b"keep-alive"), (false, true, true));
        assert_eq!(read(b"Close"), (true, false, true));
        assert_eq!(read(b" keep-alive ,\tclose"), (true, true, true));
        assert_eq!(read(b"keep-alive, Upgrade"), (false, true, false));
        assert_eq!(read(b"x-private"), (false, false, false));
        assert_eq!(read(b"closed"), (false, false, false));
        assert_eq!(read(b""), (false, false, true));
    }

    #[test]
    fn lists_of_tokens() {
        assert!(list_has(b"keep-alive, Close", b"close"));
        assert!(list_has(b" \tupgrade\t", b"upgrade"));
        assert!(!list_has(b"closed, x-close", b"close"));
        assert!(!list_has(b"", b"close"));
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"  "), b"");
    }
}
