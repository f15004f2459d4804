//! IP address ranges: parsing, matching, and AliasVault's token rules for
//! `TRUSTED_PROXIES` and `ADMIN_IP_ALLOWLIST`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range such as `10.0.0.0/8` or `fd00::/8`; a bare address is a
/// range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            net: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    /// True when `ip` lies in the range. IPv4-mapped IPv6 addresses are
    /// compared as the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        Ok(Cidr {
            net: canonical(net),
            prefix: if net.is_ipv4() || canonical(net).is_ipv6() {
                prefix
            } else {
                prefix.saturating_sub(96)
            },
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports for
/// an IPv4 client) as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The private ranges AliasVault trusts by default, plus IPv6 ULAs.
pub fn private_ranges() -> Vec<Cidr> {
    vec![
        Cidr::v4(10, 0, 0, 0, 8),
        Cidr::v4(172, 16, 0, 0, 12),
        Cidr::v4(192, 168, 0, 0, 16),
        Cidr {
            net: IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)),
            prefix: 7,
        },
    ]
}

/// Loopback, always allowed to the admin panel (AliasVault's entrypoint).
pub fn loopback_ranges() -> Vec<Cidr> {
    vec![
        Cidr::v4(127, 0, 0, 0, 8),
        Cidr {
            net: IpAddr::V6(Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

pub fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// A comma list parsed as AliasVault's entrypoint does: invalid tokens are
/// skipped and reported. Returns the ranges and the rejected tokens.
pub fn parse_list(value: &str) -> (Vec<Cidr>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match token.parse::<Cidr>() {
            Ok(c) => ok.push(c),
            Err(_) => bad.push(token.to_string()),
        }
    }
    (ok, bad)
}

/// `TRUSTED_PROXIES`: empty means the private ranges, `none` nobody,
/// otherwise the valid tokens (none valid: nobody).
pub fn trusted_proxies_from_env(value: &str) -> (Vec<Cidr>, Vec<String>) {
    let v = value.trim();
    if v.is_empty() {
        return (private_ranges(), Vec::new());
    }
    if v.eq_ignore_ascii_case("none") {
        return (Vec::new(), Vec::new());
    }
    parse_list(v)
}

/// What `ADMIN_IP_ALLOWLIST` allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowlist {
    /// Empty: everyone.
    Everyone,
    /// These ranges plus loopback. Empty when tokens were given but none was
    /// valid: only loopback (fail closed).
    Only(Vec<Cidr>),
}

/// `ADMIN_IP_ALLOWLIST`: empty allows everyone; `private` the private
/// ranges; otherwise the valid CIDRs; loopback always; tokens given but none
/// valid denies everyone but loopback. Returns the rejected tokens too.
pub fn admin_allowlist_from_env(value: &str) -> (Allowlist, Vec<String>) {
    let v = value.trim();
    if v.is_empty() {
        return (Allowlist::Everyone, Vec::new());
    }
    let mut ranges = loopback_ranges();
    if v.eq_ignore_ascii_case("private") {
        ranges.extend(private_ranges());
        return (Allowlist::Only(ranges), Vec::new());
    }
    let (ok, bad) = parse_list(v);
    ranges.extend(ok);
    (Allowlist::Only(ranges), bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_matching() {
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains(ip("172.31.255.255")));
        assert!(!c.contains(ip("172.32.0.0")));
        assert!(c.contains(ip("::ffff:172.16.0.1")), "IPv4-mapped");
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:1::5")));
        assert!(!c.contains(ip("2001:db9::")));
        assert!(!c.contains(ip("10.0.0.1")));
        let one: Cidr = "203.0.113.7".parse().unwrap();
        assert!(one.contains(ip("203.0.113.7")) && !one.contains(ip("203.0.113.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.0/33",
            "300.1.1.1",
            "fe80::/129",
            "abc",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_proxies_rules() {
        assert_eq!(trusted_proxies_from_env("").0, private_ranges());
        assert_eq!(trusted_proxies_from_env("NONE").0, vec![]);
        let (ok, bad) = trusted_proxies_from_env("10.1.0.0/16, bogus, ::1");
        assert_eq!(ok.len(), 2);
        assert_eq!(bad, ["bogus"]);
        assert_eq!(trusted_proxies_from_env("bogus,also-bogus").0, vec![]);
    }

    #[test]
    fn admin_allowlist_rules() {
        assert_eq!(admin_allowlist_from_env("").0, Allowlist::Everyone);
        let Allowlist::Only(p) = admin_allowlist_from_env("private").0 else {
            panic!()
        };
        assert!(any_contains(&p, ip("192.168.1.1")) && any_contains(&p, ip("127.0.0.1")));
        let (Allowlist::Only(l), bad) = admin_allowlist_from_env("203.0.113.0/24,nope") else {
            panic!()
        };
        assert_eq!(bad, ["nope"]);
        assert!(any_contains(&l, ip("203.0.113.9")) && any_contains(&l, ip("::1")));
        assert!(!any_contains(&l, ip("10.0.0.1")));
        // Fail closed: only loopback.
        let Allowlist::Only(l) = admin_allowlist_from_env("nope").0 else {
            panic!()
        };
        assert_eq!(l, loopback_ranges());
    }
}
