//! The validated configuration the proxy runs on. Built only by
//! `config::load`; never deserialized directly.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;

use crate::base::cidr::Cidr;
use http::{HeaderName, HeaderValue};

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, or `None` for the built-in default.
    pub source: Option<PathBuf>,
    /// The public ports: what the world uses, put into redirects, `doctor`
    /// and `external`.
    pub http_port: u16,
    pub https_port: u16,
    /// Where Gatehouse binds when that differs from the public port (in a
    /// container: 80 and 443 behind a mapped host port, issue 11).
    pub listen_http_port: Option<u16>,
    pub listen_https_port: Option<u16>,
    pub bind: Vec<IpAddr>,
    /// True when `bind` was not given: an address family the host lacks
    /// (IPv6 disabled in a container) is then skipped with a warning.
    pub bind_is_default: bool,
    pub workers: usize,
    pub hostname: String,
    pub force_https_redirect: bool,
    pub deployment_mode: Option<String>,
    pub grace_period: Duration,
    pub log_format: LogFormat,
    pub max_header_bytes: usize,
    /// Request line limit: longer ones get 414.
    pub max_uri_bytes: usize,
    /// Peers whose `X-Forwarded-*` and PROXY headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    pub listener: ListenerSettings,
    pub tls: TlsSettings,
    /// certbot's folder: `live/HOSTNAME/{fullchain,privkey}.pem` and ours.
    pub letsencrypt_dir: PathBuf,
    /// `LETSENCRYPT_ENABLED`: serve the certbot-layout files for HOSTNAME.
    pub letsencrypt_enabled: bool,
    pub acme: Option<AcmeSettings>,
    /// `[cluster]`: replicas sharing rate limits, certificates and ACME
    /// orders through Redis (issue 14). `None`: everything stays local.
    pub cluster: Option<ClusterSettings>,
    /// The metrics/health/reload listener; `None` when disabled.
    pub metrics: Option<std::net::SocketAddr>,
    /// The secret that turns on the diagnostic endpoint (`gatehouse
    /// doctor`); `None` (the default) keeps it off.
    pub diagnostics_token: Option<String>,
    pub headers: HeaderRules,
    /// Routes in file order; the router sorts them by specificity.
    pub routes: Vec<Route>,
    /// Things worth a warning that do not stop the start (skipped tokens).
    pub warnings: Vec<String>,
}

impl Config {
    /// The port the HTTP listener binds.
    pub fn listen_http(&self) -> u16 {
        self.listen_http_port.unwrap_or(self.http_port)
    }

    /// The port the HTTPS listener binds.
    pub fn listen_https(&self) -> u16 {
        self.listen_https_port.unwrap_or(self.https_port)
    }
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub email: Option<String>,
    pub directory: String,
    pub challenge: Challenge,
    /// Names besides HOSTNAME on the certificate.
    pub extra_names: Vec<String>,
    /// Extra PEM roots to trust for the directory (a private CA, Pebble).
    pub ca_roots: Vec<PathBuf>,
    /// External Account Binding: key id and base64url HMAC key.
    pub eab: Option<(String, String)>,
}

/// `[cluster]` (issue 14).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `redis://`, `rediss://` (TLS) or `redis+unix://`, password and
    /// database number in the URL.
    pub redis: String,
    /// Put before every key and channel, so several deployments can share
    /// one Redis.
    pub key_prefix: String,
    /// A rate-limit round trip slower than this counts as Redis failing.
    pub timeout: Duration,
    pub on_redis_error: OnRedisError,
    /// A PEM CA to trust for `rediss://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How long the ACME order lock outlives a replica that stopped
    /// renewing it (a crash, a partition).
    pub lock_ttl: Duration,
    /// This replica's name in the lock and in `gatehouse cert`.
    pub name: String,
}

impl ClusterSettings {
    /// The Redis URL with any password replaced, for logs and `check`.
    pub fn redis_redacted(&self) -> String {
        redact_url(&self.redis)
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(pair) => pair,
        None => return url.to_string(),
    };
    let user = auth.split_once(':').map_or("", |(u, _)| u);
    format!("{scheme}://{user}:***@{host}")
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("redis", &self.redis_redacted())
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_redis_error", &self.on_redis_error)
            .field("ca_file", &self.ca_file)
            .field("lock_ttl", &self.lock_ttl)
            .field("name", &self.name)
            .finish()
    }
}

