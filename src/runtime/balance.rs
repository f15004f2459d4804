//! Balancing a route's servers: which one the next attempt goes to
//! (round robin or least outstanding, skipping servers marked down or out
//! of health), and the marks a failure leaves.

use std::sync::atomic::Ordering::Relaxed;

use super::{RouteRt, ServerRt};

/// How long a failed server is skipped (nginx's `fail_timeout=5s`).
const FAIL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Skips `server` for `FAIL_TIMEOUT` after a failure (refused, timed out,
/// no answer): nginx's `max_fails=1`, as AliasVault uses.
pub(crate) fn mark_down(server: &ServerRt) {
    let until = crate::base::clock::now_nanos() + FAIL_TIMEOUT.as_nanos() as u64;
    server.down_until.store(until, Relaxed);
}

/// Counts a request as outstanding on its server until dropped.
pub(crate) struct Outstanding<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Outstanding<'a> {
    pub(crate) fn new(c: &'a std::sync::atomic::AtomicUsize) -> Self {
        c.fetch_add(1, Relaxed);
        Outstanding(c)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The server for the next attempt: among those not tried yet, the ones
/// not marked down (all of them if every one is down), by the route's
/// balancing rule.
pub(crate) fn pick(route: &RouteRt, tried: u64) -> usize {
    let n = route.servers.len().min(64);
    let now = crate::base::clock::now_nanos();
    let untried = |i: usize| tried & (1 << i) == 0;
    let up = |i: usize| {
        let s = &route.servers[i];
        s.down_until.load(Relaxed) <= now && s.healthy.load(Relaxed)
    };
    let any_up = (0..n).any(|i| untried(i) && up(i));
    let ok = |i: usize| untried(i) && (up(i) || !any_up);
    let start = route.next.fetch_add(1, Relaxed);
    let order = (0..n).map(|k| (start + k) % n).filter(|&i| ok(i));
    match route.balance {
        crate::config::model::Balance::RoundRobin => order.into_iter().next(),
        crate::config::model::Balance::LeastOutstanding => {
            order.min_by_key(|&i| route.servers[i].outstanding.load(Relaxed))
        }
    }
    .unwrap_or(0)
}
