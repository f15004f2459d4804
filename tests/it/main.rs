//! Integration tests: the real proxy, real upstreams, real clients, all on
//! ephemeral loopback ports. One binary so the crate links once.

mod support;

mod acme;
mod attacks;
mod balance;
mod certs;
mod cli;
mod compression;
mod container;
mod external;
mod failures;
mod forwarding;
mod hardening;
mod layers;
mod limits;
mod plan;
mod properties;
mod reload;
mod routing;
mod smuggling;
mod tls;
mod trust;
mod websocket;
