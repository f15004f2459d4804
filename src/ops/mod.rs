//! Operations: planning and committing a configuration, the running
//! server's lifecycle and state, the supervisor (signals, file watch,
//! admin commands) and the admin listener (metrics, health, reload).

pub mod admin;
pub mod plan;
pub mod server;
pub mod state;
pub mod supervisor;
