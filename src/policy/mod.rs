//! Policies built once from the configuration and applied per request with
//! plain sync methods.

pub mod access;
pub mod client_ip;
pub mod headers;
pub mod rate_limit;
