//! Path routing: the longest matching prefix wins, on segment boundaries,
//! matched against the path's normal form.
//!
//! Upstreams normalise paths before they route them (ASP.NET Core decodes
//! `%41`, removes dot segments and ignores case; Tomcat and Jetty drop a
//! segment's `;` parameters), so route rules matched on the raw bytes could
//! be walked around with `/%70rivate`, `/./private`, `//private`,
//! `/a/../private` or `/private;x` (issue 10 point 3). Routing uses
//! [`normalize`]; the target sent upstream stays byte for byte as received.

use std::borrow::Cow;

/// One route's matching rule.
#[derive(Debug)]
struct Entry<T> {
    prefix: String,
    case_insensitive: bool,
    value: T,
}

/// Routes sorted longest prefix first; `T` is whatever the runtime attaches
/// to a route (its upstream client, its settings).
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<Entry<T>>,
}

impl<T> Router<T> {
    /// Routes matched case-sensitively.
    pub fn new(routes: Vec<(String, T)>) -> Self {
        Self::with_case(routes.into_iter().map(|(p, t)| (p, false, t)).collect())
    }

    /// Routes as `(prefix, case_insensitive, value)`.
    pub fn with_case(routes: Vec<(String, bool, T)>) -> Self {
        let mut routes: Vec<Entry<T>> = routes
            .into_iter()
            .map(|(prefix, case_insensitive, value)| Entry {
                prefix,
                case_insensitive,
                value,
            })
            .collect();
        // Stable sort: equal lengths keep file order (paths are unique anyway).
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Router { routes }
    }

    /// Every route whose prefix matches `path` (a [`normalize`]d path),
    /// longest first: the first is the route, the others the fall-through
    /// order when a route refuses a client. Runs once per request.
    pub fn candidates<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a T> + 'a {
        self.routes
            .iter()
            .filter(move |e| matches_prefix_with(&e.prefix, path, e.case_insensitive))
            .map(|e| &e.value)
    }

    /// The longest match alone.
    /// The best match alone: what the unit tests compare.
    #[cfg(test)]
    fn route<'a>(&'a self, path: &'a str) -> Option<&'a T> {
        self.candidates(path).next()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes.iter().map(|e| (e.prefix.as_str(), &e.value))
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
/// A prefix ending in `/` (such as `/`) matches everything below it.
fn matches_prefix_with(prefix: &str, path: &str, case_insensitive: bool) -> bool {
    let (p, b) = (prefix.as_bytes(), path.as_bytes());
    if b.len() < p.len() {
        return false;
    }
    let head = &b[..p.len()];
    let same = if case_insensitive {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    };
    same && (b.len() == p.len() || p.ends_with(b"/") || b[p.len()] == b'/')
}

/// A path's normal form, and what in it has no decidable normal form.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized<'a> {
    pub path: Cow<'a, str>,
    /// `%2F` inside a segment: one segment to some servers, two to others.
    pub encoded_slash: bool,
    /// `%00`: ends the path early in some servers.
    pub encoded_nul: bool,
}

