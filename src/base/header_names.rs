//! Header names more than one layer uses (the forwarding family, RFC 7239
//! predecessors), as values built once, the lookup of a field name read
//! off the wire, the token rule field names, methods and upgrade protocols
//! share, and the reading of a field that is a comma-separated list of
//! tokens (`Connection`, `Transfer-Encoding`).

use http::header as h;
use http::HeaderName;

const REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub static X_REAL_IP: HeaderName = REAL_IP;
pub static X_FORWARDED_FOR: HeaderName = FORWARDED_FOR;
pub static X_FORWARDED_PROTO: HeaderName = FORWARDED_PROTO;
pub static X_FORWARDED_HOST: HeaderName = FORWARDED_HOST;
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub static X_REQUEST_ID: HeaderName = REQUEST_ID;

/// A field name as read off the wire: the names heads carry most are
/// found by length and bytes, without `HeaderName::from_bytes`, which
/// lowers every name into a buffer and walks the table of all standard
/// names (about 120 instructions a field), and which copies a name it does
/// not know (`sec-fetch-site`, `x-forwarded-for`) into an allocation of
/// its own. Issue 13: a browser's request carries a dozen such fields, an
/// upstream's answer half a dozen.
pub fn field_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    let candidates: &[Known] = match name.len() {
        4 => &KNOWN_4,
        6 => &KNOWN_6,
        7 => &KNOWN_7,
        8 => &KNOWN_8,
        9 => &KNOWN_9,
        10 => &KNOWN_10,
        12 => &KNOWN_12,
        13 => &KNOWN_13,
        14 => &KNOWN_14,
        15 => &KNOWN_15,
        16 => &KNOWN_16,
        17 => &KNOWN_17,
        18 => &KNOWN_18,
        25 => &KNOWN_25,
        _ => &[],
    };
    if !candidates.is_empty() {
        let mut padded = [0u8; 32];
        padded[..name.len()].copy_from_slice(name);
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&padded[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let words = [word(0), word(1), word(2), word(3)];
        for k in candidates {
            let differ = (0..4).fold(0, |d, i| d | ((words[i] | k.case[i]) ^ k.words[i]));
            if differ == 0 {
                return Ok(k.name.clone());
            }
        }
    }
    HeaderName::from_bytes(name)
}

/// A name of the tables below: its lower-case text eight bytes to a word,
/// and the case bit (0x20) of each letter, so that a name read in any case
/// is compared a word at a time: a byte OR'd with 0x20 equals a lower-case
/// letter only when it is that letter in either case, and bytes that are
/// not letters must be equal.
struct Known {
    words: [u64; 4],
    case: [u64; 4],
    name: HeaderName,
}

const fn known(text: &[u8], name: HeaderName) -> Known {
    let mut words = [0u64; 4];
    let mut case = [0u64; 4];
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        assert!(!b.is_ascii_uppercase());
        let shift = (i % 8) * 8;
        words[i / 8] |= (b as u64) << shift;
        if b.is_ascii_lowercase() {
            case[i / 8] |= 0x20 << shift;
        }
        i += 1;
    }
    Known { words, case, name }
}

