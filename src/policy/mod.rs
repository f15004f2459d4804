//! Policies built once from the configuration and applied per request with
//! plain sync methods.

pub mod headers;
