//! The TOML file as written by people: a serde mirror, nothing more.
//!
//! Every table denies unknown keys (a typo such as `upstrem` is an error with
//! its line, not a silently ignored setting), and the values that are checked
//! after parsing are `Spanned` so their errors can point at them. The proxy
//! never sees these types: `config::load` turns them into `model::Config`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub http_port: Option<Spanned<i64>>,
    pub https_port: Option<Spanned<i64>>,
    pub listen_http_port: Option<Spanned<i64>>,
    pub listen_https_port: Option<Spanned<i64>>,
    pub bind: Option<Vec<Spanned<String>>>,
    pub workers: Option<Spanned<i64>>,
    pub hostname: Option<Spanned<String>>,
    pub force_https_redirect: Option<bool>,
    pub max_upload_size_mb: Option<Spanned<i64>>,
    pub deployment_mode: Option<Spanned<String>>,
    pub grace_period: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<Size>>,
    pub max_uri_bytes: Option<Spanned<Size>>,
    pub request_buffer: Option<Spanned<Size>>,
    pub client_body_timeout: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub listener: Option<Listener>,
    pub tls: Option<Tls>,
    pub acme: Option<Acme>,
    /// Spanned: a table without `redis` (and no `GATEHOUSE_REDIS_URL`)
    /// is an error at the table's line.
    pub cluster: Option<Spanned<Cluster>>,
    pub metrics: Option<Metrics>,
    pub diagnostics: Option<Diagnostics>,
    pub headers: Option<Headers>,
    /// Named server groups a route can use as `upstream = "NAME"`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamGroup>,
    #[serde(default)]
    pub route: Vec<Route>,
}

/// Connection-level settings, for both ports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub proxy_protocol: Option<bool>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub header_timeout: Option<Spanned<String>>,
    pub keepalive_timeout: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    pub max_headers: Option<Spanned<i64>>,
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// The certbot webroot served under `/.well-known/acme-challenge/`.
    pub webroot: Option<Spanned<String>>,
    /// certbot's configuration folder (`live/`, `archive/`, `accounts/`).
    pub letsencrypt: Option<Spanned<String>>,
}

/// The metrics and health listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: Option<Spanned<String>>,
    pub enabled: Option<bool>,
}

/// The opt-in diagnostic endpoint used by `gatehouse doctor`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diagnostics {
    pub token: Option<Spanned<String>>,
}

/// Built-in ACME (RFC 8555). The table's presence turns it on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    pub email: Option<Spanned<String>>,
    pub directory: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub names: Option<Vec<Spanned<String>>>,
    pub ca_roots: Option<Vec<Spanned<String>>>,
    pub eab_kid: Option<Spanned<String>>,
    pub eab_hmac_key: Option<Spanned<String>>,
}

/// Replicas sharing state through Redis (issue 14).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub redis: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub on_redis_error: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub lock_ttl: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
}

/// Response header policy, in tower-http's vocabulary: `set` gives a value
/// used when the upstream sent none, `override` always wins, `remove` drops.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub set: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default, rename = "override")]
    pub override_: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub path: Spanned<String>,
    pub upstream: Spanned<UpstreamSpec>,
    pub balance: Option<Spanned<String>>,
    pub health_check: Option<Spanned<HealthCheck>>,
    pub forwarded_prefix: Option<Spanned<String>>,
    pub websocket_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub max_body: Option<Spanned<Size>>,
    pub forwarded_for: Option<Spanned<String>>,
    pub compress: Option<bool>,
    pub rate_limit: Option<Spanned<RateLimit>>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
    pub on_deny: Option<Spanned<String>>,
    pub upgrades: Option<Vec<Spanned<String>>>,
    pub case_insensitive: Option<bool>,
    pub allow_encoded_slash: Option<bool>,
    pub admin_allowlist: Option<bool>,
    pub request_buffer: Option<Spanned<Size>>,
    pub client_body_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: i64,
}

/// `[upstreams.NAME]`: servers and how to use them, shared by routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamGroup {
    pub servers: Spanned<Vec<String>>,
    pub balance: Option<Spanned<String>>,
    pub health_check: Option<Spanned<HealthCheck>>,
}

/// Active health checks of a route's servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Option<String>,
    pub healthy: Option<i64>,
    pub unhealthy: Option<i64>,
}

/// `upstream = "http://a:1"` or `upstream = ["http://a:1", "http://b:1"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UpstreamSpec {
    One(String),
    Many(Vec<String>),
}

/// A byte size: a bare integer of bytes, or a string such as `"100M"`,
/// `"64KiB"` or `"1G"` (binary multiples, as nginx reads `100M`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(i64),
    Text(String),
}
