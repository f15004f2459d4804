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

#[cfg(test)]
mod tests {
    use super::*;

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
