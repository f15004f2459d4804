//! The process's monotonic clock as a number, for state kept in atomics
//! (rate limits, failure marks, connection idle times).

/// Nanoseconds since the first call, offset by a second so that 0 (the
/// "never" marker of the atomics that hold these) never occurs.
pub fn now_nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    epoch.elapsed().as_nanos() as u64 + 1_000_000_000
}