/// The path as routing sees it: unreserved characters percent-decoded
/// (RFC 3986 §6.2.2.2) and other escapes upper-cased (§6.2.2.1), each
/// segment's `;` parameters ignored, empty segments merged, and `.`/`..`
/// removed (§5.2.4), never climbing above the root. Paths with none of
/// `%`, `;`, `//` or `/.` (nearly all) are returned as they are.
pub fn normalize(path: &str) -> Normalized<'_> {
    let b = path.as_bytes();
    let plain = !b.iter().any(|c| matches!(c, b'%' | b';'))
        && !b.windows(2).any(|w| w == b"//" || w == b"/.")
        && b.first() == Some(&b'/');
    if plain {
        return Normalized {
            path: Cow::Borrowed(path),
            encoded_slash: false,
            encoded_nul: false,
        };
    }
    let mut encoded_slash = false;
    let mut encoded_nul = false;
    // Decode what may be decoded; a segment's parameters end at its first
    // literal `;` (an encoded one is data).
    let mut decoded: Vec<u8> = Vec::with_capacity(b.len());
    let mut in_params = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' {
            in_params = false;
            decoded.push(c);
            i += 1;
            continue;
        }
        if c == b';' {
            in_params = true;
            i += 1;
            continue;
        }
        if in_params {
            i += 1;
            continue;
        }
        if c == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let v = h << 4 | l;
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(v);
                } else {
                    encoded_slash |= v == b'/';
                    encoded_nul |= v == 0;
                    decoded.push(b'%');
                    decoded.push(b[i + 1].to_ascii_uppercase());
                    decoded.push(b[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        decoded.push(c);
        i += 1;
    }
    let mut out: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split(|c| *c == b'/') {
        trailing = false;
        match seg {
            b"" => trailing = true,
            b"." => trailing = true,
            b".." => {
                out.pop();
                trailing = true;
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        // Only ASCII went in: escapes stay escaped, and the request target
        // was ASCII to begin with.
        path.push_str(&String::from_utf8_lossy(s));
    }
    if trailing || out.is_empty() {
        path.push('/');
    }
    Normalized {
        path: Cow::Owned(path),
        encoded_slash,
        encoded_nul,
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliasvault() -> Router<&'static str> {
        Router::new(vec![
            ("/".into(), "client"),
            ("/api".into(), "api"),
            ("/admin".into(), "admin"),
        ])
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let r = aliasvault();
        for (path, want) in [
            ("/api", "api"),
            ("/api/", "api"),
            ("/api/v1/Auth", "api"),
            ("/apix", "client"),
            ("/admin", "admin"),
            ("/admin/_blazor", "admin"),
            ("/administrator", "client"),
            ("/", "client"),
            ("/index.html", "client"),
            ("/api%2Fx", "client"),
            ("/api;v=1/x", "client"),
        ] {
            assert_eq!(r.route(path), Some(&want), "{path}");
        }
    }

    #[test]
    fn no_route_without_root() {
        let r = Router::new(vec![("/api".to_string(), 1)]);
        assert_eq!(r.route("/"), None);
        assert_eq!(r.route("/ap"), None);
        assert_eq!(r.route("*"), None);
        assert_eq!(r.route("/api/x"), Some(&1));
    }

    #[test]
    fn trailing_slash_prefix() {
        let r = Router::new(vec![("/static/".to_string(), 1)]);
        assert_eq!(r.route("/static/a.css"), Some(&1));
        assert_eq!(r.route("/static/"), Some(&1));
        assert_eq!(r.route("/static"), None);
    }

    fn norm(p: &str) -> String {
        normalize(p).path.into_owned()
    }

    #[test]
    fn normal_form() {
        for (raw, want) in [
            ("/", "/"),
            ("/api/v1/Auth", "/api/v1/Auth"),
            ("/%70rivate/x", "/private/x"),
            ("/./private/x", "/private/x"),
            ("//private/x", "/private/x"),
            ("/a/../private/x", "/private/x"),
            ("/../../private", "/private"),
            ("/login;a", "/login"),
            ("/..;/login", "/login"),
            ("/a/%2e%2E/login", "/login"),
            ("/%6cogin", "/login"),
            ("/api/%41uth", "/api/Auth"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%20b", "/a%20b"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/a//", "/a/"),
            ("/%zz", "/%zz"),
            ("/%4", "/%4"),
        ] {
            assert_eq!(norm(raw), want, "{raw}");
        }
        assert!(normalize("/private%2fx").encoded_slash);
        assert!(normalize("/a%00b").encoded_nul);
        assert!(!normalize("/a%20b").encoded_slash);
        assert!(matches!(normalize("/api/x").path, Cow::Borrowed(_)));
    }

    #[test]
    fn case_insensitive_routes() {
        let r = Router::with_case(vec![
            ("/".to_string(), false, "client"),
            ("/api".to_string(), true, "api"),
            ("/Static".to_string(), false, "static"),
        ]);
        assert_eq!(r.route("/API/v1"), Some(&"api"));
        assert_eq!(r.route("/aPi"), Some(&"api"));
        assert_eq!(r.route("/apix"), Some(&"client"));
        assert_eq!(r.route("/static/a"), Some(&"client"));
        assert_eq!(r.route("/Static/a"), Some(&"static"));
    }
}
