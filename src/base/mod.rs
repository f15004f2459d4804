//! Shared primitives every layer may use: the monotonic clock, I/O
//! helpers, log-line limits, file stamps, error chains, header names and
//! CIDR ranges.

pub mod cidr;
pub mod clock;
pub mod error_chain;
pub mod files;
pub mod header_names;
pub(crate) mod io;
pub mod log_limit;
