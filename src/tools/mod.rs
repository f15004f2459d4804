//! The command-line tools: the `gatehouse` command itself (`check`,
//! `cert`, `reload`, `health`), the demo, `gatehouse external` and
//! `gatehouse doctor`.

pub(crate) mod cert;
pub mod check;
pub mod cli;
pub(crate) mod demo;
pub mod doctor;
pub(crate) mod external;
