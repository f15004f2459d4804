//! Access ranges of a route (`allow`, `deny`, `ADMIN_IP_ALLOWLIST`): who
//! may use it and how a refused client is answered.

use crate::base::cidr::any_contains;
use crate::config::{Access, OnDeny};

impl Access {
    /// Runs once per request on each candidate route: `Ok` admits, `Err`
    /// says how to refuse. Deny wins over allow; an empty allow list allows
    /// everyone.
    pub fn check(&self, ip: std::net::IpAddr) -> Result<(), OnDeny> {
        if any_contains(&self.deny, ip)
            || (!self.allow.is_empty() && !any_contains(&self.allow, ip))
        {
            return Err(self.on_deny);
        }
        Ok(())
    }
}
