//! Operations: planning and committing a configuration, the running
//! server's lifecycle and state, the supervisor (signals, file watch,
//! admin commands) and the admin listener (metrics, health, reload).

pub(crate) mod admin;
pub mod plan;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod supervisor;
