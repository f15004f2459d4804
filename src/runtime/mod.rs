//! Everything built from one `Config` that requests need: the router with
//! each route's pooled upstream client, the header policy, the redirect
//! target. Immutable once built; a request takes one snapshot and keeps it.

pub(crate) mod balance;
pub(crate) mod health;
pub(crate) mod metrics;
pub mod router;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::config::{Access, Config, ForwardedFor, TlsSettings, Upstream};
use crate::policy::headers::HeaderPolicy;
use crate::policy::rate_limit::Limiter;
use crate::runtime::router::Router;
use crate::upstream::pool::{self, HttpClient};

/// A route's names as access-log lines show them, rendered once when the
/// runtime is built and shared by every line (issue 13: no copies per
/// request).
pub struct LogNames {
    pub route: Box<str>,
    pub upstream: Box<str>,
}

/// One route, ready to serve.
pub struct RouteRt {
    pub path: String,
    pub upstream: Upstream,
    pub client: HttpClient,
    pub connect_timeout: Duration,
    pub forwarded_prefix: Option<HeaderValue>,
    pub websocket_timeout: Duration,
    pub timeout: Duration,
    pub max_body: u64,
    pub forwarded_for: ForwardedFor,
    pub compress: bool,
    pub access: Access,
    /// `None` when the route has no rate limit (the default).
    pub limiter: Option<Limiter>,
    /// The limit itself, for the shared limiter of a cluster (issue 14).
    pub rate_limit: Option<crate::config::model::RateLimit>,
    pub metrics: Arc<crate::runtime::metrics::RouteMetrics>,
    pub log_names: Arc<LogNames>,
    /// Every server; one for most routes. Shared with the runtime before a
    /// reload when the route keeps the server, so its balancing and health
    /// state survive the reload (issue 12).
    pub servers: Vec<Arc<ServerRt>>,
    pub balance: crate::config::model::Balance,
    pub health_check: Option<crate::config::model::HealthCheck>,
    /// Round-robin position.
    pub next: std::sync::atomic::AtomicUsize,
    /// `Upgrade` tokens tunnelled (lower case).
    pub upgrades: Vec<String>,
    pub allow_encoded_slash: bool,
    pub request_buffer: u64,
    pub client_body_timeout: Duration,
}

/// One server of a route, with the state balancing needs.
pub struct ServerRt {
    pub authority: http::uri::Authority,
    /// Requests sent and not yet answered.
    pub outstanding: std::sync::atomic::AtomicUsize,
    /// Marked down until this time (`clock::now_nanos`), after a
    /// failure: nginx's `max_fails=1 fail_timeout=5s`, as AliasVault uses.
    pub down_until: std::sync::atomic::AtomicU64,
    /// False while active health checks say the server is out.
    pub healthy: std::sync::atomic::AtomicBool,
}

pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router<Arc<RouteRt>>,
    pub headers: HeaderPolicy,
    /// The HTTPS port put into redirects: the configured one, or the bound
    /// one when the configuration asked for an ephemeral port (tests).
    pub redirect_port: u16,
    /// The certbot webroot served under `/.well-known/acme-challenge/`.
    pub webroot: Option<PathBuf>,
}

impl Runtime {
    /// Builds the runtime of `config`. With the `previous` runtime (a
    /// reload), a server a route keeps keeps its state: requests
    /// outstanding, marked down, taken out by health checks.
    pub fn build(
        config: Config,
        bound_https_port: Option<u16>,
        metrics: &crate::runtime::metrics::Metrics,
        previous: Option<&Runtime>,
    ) -> Runtime {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let before = previous.and_then(|p| {
                    p.router
                        .iter()
                        .find(|(_, route)| route.path == r.path)
                        .map(|(_, route)| route.clone())
                });
                let rt = RouteRt {
                    path: r.path.clone(),
                    upstream: r.upstream.clone(),
                    client: pool::client(r.connect_timeout),
                    connect_timeout: r.connect_timeout,
                    forwarded_prefix: r.forwarded_prefix.clone(),
                    websocket_timeout: r.websocket_timeout,
                    timeout: r.timeout,
                    max_body: r.max_body,
                    forwarded_for: r.forwarded_for,
                    compress: r.compress,
                    access: r.access.clone(),
                    limiter: r.rate_limit.map(Limiter::new),
                    rate_limit: r.rate_limit,
                    metrics: metrics.route(&r.path),
                    log_names: Arc::new(LogNames {
                        route: r.path.as_str().into(),
                        upstream: r.upstream.authority.as_str().into(),
                    }),
                    servers: r
                        .servers
                        .iter()
                        .map(|s| {
                            let kept = before.as_ref().and_then(|b| {
                                b.servers.iter().find(|o| o.authority == s.authority)
                            });
                            match kept {
                                Some(server) => {
                                    // Without health checks nothing would
                                    // ever bring a server back.
                                    if r.health_check.is_none() {
                                        server
                                            .healthy
                                            .store(true, std::sync::atomic::Ordering::Relaxed);
                                    }
                                    server.clone()
                                }
                                None => Arc::new(ServerRt {
                                    authority: s.authority.clone(),
                                    outstanding: Default::default(),
                                    down_until: Default::default(),
                                    healthy: std::sync::atomic::AtomicBool::new(true),
                                }),
                            }
                        })
                        .collect(),
                    balance: r.balance,
                    health_check: r.health_check.clone(),
                    next: Default::default(),
                    upgrades: r.upgrades.clone(),
                    allow_encoded_slash: r.allow_encoded_slash,
                    request_buffer: r.request_buffer,
                    client_body_timeout: r.client_body_timeout,
                };
                (r.path.clone(), r.case_insensitive, Arc::new(rt))
            })
            .collect();
        let headers = HeaderPolicy::new(&config.headers, config.deployment_mode.as_deref());
        let redirect_port = match (config.https_port, bound_https_port) {
            (0, Some(p)) => p,
            (p, _) => p,
        };
        let webroot = match &config.tls {
            TlsSettings::Files { webroot, .. } => Some(webroot.clone()),
            TlsSettings::Ephemeral => None,
        };
        Runtime {
            config: Arc::new(config),
            router: Router::with_case(routes),
            headers,
            redirect_port,
            webroot,
        }
    }
}
