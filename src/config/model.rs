//! The validated configuration the proxy runs on. Built only by
//! `config::load`; never deserialized directly.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, or `None` for the built-in default.
    pub source: Option<PathBuf>,
    pub http_port: u16,
    pub https_port: u16,
    pub bind: Vec<IpAddr>,
    /// True when `bind` was not given: an address family the host lacks
    /// (IPv6 disabled in a container) is then skipped with a warning.
    pub bind_is_default: bool,
    pub workers: usize,
    pub hostname: String,
    pub force_https_redirect: bool,
    pub deployment_mode: Option<String>,
    pub grace_period: Duration,
    pub max_header_bytes: usize,
    pub tls: TlsSettings,
    pub headers: HeaderRules,
    /// Routes in file order; the router sorts them by specificity.
    pub routes: Vec<Route>,
    /// Variables that were set but belong to features not built yet.
    pub unsupported_vars: Vec<&'static str>,
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
    pub upstream: Upstream,
    pub forwarded_prefix: Option<HeaderValue>,
    pub websocket_timeout: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body: u64,
    pub forwarded_for: ForwardedFor,
    pub compress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// As written, for logs and `gatehouse check`.
    pub url: String,
    /// `host:port`, with the port always present.
    pub authority: Authority,
}
