//! Tests that drive real outside programs against Gatehouse on loopback:
//! Pebble (ACME), nginx, Apache, Caddy and HAProxy in front of it,
//! testssl.sh, slowhttptest, promtool, curl, and Docker with AliasVault's
//! compose file. `scripts/test` installs them; `cargo test --test it` runs
//! the in-process suite without them.

#[path = "../support/mod.rs"]
mod support;

mod acme;
mod attacks;
mod cluster;
mod container;
mod external;
mod tools;
