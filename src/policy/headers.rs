//! Security headers on every response, Gatehouse's own pages included.
//!
//! nginx only inherits `add_header` into a block that has none of its own,
//! so AliasVault's status page went out without them; here the same policy
//! runs on every response that leaves the proxy.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderRules;

/// The precomputed header lists for one scheme.
#[derive(Debug, Clone, Default)]
struct Set {
    /// Added when the response does not already carry the header.
    if_not_present: Vec<(HeaderName, HeaderValue)>,
    /// Always replace.
    overrides: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
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
            Set {
                if_not_present: list,
                overrides,
                remove: rules.remove.clone(),
            }
        };
        HeaderPolicy {
            http: build(false),
            https: build(true),
        }
    }

    /// Runs on every response just before it is sent.
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
}
