//! Gatehouse: a reverse proxy for self-hosted web apps, built to replace
//! the nginx container in front of apps such as AliasVault.
//!
//! ```text
//! accept ─► limits (total: evict the longest idle; per address, before
//!            any read) ─► PROXY header (trusted peers, refused at the
//!            signature otherwise)
//!        ─► TLS (ALPN h2 | http/1.1 | acme-tls/1)
//!        ─► HTTP/1: conn::h1, one task per connection: each head parsed
//!            once (conn::framing, RFC 9112 §6; a refusal is answered by
//!            the pipeline's status page) ─► proxy::handle ─► response
//!            written by the loop; idle limits by one sweep (conn::sweep)
//!           HTTP/2: hyper ─► proxy::handle; its own idle limit
//! handle():  rt = runtime snapshot (one per request); client = Client::of
//!            (trusted X-Forwarded-For walk, request id); the request is
//!            "busy" until its response body ends
//!            refusal recorded by framing                → 400/414/431/501/505/405
//!   inner(): Host rules (RFC 9112 §3.2, RFC 9113 §8.3.1) → 400
//!            TRACE → 405; OPTIONS * → 200; CONNECT → 405
//!            Gatehouse-Diagnostics token (when configured) → report
//!            plain HTTP: ACME challenge | 301 to HTTPS (unless a trusted
//!            proxy says https)
//!            router::normalize; select_route (longest prefix on the
//!            normal form, allow/deny, fall-through)      → 404 | 403 | 400
//!            admit_rate (per-address limiter; with [cluster] one
//!            Redis script, else on_redis_error)         → 429 | 503
//!            admit_body (Content-Length over max_body)  → 413
//!            upgrade::h1 (route's tokens) | upgrade::h2_websocket
//!                                                       (tunnels own their state)
//!            prepare_upstream (Host, hop-by-hop, X-Forwarded-*, X-Request-Id)
//!            read_ahead (request_buffer, client_body_timeout) → 408 | 413
//!            send (per-route pool, upstream::h1 in this task, balancing,
//!            retry, timeout from the end of the body)   → 503 status page
//!            finish_response (hop-by-hop, Location, compression)
//!   outer:   error → log once → ProxyError::into_response; security headers;
//!            metrics; access-log entry written when the body ends
//! ```
//!
//! Around it, `gatehouse check`, start and reload share one path:
//!
//! ```text
//! config::load ─► plan::plan (ports, certificate read or generated in
//!                 memory, listeners; no side effect)  ─► check prints it
//!                                                   └► Server::start / apply
//!                 commit: bind new addresses ─► write a generated
//!                 certificate ─► swap runtime and TLS; keep the ACME
//!                 manager, certificate watcher and server health whose
//!                 settings did not change
//! ```
//!
//! Modules are in layers, one folder each: `base` (primitives), `config`,
//! `policy`, `upstream`, `cluster` (state replicas share through Redis),
//! `runtime`, `certs`, `conn` (connections; requests
//! go to a `conn::Handler`), `proxy` (the request pipeline, the handler),
//! `ops` (plan, server, supervisor, admin), `tools` (the commands).
//! `tests/it/layers.rs` holds the order and checks every import.

// The layers, from the bottom; a module imports only from its own layer
// or below (tests/it/layers.rs checks every import).
pub mod base;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod conn;
#[doc(hidden)]
pub mod fuzzing;
pub mod ops;
pub(crate) mod policy;
pub mod proxy;
pub mod runtime;
pub mod tools;
pub mod upstream;

pub use ops::server::{Server, StartError};
pub use ops::state::Shared;
