//! Gatehouse: a reverse proxy for self-hosted web apps, built to replace
//! the nginx container in front of apps such as AliasVault.
//!
//! ```text
//! accept ─► TLS (ALPN h2 | http/1.1) ─► hyper connection ─► proxy::handle
//! handle():  rt = runtime snapshot (one per request)
//!   inner(): plain HTTP: ACME challenge file | 301 to HTTPS
//!            route = rt.router.route(path)              → 404
//!            admit_body (Content-Length over max_body)  → 413
//!            upgrade::h1 | upgrade::h2_websocket        (tunnels own their state)
//!            prepare_upstream (Host, hop-by-hop, X-Forwarded-*)
//!            send (pooled client, timeout)              → 503 status page
//!            finish_response (hop-by-hop, Location, compression)
//!   outer:   error → log once → ProxyError::into_response; security headers
//! ```

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod framing;
mod io;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
pub mod tls;

pub use server::{Server, Shared, StartError};
