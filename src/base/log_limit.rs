//! A bound on log lines that peers can cause.
//!
//! A request to a failed upstream, a refused PROXY header or an accept
//! error happens as often as peers make it happen; each call site that logs
//! one keeps a [`Limit`], so a flood writes at most [`PER_SECOND`] lines a
//! second from it and says how many it left out (issue 10 point 10).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Lines per second and call site.
pub const PER_SECOND: u64 = 10;

pub(crate) struct Limit {
    /// The current second (`clock::now_nanos` / 1e9) and lines in it, as
    /// `second << 16 | count`.
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl Limit {
    pub const fn new() -> Self {
        Limit {
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines left
    /// out since the last one written; `None` to leave this one out.
    pub fn allow(&self) -> Option<u64> {
        let second = crate::base::clock::now_nanos() / 1_000_000_000;
        let mut cur = self.window.load(Relaxed);
        loop {
            let (s, n) = (cur >> 16, cur & 0xffff);
            let next = if s == second {
                if n >= PER_SECOND {
                    self.suppressed.fetch_add(1, Relaxed);
                    return None;
                }
                cur + 1
            } else {
                second << 16 | 1
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => return Some(self.suppressed.swap(0, Relaxed)),
                Err(actual) => cur = actual,
            }
        }
    }
}

impl Default for Limit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_per_second_then_counts_the_rest() {
        let l = Limit::new();
        let written = (0..1000).filter(|_| l.allow().is_some()).count() as u64;
        // The loop may straddle a second boundary at most once or twice.
        assert!(
            (PER_SECOND..=3 * PER_SECOND).contains(&written),
            "{written}"
        );
        assert!(l.suppressed.load(Relaxed) >= 1000 - 3 * PER_SECOND);
    }
}