// Lower case, grouped by length; the test checks each entry against the
// name it stands for.
static KNOWN_4: [Known; 5] = [
    known(b"host", h::HOST),
    known(b"date", h::DATE),
    known(b"etag", h::ETAG),
    known(b"vary", h::VARY),
    known(b"link", h::LINK),
];
static KNOWN_6: [Known; 6] = [
    known(b"server", h::SERVER),
    known(b"accept", h::ACCEPT),
    known(b"cookie", h::COOKIE),
    known(b"origin", h::ORIGIN),
    known(b"pragma", h::PRAGMA),
    known(b"expect", h::EXPECT),
];
static KNOWN_7: [Known; 3] = [
    known(b"referer", h::REFERER),
    known(b"upgrade", h::UPGRADE),
    known(b"expires", h::EXPIRES),
];
static KNOWN_8: [Known; 3] = [
    known(b"location", h::LOCATION),
    known(b"priority", HeaderName::from_static("priority")),
    known(b"if-range", h::IF_RANGE),
];
static KNOWN_9: [Known; 3] = [
    known(b"sec-ch-ua", HeaderName::from_static("sec-ch-ua")),
    known(b"x-real-ip", REAL_IP),
    known(b"forwarded", h::FORWARDED),
];
static KNOWN_10: [Known; 4] = [
    known(b"user-agent", h::USER_AGENT),
    known(b"connection", h::CONNECTION),
    known(b"set-cookie", h::SET_COOKIE),
    known(b"keep-alive", HeaderName::from_static("keep-alive")),
];
static KNOWN_12: [Known; 2] = [
    known(b"content-type", h::CONTENT_TYPE),
    known(b"x-request-id", REQUEST_ID),
];
static KNOWN_13: [Known; 6] = [
    known(b"cache-control", h::CACHE_CONTROL),
    known(b"last-modified", h::LAST_MODIFIED),
    known(b"accept-ranges", h::ACCEPT_RANGES),
    known(b"authorization", h::AUTHORIZATION),
    known(b"if-none-match", h::IF_NONE_MATCH),
    known(b"content-range", h::CONTENT_RANGE),
];
static KNOWN_14: [Known; 5] = [
    known(b"content-length", h::CONTENT_LENGTH),
    known(b"sec-fetch-site", HeaderName::from_static("sec-fetch-site")),
    known(b"sec-fetch-mode", HeaderName::from_static("sec-fetch-mode")),
    known(b"sec-fetch-dest", HeaderName::from_static("sec-fetch-dest")),
    known(b"sec-fetch-user", HeaderName::from_static("sec-fetch-user")),
];
static KNOWN_15: [Known; 3] = [
    known(b"accept-encoding", h::ACCEPT_ENCODING),
    known(b"accept-language", h::ACCEPT_LANGUAGE),
    known(b"x-forwarded-for", FORWARDED_FOR),
];
static KNOWN_16: [Known; 4] = [
    known(b"x-forwarded-host", FORWARDED_HOST),
    known(b"content-encoding", h::CONTENT_ENCODING),
    known(
        b"sec-ch-ua-mobile",
        HeaderName::from_static("sec-ch-ua-mobile"),
    ),
    known(b"content-language", h::CONTENT_LANGUAGE),
];
static KNOWN_17: [Known; 4] = [
    known(b"transfer-encoding", h::TRANSFER_ENCODING),
    known(b"if-modified-since", h::IF_MODIFIED_SINCE),
    known(b"x-forwarded-proto", FORWARDED_PROTO),
    known(b"sec-websocket-key", h::SEC_WEBSOCKET_KEY),
];
static KNOWN_18: [Known; 1] = [known(
    b"sec-ch-ua-platform",
    HeaderName::from_static("sec-ch-ua-platform"),
)];
static KNOWN_25: [Known; 2] = [
    known(b"upgrade-insecure-requests", h::UPGRADE_INSECURE_REQUESTS),
    known(b"strict-transport-security", h::STRICT_TRANSPORT_SECURITY),
];

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
    fn known_field_names_are_the_names_they_stand_for() {
        let tables: [&[Known]; 14] = [
            &KNOWN_4, &KNOWN_6, &KNOWN_7, &KNOWN_8, &KNOWN_9, &KNOWN_10, &KNOWN_12, &KNOWN_13,
            &KNOWN_14, &KNOWN_15, &KNOWN_16, &KNOWN_17, &KNOWN_18, &KNOWN_25,
        ];
        let mut seen = 0;
        for table in tables {
            for k in table {
                seen += 1;
                let name = &k.name;
                let text = name.as_str().as_bytes();
                // Each entry's words are its name's text (so it sits in the
                // table of its length, or `field_name` would miss it).
                assert_eq!(known(text, name.clone()).words, k.words);
                assert_eq!(field_name(text).unwrap(), *name, "{name}");
                let upper = text.to_ascii_uppercase();
                assert_eq!(field_name(&upper).unwrap(), *name);
                // Any one byte changed, to any value: the same answer as
                // `HeaderName::from_bytes` (a letter in the other case is the
                // same name; anything else is another name or none).
                for at in 0..text.len() {
                    for b in 0..=255u8 {
                        let mut changed = text.to_vec();
                        changed[at] = b;
                        let want = HeaderName::from_bytes(&changed).ok();
                        assert_eq!(field_name(&changed).ok(), want, "{changed:?}");
                    }
                }
            }
        }
        assert_eq!(seen, 51);
        // Names outside the tables, and bytes no name may hold.
        assert_eq!(field_name(b"X-Custom").unwrap().as_str(), "x-custom");
        assert_eq!(field_name(b"age").unwrap(), http::header::AGE);
        assert!(field_name(b"ho st").is_err());
        assert!(field_name(b"").is_err());
        assert!(field_name(b"host\r").is_err());
        assert!(field_name("hóst".as_bytes()).is_err());
    }

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
