//! Gatehouse: a reverse proxy for self-hosted web apps, built to replace
//! the nginx container in front of apps such as AliasVault.
//!
//! ```text
//! accept ─► limits (total, per address) ─► PROXY header (trusted peers)
//!        ─► TLS (ALPN h2 | http/1.1 | acme-tls/1) ─► hyper ─► proxy::handle
//! handle():  rt = runtime snapshot (one per request); client = Client::of
//!            (trusted X-Forwarded-For walk, request id)
//!   inner(): ambiguous HTTP/1 framing (framing.rs)     → 400
//!            Gatehouse-Diagnostics token (when configured) → report
//!            plain HTTP: ACME challenge | 301 to HTTPS (unless a trusted
//!            proxy says https)
//!            select_route (longest prefix, allow/deny, fall-through) → 404 | 403
//!            admit_rate (per-address limiter)           → 429
//!            admit_body (Content-Length over max_body)  → 413
//!            upgrade::h1 | upgrade::h2_websocket        (tunnels own their state)
//!            prepare_upstream (Host, hop-by-hop, X-Forwarded-*, X-Request-Id)
//!            send (per-route pool of HTTP/1.1 senders, balancing, retry,
//!            timeout)                                   → 503 status page
//!            finish_response (hop-by-hop, Location, compression)
//!   outer:   error → log once → ProxyError::into_response; security headers;
//!            metrics; access-log entry written when the body ends
//! ```

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod error;
pub mod external;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod io;
pub mod listen;
pub mod log_limit;
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
