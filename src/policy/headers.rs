//! Security headers on every response, Gatehouse's own pages included.
//!
//! nginx only inherits `add_header` into a block that has none of its own,
//! so AliasVault's status page went out without them; here the same policy
//! runs on every response that leaves the proxy.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::base::framed::push_field;
use crate::config::HeaderRules;

/// The precomputed header lists for one scheme.
#[derive(Debug, Clone, Default)]
struct Set {
    /// Added when the response does not already carry the header.
    if_not_present: Vec<(HeaderName, HeaderValue)>,
    /// Always replace.
    overrides: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// The `if_not_present` fields as HTTP/1 lines (`name: value\r\n`),
    /// in the same order.
    absent_lines: Vec<Box<[u8]>>,
    /// The `overrides` as HTTP/1 lines, one block.
    override_lines: Box<[u8]>,
}

impl Set {
    fn new(
        if_not_present: Vec<(HeaderName, HeaderValue)>,
        overrides: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    ) -> Set {
        let line = |name: &HeaderName, value: &HeaderValue| {
            let mut out = Vec::new();
            push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
            out
        };
        Set {
            absent_lines: if_not_present
                .iter()
                .map(|(n, v)| line(n, v).into_boxed_slice())
                .collect(),
            override_lines: overrides.iter().flat_map(|(n, v)| line(n, v)).collect(),
            if_not_present,
            overrides,
            remove,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy {
    http: Set,
    https: Set,
}

impl HeaderPolicy {
    pub fn new(rules: &HeaderRules, deployment_mode: Option<&str>) -> Self {
        let mut base: Vec<(HeaderName, HeaderValue)> = vec![
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("strict-origin-when-cross-origin"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("SAMEORIGIN"),
            ),
            (
                HeaderName::from_static("cross-origin-resource-policy"),
                HeaderValue::from_static("same-origin"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("frame-ancestors 'self'"),
            ),
        ];
        if let Some(mode) = deployment_mode.and_then(|m| HeaderValue::from_str(m).ok()) {
            base.push((HeaderName::from_static("x-aliasvault-deployment"), mode));
        }
        let build = |with_hsts: bool| {
            let mut list = base.clone();
            if with_hsts {
                list.push((
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000"),
                ));
            }
            for (name, value) in &rules.set {
                match list.iter_mut().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = value.clone(),
                    None => list.push((name.clone(), value.clone())),
                }
            }
            let overrides = rules.override_.clone();
            list.retain(|(n, _)| {
                !overrides.iter().any(|(o, _)| o == n) && !rules.remove.contains(n)
            });
            Set::new(list, overrides, rules.remove.clone())
        };
        HeaderPolicy {
            http: build(false),
            https: build(true),
        }
    }

    /// Runs on every HTTP/2 response just before it is sent (HTTP/1 heads
    /// are written with [`HeaderPolicy::gives_way`] and [`HeaderPolicy::write`]).
    pub fn apply(&self, headers: &mut HeaderMap, https: bool) {
        let set = if https { &self.https } else { &self.http };
        for (name, value) in &set.if_not_present {
            if let header::Entry::Vacant(slot) = headers.entry(name) {
                slot.insert(value.clone());
            }
        }
        for (name, value) in &set.overrides {
            headers.insert(name, value.clone());
        }
        for name in &set.remove {
            headers.remove(name);
        }
    }

    /// [`HeaderPolicy::apply`] for a response head written from its map
    /// and then from bytes (HTTP/1, issue 13): whether the response's
    /// field `name` gives way to the policy (it overrides or removes it);
    /// notes in `seen` the fields it adds only when absent.
    pub fn gives_way(&self, https: bool, name: &HeaderName, seen: &mut u64) -> bool {
        let set = if https { &self.https } else { &self.http };
        if let Some(i) = set.if_not_present.iter().position(|(n, _)| n == name) {
            *seen |= 1u64.checked_shl(i as u32).unwrap_or(0);
            return false;
        }
        set.overrides.iter().any(|(n, _)| n == name) || set.remove.contains(name)
    }

    /// Writes the policy's fields after a response's own, given what
    /// [`HeaderPolicy::gives_way`] noted of them.
    pub fn write(&self, https: bool, headers: &HeaderMap, seen: u64, out: &mut Vec<u8>) {
        let set = if https { &self.https } else { &self.http };
        for (i, line) in set.absent_lines.iter().enumerate() {
            let present = match 1u64.checked_shl(i as u32) {
                Some(bit) => seen & bit != 0,
                // Past 64 fields of `[headers] set`: looked up.
                None => headers.contains_key(&set.if_not_present[i].0),
            };
            if !present {
                out.extend_from_slice(line);
            }
        }
        out.extend_from_slice(&set.override_lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn defaults_hsts_only_over_https() {
        let p = HeaderPolicy::new(&HeaderRules::default(), Some("install"));
        let mut h = HeaderMap::new();
        p.apply(&mut h, false);
        assert_eq!(h["x-frame-options"], "SAMEORIGIN");
        assert_eq!(h["x-aliasvault-deployment"], "install");
        assert!(!h.contains_key("strict-transport-security"));
        let mut h = HeaderMap::new();
        p.apply(&mut h, true);
        assert_eq!(h["strict-transport-security"], "max-age=31536000");
    }

    #[test]
    fn upstream_value_kept_unless_overridden() {
        let rules = HeaderRules {
            set: vec![(header::REFERRER_POLICY, hv("no-referrer"))],
            override_: vec![(header::X_FRAME_OPTIONS, hv("DENY"))],
            remove: vec![header::CONTENT_SECURITY_POLICY],
        };
        let p = HeaderPolicy::new(&rules, None);
        let mut h = HeaderMap::new();
        h.insert(header::X_CONTENT_TYPE_OPTIONS, hv("upstream"));
        h.insert(header::X_FRAME_OPTIONS, hv("ALLOWALL"));
        h.insert(header::CONTENT_SECURITY_POLICY, hv("default-src 'self'"));
        p.apply(&mut h, true);
        assert_eq!(h["x-content-type-options"], "upstream");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(!h.contains_key("content-security-policy"));
        assert!(!h.contains_key("x-aliasvault-deployment"));
    }

    /// The fields of a response: as the map holds them after `apply`
    /// (HTTP/2), or as the HTTP/1 writer puts them on the wire.
    fn fields_applied(p: &HeaderPolicy, h: &HeaderMap, https: bool) -> Vec<(String, String)> {
        let mut h = h.clone();
        p.apply(&mut h, https);
        let mut v: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    }

    fn fields_written(p: &HeaderPolicy, h: &HeaderMap, https: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut seen = 0;
        for (name, value) in h {
            if !p.gives_way(https, name, &mut seen) {
                push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        p.write(https, h, seen, &mut out);
        let text = String::from_utf8(out).unwrap();
        let mut v: Vec<_> = text
            .split_terminator("\r\n")
            .map(|line| {
                let (n, v) = line.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn written_fields_are_the_applied_ones() {
        let many: Vec<_> = (0..70)
            .map(|i| {
                (
                    HeaderName::from_bytes(format!("x-set-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_str(&format!("v{i}")).unwrap(),
                )
            })
            .collect();
        let rules = [
            HeaderRules::default(),
            HeaderRules {
                set: vec![(header::REFERRER_POLICY, hv("no-referrer"))],
                override_: vec![
                    (header::X_FRAME_OPTIONS, hv("DENY")),
                    (HeaderName::from_static("x-own"), hv("ours")),
                ],
                remove: vec![header::CONTENT_SECURITY_POLICY, header::SERVER],
            },
            HeaderRules {
                set: many,
                ..HeaderRules::default()
            },
        ];
        let mut responses = vec![HeaderMap::new()];
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, hv("text/html"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, hv("upstream"));
        h.insert(header::X_FRAME_OPTIONS, hv("ALLOWALL"));
        h.insert(header::CONTENT_SECURITY_POLICY, hv("default-src 'self'"));
        h.insert(header::SERVER, hv("app"));
        h.insert("x-own", hv("theirs"));
        h.insert("x-set-3", hv("theirs"));
        h.insert("x-set-68", hv("theirs"));
        h.append(header::SET_COOKIE, hv("a=1"));
        h.append(header::SET_COOKIE, hv("b=2"));
        responses.push(h);
        for rules in &rules {
            let p = HeaderPolicy::new(rules, Some("install"));
            for h in &responses {
                for https in [false, true] {
                    let applied = fields_applied(&p, h, https);
                    assert_eq!(fields_written(&p, h, https), applied, "{rules:?} {h:?}");
                    assert!(applied.len() > h.len().min(5), "{applied:?}");
                }
            }
        }
    }
}