/// What a rate-limited request gets while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// This replica's own limiter: each replica holds clients to the
    /// limit, so the total is at most replicas × limit.
    Local,
    /// Admit without a limit.
    Allow,
    /// Refuse (503) until Redis answers again.
    Deny,
}

/// Connection limits and timeouts, applied to both ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Expect a PROXY protocol v1/v2 header from trusted peers.
    pub proxy_protocol: bool,
    pub max_connections: usize,
    /// Per client address; trusted proxies are exempt.
    pub max_connections_per_ip: usize,
    /// Time to receive a request head: from the connection's start for
    /// the first one, from its first byte for the next ones (slowloris).
    pub header_timeout: Duration,
    /// Idle time allowed between requests on a keep-alive connection (and
    /// on an HTTP/2 connection with no open request), as nginx's.
    pub keepalive_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_headers: usize,
    pub h2_max_concurrent_streams: u32,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            proxy_protocol: false,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            header_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            handshake_timeout: Duration::from_secs(10),
            max_headers: 100,
            h2_max_concurrent_streams: 128,
        }
    }
}

/// Who may use a route, and what a refused client sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// When not empty, only these ranges.
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub on_deny: OnDeny,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDeny {
    /// Served as if the route did not exist (AliasVault's admin fall-through).
    #[default]
    Fallthrough,
    Forbidden,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSettings {
    /// PEM files on disk, with AliasVault's self-signed fallback.
    Files {
        cert: PathBuf,
        key: PathBuf,
        /// The certbot webroot for `/.well-known/acme-challenge/`.
        webroot: PathBuf,
    },
    /// A self-signed certificate made at start-up and kept in memory only
    /// (`gatehouse demo`).
    Ephemeral,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Added when the upstream did not send the header.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Always replace the upstream's value.
    pub override_: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

/// `GET path` on every server each `interval`; a server is out after
/// `unhealthy` failed checks in a row and back after `healthy` good ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

/// How a route with several servers picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastOutstanding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedFor {
    /// `X-Forwarded-For` = the client address only (AliasVault #2325).
    Replace,
    /// Keep the incoming list and append the client address.
    Append,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    /// The first server; what logs and `check` name the route by.
    pub upstream: Upstream,
    /// Every server of the route (the first included), in file order.
    pub servers: Vec<Upstream>,
    pub balance: Balance,
    pub health_check: Option<HealthCheck>,
    pub forwarded_prefix: Option<HeaderValue>,
    pub websocket_timeout: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body: u64,
    /// `max_body` was set on the route itself: `MAX_UPLOAD_SIZE_MB`, the
    /// global default, does not change it.
    pub max_body_own: bool,
    pub forwarded_for: ForwardedFor,
    pub compress: bool,
    pub access: Access,
    pub rate_limit: Option<RateLimit>,
    /// `Upgrade` tokens forwarded (lower case); `websocket` by default.
    pub upgrades: Vec<String>,
    /// Match the path prefix without regard to case (ASP.NET Core does).
    pub case_insensitive: bool,
    /// Serve targets with `%2F` inside a segment (their normal form cannot
    /// be decided, so by default they are refused).
    pub allow_encoded_slash: bool,
    /// `ADMIN_IP_ALLOWLIST` restricts this route (AliasVault's admin
    /// panel; the `/admin` route when no route says so).
    pub admin_allowlist: bool,
    /// Bodies up to this size are read whole before the upstream is asked.
    pub request_buffer: u64,
    /// Longest wait between two reads of a request body (408 after it).
    pub client_body_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// As written, for logs and `gatehouse check`.
    pub url: String,
    /// `host:port`, with the port always present.
    pub authority: Authority,
}

/// A route's rate limit (GCRA): `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// GCRA's emission interval (one request's share of time) and its
    /// tolerance (the burst), as both the local and the shared limiter use
    /// them.
    pub fn gcra(&self) -> (Duration, Duration) {
        let interval = Duration::from_nanos((1e9 / self.per_second).max(1.0) as u64);
        (interval, interval.saturating_mul(self.burst.max(1)))
    }
}

/// The access log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Combined,
    Json,
    Off,
}
