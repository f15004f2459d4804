//! Per-client rate limits with a fixed memory footprint.
//!
//! The algorithm is GCRA (a token bucket kept as one timestamp per client):
//! each request moves the client's "theoretical arrival time" one emission
//! interval forward, and a request is refused when that time runs more than
//! `burst` intervals ahead of now. State lives in a fixed table of
//! set-associative slots, so a flood of distinct addresses evicts old entries
//! instead of growing memory: the table is 2 MiB per limited route whatever
//! arrives. IPv6 clients are keyed by their /64, the block one host controls.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::base::cidr::canonical;

/// Slots per limiter (a power of two) and entries per slot.
const SETS: usize = 16 * 1024;
const WAYS: usize = 4;

pub use crate::config::model::RateLimit;

#[derive(Clone, Copy, Default)]
struct Entry {
    key: u128,
    /// Theoretical arrival time in nanoseconds since the limiter's epoch;
    /// 0 marks an empty entry.
    tat: u64,
}

pub struct Limiter {
    interval: u64,
    tolerance: u64,
    sets: Box<[Mutex<[Entry; WAYS]>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        let (interval, tolerance) = limit.gcra();
        Limiter {
            interval: interval.as_nanos() as u64,
            tolerance: tolerance.as_nanos() as u64,
            sets: (0..SETS)
                .map(|_| Mutex::new([Entry::default(); WAYS]))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Runs once per request on a limited route, with `now` in nanoseconds
    /// since any fixed epoch (monotonic). `Ok` admits it; `Err` gives the
    /// wait before a request would be admitted.
    pub fn check(&self, ip: IpAddr, now: u64) -> Result<(), Duration> {
        // Keep 0 free as the empty marker.
        let now = now.max(1);
        let key = key_of(ip);
        let set = &self.sets[(self.hasher.hash_one(key) as usize) & (SETS - 1)];
        // One small critical section per limited request; a poisoned set
        // only holds timestamps and stays usable.
        let mut ways = set.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match ways.iter().position(|e| e.tat != 0 && e.key == key) {
            Some(i) => i,
            None => {
                // Evict the entry that is furthest in the past: it has the
                // most allowance back anyway.
                let i = (0..WAYS).min_by_key(|&i| ways[i].tat).unwrap_or(0);
                ways[i] = Entry { key, tat: 0 };
                i
            }
        };
        let e = &mut ways[slot];
        let tat = e.tat.max(now);
        let next = tat + self.interval;
        if next - now > self.tolerance {
            return Err(Duration::from_nanos(next - now - self.tolerance));
        }
        e.tat = next;
        Ok(())
    }
}

/// IPv4 as itself; IPv6 by its /64. The shared limiter keys Redis by it
/// too, so a client is the same client on every replica.
pub(crate) fn key_of(ip: IpAddr) -> u128 {
    match canonical(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) | (1u128 << 127),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_steady_rate() {
        let l = Limiter::new(RateLimit {
            per_second: 10.0,
            burst: 20,
        });
        let t0 = 5 * SEC;
        for i in 0..20 {
            assert!(
                l.check(ip("203.0.113.1"), t0).is_ok(),
                "request {i} within the burst"
            );
        }
        let wait = l.check(ip("203.0.113.1"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Another client is unaffected.
        assert!(l.check(ip("203.0.113.2"), t0).is_ok());
        // After 100 ms exactly one more is allowed.
        assert!(l.check(ip("203.0.113.1"), t0 + SEC / 10).is_ok());
        assert!(l.check(ip("203.0.113.1"), t0 + SEC / 10).is_err());
        // After two idle seconds the whole burst is back.
        for _ in 0..20 {
            assert!(l.check(ip("203.0.113.1"), t0 + 3 * SEC).is_ok());
        }
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let l = Limiter::new(RateLimit {
            per_second: 1.0,
            burst: 1,
        });
        assert!(l.check(ip("2001:db8:1:2::1"), SEC).is_ok());
        assert!(
            l.check(ip("2001:db8:1:2:ffff::9"), SEC).is_err(),
            "same /64"
        );
        assert!(l.check(ip("2001:db8:1:3::1"), SEC).is_ok(), "other /64");
    }

    /// Counts each thread's allocations, so a test can show that `check`
    /// allocates nothing however many addresses it sees (the lib's unit
    /// tests run with it; it only counts, then asks the system allocator).
    struct Counting;

    thread_local! {
        static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn allocations() -> u64 {
        ALLOCATIONS.with(std::cell::Cell::get)
    }

    // SAFETY: every call is passed on unchanged to the system allocator.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { std::alloc::System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: `ptr` came from the system allocator with `layout`.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    #[test]
    fn memory_is_fixed_under_a_flood_of_addresses() {
        let l = Limiter::new(RateLimit {
            per_second: 1.0,
            burst: 1,
        });
        let before = allocations();
        for i in 0..1_000_000u32 {
            let _ = l.check(IpAddr::V4(i.into()), SEC + u64::from(i));
        }
        // A table that grew with the addresses would have allocated.
        assert_eq!(allocations(), before, "check allocated");
        // The flood evicted old entries but the table still limits: a
        // client seen now is held to its burst.
        let t = SEC + 2_000_000;
        assert!(l.check(ip("198.51.100.1"), t).is_ok());
        assert!(l.check(ip("198.51.100.1"), t).is_err());
    }
}
