//! Shared primitives every layer may use: the monotonic clock and HTTP
//! dates, numbers without the formatter, HTTP/1 bodies written with their
//! framing, fields added to a head without its map, per-thread spares of
//! header maps and buffers, I/O helpers, log-line limits, file stamps,
//! error chains, header names, the Content-Length rule and CIDR ranges.

pub(crate) mod cidr;
pub(crate) mod clock;
pub(crate) mod content_length;
pub mod error_chain;
pub(crate) mod files;
pub(crate) mod fmt;
pub(crate) mod framed;
pub mod head_fields;
pub(crate) mod header_names;
pub(crate) mod io;
pub mod log_limit;
pub(crate) mod recycle;
