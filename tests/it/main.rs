//! Integration tests: the real proxy, real upstreams, real clients, all on
//! ephemeral loopback ports, in-process. One binary so the crate links once.
//! The tests that drive outside programs (nginx, Apache, Caddy, HAProxy,
//! Pebble, testssl.sh, slowhttptest, promtool, curl, Docker) are the
//! `interop` binary.

#[path = "../support/mod.rs"]
mod support;

mod balance;
mod certs;
mod cli;
mod compression;
mod doctor;
mod failures;
mod forwarding;
mod hardening;
mod layers;
mod limits;
mod plan;
mod properties;
mod reload;
mod routing;
mod server_h1;
mod smuggling;
mod tls;
mod trust;
mod upstream_h1;
mod websocket;
