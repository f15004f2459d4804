//! Configuration: the one loader used by `run`, `check` and (later) reload.
//!
//! Precedence, highest first: environment variables (process, then `.env`),
//! the TOML file, built-in defaults. The built-in default is AliasVault's
//! layout, so an AliasVault folder needs no file at all.

/// The exit status of a configuration error (`gatehouse check`, start).
pub const EXIT_CONFIG: u8 = 2;

pub mod env;
pub mod error;
pub(crate) mod file;
pub mod model;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};
use toml::Spanned;

pub use env::Env;
pub use error::ConfigError;
pub use model::{
    Access, AcmeSettings, Challenge, ClusterSettings, Config, ForwardedFor, HeaderRules,
    ListenerSettings, OnDeny, OnRedisError, Route, TlsSettings, Upstream, LETS_ENCRYPT,
    LETS_ENCRYPT_STAGING,
};

use crate::base::cidr::{self as ipr, Cidr};
use model::RateLimit;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on disk; relative paths inside it are relative to its folder.
    File(PathBuf),
    /// TOML text with a name for errors and a folder for relative paths.
    Text {
        name: PathBuf,
        text: String,
        base_dir: PathBuf,
    },
    /// AliasVault's layout, paths relative to the working directory.
    BuiltIn,
}

impl Source {
    /// `--config PATH` if given, else `gatehouse.toml` in the working
    /// directory if present, else the built-in default.
    pub fn discover(explicit: Option<&Path>) -> Source {
        match explicit {
            Some(p) => Source::File(p.to_path_buf()),
            None if Path::new("gatehouse.toml").is_file() => {
                Source::File(PathBuf::from("gatehouse.toml"))
            }
            None => Source::BuiltIn,
        }
    }
}

pub const DEFAULT_MAX_UPLOAD_MB: u64 = 100;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Short enough that a stopped container's 503 comes quickly (Caddy uses
/// 3 s too, issue 11 point 4); a compose network connects in microseconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle limit of a WebSocket on a route that sets none. nginx's 60 s
/// `proxy_read_timeout` silently kills idle sockets; an hour does not.
pub const DEFAULT_WEBSOCKET_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_URI_BYTES: usize = 16 * 1024;
pub const DEFAULT_REQUEST_BUFFER: u64 = 64 * 1024;
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a route inherits from the top level unless it sets its own.
struct RouteDefaults {
    max_body: u64,
    request_buffer: u64,
    client_body_timeout: Duration,
}

/// AliasVault's install folder's certificate paths (relative to it).
const INSTALL_PATHS: &str = r#"
[tls]
cert = "certificates/ssl/cert.pem"
key = "certificates/ssl/key.pem"
webroot = "certificates/letsencrypt/www"
"#;

/// The same inside a container, at the paths AliasVault's compose file
/// mounts (`./certificates/ssl:/etc/nginx/ssl`, `./certificates/letsencrypt:
/// /etc/nginx/ssl-letsencrypt`, `./certificates/letsencrypt/www:/var/www/certbot`).
const CONTAINER_PATHS: &str = r#"
[tls]
cert = "/etc/nginx/ssl/cert.pem"
key = "/etc/nginx/ssl/key.pem"
webroot = "/var/www/certbot"
letsencrypt = "/etc/nginx/ssl-letsencrypt"
"#;

/// AliasVault's three services, as its nginx routes them.
const ROUTES: &str = r#"
[[route]]
path = "/admin"
upstream = "http://admin:3002"
forwarded_prefix = "/admin/"
websocket_timeout = "24h"
case_insensitive = true
admin_allowlist = true

[[route]]
path = "/api"
upstream = "http://api:3001"
case_insensitive = true

[[route]]
path = "/"
upstream = "http://client:3000"
"#;

/// Loads, validates and layers the configuration. The only loader.
pub fn load(source: &Source, env: &Env) -> Result<Config, ConfigError> {
    let (name, text, base_dir) = match source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (path.clone(), text, base)
        }
        Source::Text {
            name,
            text,
            base_dir,
        } => (name.clone(), text.clone(), base_dir.clone()),
        // The image sets GATEHOUSE_LAYOUT=container: AliasVault's container
        // paths, where its compose file mounts the certificate folders.
        Source::BuiltIn
            if env
                .get("GATEHOUSE_LAYOUT")
                .is_some_and(|v| v.value.trim() == "container") =>
        {
            (
                PathBuf::from("<built-in default>"),
                format!("{CONTAINER_PATHS}{ROUTES}"),
                PathBuf::from("/"),
            )
        }
        Source::BuiltIn => (
            PathBuf::from("<built-in default>"),
            format!("{INSTALL_PATHS}{ROUTES}"),
            PathBuf::from("."),
        ),
    };
    let parsed: file::File =
        toml::from_str(&text).map_err(|e| ConfigError::toml(&name, &text, &e))?;
    let mut cfg = Builder {
        name: &name,
        text: &text,
        base_dir: &base_dir,
        redis_from_env: env
            .get("GATEHOUSE_REDIS_URL")
            .is_some_and(|v| !v.value.trim().is_empty()),
    }
    .build(parsed)?;
    if !matches!(source, Source::BuiltIn) {
        cfg.source = Some(name);
    }
    apply_env(&mut cfg, env)?;
    Ok(cfg)
}

struct Builder<'a> {
    name: &'a Path,
    text: &'a str,
    base_dir: &'a Path,
    /// `GATEHOUSE_REDIS_URL` is set: a `[cluster]` table may leave out
    /// `redis`.
    redis_from_env: bool,
}

impl Builder<'_> {
    fn err(&self, span: Range<usize>, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::at(self.name, self.text, span, key, msg)
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// A setting that names one of a few `words` (the first is the
    /// default when it is absent).
    fn choice<T: Copy>(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        words: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        match v {
            None => Ok(words[0].1),
            Some(v) => word(v.get_ref(), words).map_err(|m| self.err(v.span(), key, m)),
        }
    }

    fn port(&self, v: &Spanned<i64>, key: &str) -> Result<u16, ConfigError> {
        u16::try_from(*v.get_ref())
            .map_err(|_| self.err(v.span(), key, "expected a port number from 0 to 65535"))
    }

    fn duration(&self, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        parse_duration(v.get_ref()).map_err(|m| self.err(v.span(), key, m))
    }

    fn build(&self, f: file::File) -> Result<Config, ConfigError> {
        let http_port = match &f.http_port {
            Some(v) => self.port(v, "http_port")?,
            None => 80,
        };
        let https_port = match &f.https_port {
            Some(v) => self.port(v, "https_port")?,
            None => 443,
        };
        let listen_http_port = f
            .listen_http_port
            .as_ref()
            .map(|v| self.port(v, "listen_http_port"))
            .transpose()?;
        let listen_https_port = f
            .listen_https_port
            .as_ref()
            .map(|v| self.port(v, "listen_https_port"))
            .transpose()?;
        let (bind, bind_is_default) = match &f.bind {
            None => (
                vec![
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                ],
                true,
            ),
            Some(list) => {
                let mut out = Vec::new();
                for a in list {
                    let ip = a
                        .get_ref()
                        .trim_matches(['[', ']'])
                        .parse::<IpAddr>()
                        .map_err(|_| {
                            self.err(
                                a.span(),
                                "bind",
                                "expected an IP address such as \"127.0.0.1\" or \"::\"",
                            )
                        })?;
                    if !out.contains(&ip) {
                        out.push(ip);
                    }
                }
                if out.is_empty() {
                    return Err(ConfigError::at(
                        self.name,
                        self.text,
                        0..0,
                        "bind",
                        "needs at least one address",
                    ));
                }
                (out, false)
            }
        };
        let workers = match &f.workers {
            Some(v) => usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| {
                    self.err(
                        v.span(),
                        "workers",
                        "expected a number of threads from 1 to 1024",
                    )
                })?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let hostname = match &f.hostname {
            Some(v) => {
                validate_hostname(v.get_ref()).map_err(|m| self.err(v.span(), "hostname", m))?;
                v.get_ref().clone()
            }
            None => "localhost".to_string(),
        };
        // MAX_UPLOAD_SIZE_MB is the global default; a route's own
        // `max_body` still wins over it.
        // The global default of `max_body` (MAX_UPLOAD_SIZE_MB overrides
        // it with the other variables, in `apply_env`).
        let max_upload = match &f.max_upload_size_mb {
            Some(v) => mib(*v.get_ref()).ok_or_else(|| {
                self.err(
                    v.span(),
                    "max_upload_size_mb",
                    "expected a positive number of megabytes",
                )
            })?,
            None => DEFAULT_MAX_UPLOAD_MB * 1024 * 1024,
        };
        let deployment_mode = match &f.deployment_mode {
            Some(v) => {
                HeaderValue::from_str(v.get_ref()).map_err(|_| {
                    self.err(v.span(), "deployment_mode", "not a valid header value")
                })?;
                Some(v.get_ref().clone())
            }
            None => None,
        };
        let grace_period = match &f.grace_period {
            Some(v) => self.duration(v, "grace_period")?,
            None => DEFAULT_GRACE,
        };
        let max_header_bytes = match &f.max_header_bytes {
            Some(v) => {
                let n = parse_size(v.get_ref())
                    .map_err(|m| self.err(v.span(), "max_header_bytes", m))?;
                // Below 8 KiB ordinary browser heads (cookies) would be
                // refused; above 16 MiB a head is an attack.
                if !(8192..=16 * 1024 * 1024).contains(&n) {
                    return Err(self.err(
                        v.span(),
                        "max_header_bytes",
                        "expected from 8KiB to 16MiB",
                    ));
                }
                n as usize
            }
            None => DEFAULT_MAX_HEADER_BYTES,
        };
        let t = f.tls.unwrap_or_default();
        let get = |v: &Option<Spanned<String>>, default: &str| {
            self.path(v.as_ref().map_or(default, |s| s.get_ref().as_str()))
        };
        let tls = TlsSettings::Files {
            cert: get(&t.cert, "certificates/ssl/cert.pem"),
            key: get(&t.key, "certificates/ssl/key.pem"),
            webroot: get(&t.webroot, "certificates/letsencrypt/www"),
        };
        let letsencrypt_dir = get(&t.letsencrypt, "certificates/letsencrypt");
        let acme = f.acme.map(|a| self.acme(a)).transpose()?;
        let cluster = f.cluster.map(|c| self.cluster(c)).transpose()?;
        let log_format = self.choice(f.log_format.as_ref(), "log_format", LOG_FORMATS)?;
        let m = f.metrics.unwrap_or_default();
        let metrics = match (m.enabled.unwrap_or(true), &m.listen) {
            (false, _) => None,
            (true, None) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9090))),
            (true, Some(v)) => Some(v.get_ref().parse().map_err(|_| {
                self.err(
                    v.span(),
                    "listen",
                    "expected an address such as \"127.0.0.1:9090\"",
                )
            })?),
        };
        let diagnostics_token = match f.diagnostics.and_then(|d| d.token) {
            None => None,
            Some(t) => Some(
                validate_diagnostics_token(t.get_ref())
                    .map_err(|m| self.err(t.span(), "token", m))?,
            ),
        };
        let headers = self.headers(f.headers.unwrap_or_default())?;
        // A file is strict: an invalid range is an error with its line. The
        // variable keeps AliasVault's skip-with-warning rule.
        let trusted_proxies = match &f.trusted_proxies {
            None => ipr::private_ranges(),
            Some(list) => self.cidrs(list, "trusted_proxies")?,
        };
        let max_uri_bytes = match &f.max_uri_bytes {
            Some(v) => {
                let n =
                    parse_size(v.get_ref()).map_err(|m| self.err(v.span(), "max_uri_bytes", m))?;
                if !(256..=max_header_bytes as u64).contains(&n) {
                    return Err(self.err(
                        v.span(),
                        "max_uri_bytes",
                        "expected from 256 bytes to max_header_bytes",
                    ));
                }
                n as usize
            }
            None => DEFAULT_MAX_URI_BYTES.min(max_header_bytes),
        };
        let defaults = RouteDefaults {
            max_body: max_upload,
            request_buffer: match &f.request_buffer {
                Some(v) => self.request_buffer(v)?,
                None => DEFAULT_REQUEST_BUFFER,
            },
            client_body_timeout: match &f.client_body_timeout {
                Some(v) => self.duration(v, "client_body_timeout")?,
                None => DEFAULT_CLIENT_BODY_TIMEOUT,
            },
        };
        let listener = self.listener(f.listener.unwrap_or_default())?;
        let mut routes: Vec<Route> = Vec::new();
        for r in &f.route {
            let route = self.route(r, &defaults, &f.upstreams)?;
            if routes.iter().any(|x| x.path == route.path) {
                return Err(self.err(
                    r.path.span(),
                    "path",
                    format!("route {:?} is defined twice", route.path),
                ));
            }
            routes.push(route);
        }
        Ok(Config {
            source: None,
            http_port,
            https_port,
            listen_http_port,
            listen_https_port,
            bind,
            bind_is_default,
            workers,
            hostname,
            force_https_redirect: f.force_https_redirect.unwrap_or(true),
            deployment_mode,
            grace_period,
            log_format,
            max_header_bytes,
            max_uri_bytes,
            trusted_proxies,
            listener,
            tls,
            letsencrypt_dir,
            letsencrypt_enabled: false,
            acme,
            cluster,
            metrics,
            diagnostics_token,
            headers,
            routes,
            warnings: Vec::new(),
        })
    }

    fn request_buffer(&self, v: &Spanned<file::Size>) -> Result<u64, ConfigError> {
        let n = parse_size(v.get_ref()).map_err(|m| self.err(v.span(), "request_buffer", m))?;
        if n > 64 * 1024 * 1024 {
            return Err(self.err(v.span(), "request_buffer", "expected at most 64MiB"));
        }
        Ok(n)
    }

    fn acme(&self, a: file::Acme) -> Result<AcmeSettings, ConfigError> {
        let directory = match &a.directory {
            None => LETS_ENCRYPT.to_string(),
            Some(v) => {
                acme_directory(v.get_ref()).map_err(|m| self.err(v.span(), "directory", m))?
            }
        };
        let challenge = match &a.challenge {
            None => Challenge::Http01,
            Some(v) => {
                word(v.get_ref(), CHALLENGES).map_err(|m| self.err(v.span(), "challenge", m))?
            }
        };
        let mut extra_names = Vec::new();
        for n in a.names.iter().flatten() {
            validate_hostname(n.get_ref()).map_err(|m| self.err(n.span(), "names", m))?;
            extra_names.push(n.get_ref().clone());
        }
        if let Some(e) = &a.email {
            if !e.get_ref().contains('@') {
                return Err(self.err(e.span(), "email", "expected an email address"));
            }
        }
        let eab = match (&a.eab_kid, &a.eab_hmac_key) {
            (None, None) => None,
            (Some(k), Some(h)) => {
                let valid = !h.get_ref().is_empty()
                    && h.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
                if !valid {
                    return Err(self.err(h.span(), "eab_hmac_key", "expected a base64url key"));
                }
                Some((k.get_ref().clone(), h.get_ref().clone()))
            }
            (Some(k), None) => {
                return Err(self.err(k.span(), "eab_kid", "eab_hmac_key is needed with eab_kid"))
            }
            (None, Some(h)) => {
                return Err(self.err(
                    h.span(),
                    "eab_hmac_key",
                    "eab_kid is needed with eab_hmac_key",
                ))
            }
        };
        Ok(AcmeSettings {
            email: a.email.map(|e| e.into_inner()),
            directory,
            challenge,
            extra_names,
            ca_roots: a
                .ca_roots
                .iter()
                .flatten()
                .map(|p| self.path(p.get_ref()))
                .collect(),
            eab,
        })
    }

    fn cluster(&self, table: Spanned<file::Cluster>) -> Result<ClusterSettings, ConfigError> {
        let span = table.span();
        let c = table.into_inner();
        let redis = match &c.redis {
            Some(v) => redis_url(v.get_ref()).map_err(|m| self.err(v.span(), "redis", m))?,
            // Filled in by `GATEHOUSE_REDIS_URL` (checked in `apply_env`).
            None if self.redis_from_env => String::new(),
            None => {
                return Err(self.err(
                    span,
                    "redis",
                    "[cluster] needs redis = \"redis://host:6379/0\" (or GATEHOUSE_REDIS_URL)",
                ))
            }
        };
        let key_prefix = match &c.key_prefix {
            None => DEFAULT_KEY_PREFIX.to_string(),
            Some(v) => self.visible(v, "key_prefix", 64)?,
        };
        let timeout = match &c.timeout {
            None => DEFAULT_REDIS_TIMEOUT,
            Some(v) => self.duration_within(
                v,
                "timeout",
                Duration::from_millis(1),
                Duration::from_secs(10),
                "expected from 1ms to 10s",
            )?,
        };
        let lock_ttl = match &c.lock_ttl {
            None => DEFAULT_LOCK_TTL,
            Some(v) => self.duration_within(
                v,
                "lock_ttl",
                Duration::from_secs(3),
                Duration::from_secs(3600),
                "expected from 3s to 1h",
            )?,
        };
        let name = match &c.name {
            None => default_replica_name(),
            Some(v) => self.visible(v, "name", 128)?,
        };
        Ok(ClusterSettings {
            redis,
            key_prefix,
            timeout,
            on_redis_error: self.choice(
                c.on_redis_error.as_ref(),
                "on_redis_error",
                ON_REDIS_ERROR,
            )?,
            ca_file: c.ca_file.as_ref().map(|p| self.path(p.get_ref())),
            lock_ttl,
            name,
        })
    }

    /// A name that goes into Redis keys and log lines: 1 to `max` visible
    /// ASCII characters.
    fn visible(&self, v: &Spanned<String>, key: &str, max: usize) -> Result<String, ConfigError> {
        let t = v.get_ref();
        if t.is_empty() || t.len() > max || t.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(self.err(
                v.span(),
                key,
                format!("expected 1 to {max} visible ASCII characters"),
            ));
        }
        Ok(t.clone())
    }

    fn duration_within(
        &self,
        v: &Spanned<String>,
        key: &str,
        min: Duration,
        max: Duration,
        msg: &str,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(v, key)?;
        if d < min || d > max {
            return Err(self.err(v.span(), key, msg));
        }
        Ok(d)
    }

    fn cidrs(&self, list: &[Spanned<String>], key: &str) -> Result<Vec<Cidr>, ConfigError> {
        list.iter()
            .map(|v| {
                v.get_ref()
                    .parse::<Cidr>()
                    .map_err(|m| self.err(v.span(), key, m))
            })
            .collect()
    }

    fn listener(&self, l: file::Listener) -> Result<ListenerSettings, ConfigError> {
        let d = ListenerSettings::default();
        let count = |v: &Option<Spanned<i64>>, key: &str, default: usize, max: usize| match v {
            None => Ok(default),
            Some(v) => usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    self.err(v.span(), key, format!("expected a number from 1 to {max}"))
                }),
        };
        let dur = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
            None => Ok(default),
            Some(v) => self.duration(v, key),
        };
        Ok(ListenerSettings {
            proxy_protocol: l.proxy_protocol.unwrap_or(false),
            max_connections: count(
                &l.max_connections,
                "max_connections",
                d.max_connections,
                10_000_000,
            )?,
            max_connections_per_ip: count(
                &l.max_connections_per_ip,
                "max_connections_per_ip",
                d.max_connections_per_ip,
                10_000_000,
            )?,
            header_timeout: dur(&l.header_timeout, "header_timeout", d.header_timeout)?,
            keepalive_timeout: dur(
                &l.keepalive_timeout,
                "keepalive_timeout",
                d.keepalive_timeout,
            )?,
            handshake_timeout: dur(
                &l.handshake_timeout,
                "handshake_timeout",
                d.handshake_timeout,
            )?,
            max_headers: count(&l.max_headers, "max_headers", d.max_headers, 10_000)?,
            h2_max_concurrent_streams: count(
                &l.h2_max_concurrent_streams,
                "h2_max_concurrent_streams",
                d.h2_max_concurrent_streams as usize,
                100_000,
            )? as u32,
        })
    }

    fn headers(&self, h: file::Headers) -> Result<HeaderRules, ConfigError> {
        let pair = |k: &Spanned<String>, v: &Spanned<String>, table: &str| {
            let name = HeaderName::from_str(k.get_ref()).map_err(|_| {
                self.err(
                    k.span(),
                    table,
                    format!("{:?} is not a valid header name", k.get_ref()),
                )
            })?;
            let value = HeaderValue::from_str(v.get_ref())
                .map_err(|_| self.err(v.span(), k.get_ref(), "not a valid header value"))?;
            Ok::<_, ConfigError>((name, value))
        };
        let mut rules = HeaderRules::default();
        for (k, v) in &h.set {
            rules.set.push(pair(k, v, "headers.set")?);
        }
        for (k, v) in &h.override_ {
            rules.override_.push(pair(k, v, "headers.override")?);
        }
        for k in &h.remove {
            rules
                .remove
                .push(HeaderName::from_str(k.get_ref()).map_err(|_| {
                    self.err(
                        k.span(),
                        "headers.remove",
                        format!("{:?} is not a valid header name", k.get_ref()),
                    )
                })?);
        }
        Ok(rules)
    }

    fn route(
        &self,
        r: &file::Route,
        defaults: &RouteDefaults,
        groups: &std::collections::BTreeMap<String, file::UpstreamGroup>,
    ) -> Result<Route, ConfigError> {
        // `upstream = "NAME"` names an `[upstreams.NAME]` group, whose
        // balance and health check apply unless the route sets its own.
        let group = match r.upstream.get_ref() {
            file::UpstreamSpec::One(u) if !u.contains([':', '/']) => {
                Some(groups.get(u.as_str()).ok_or_else(|| {
                    self.err(
                        r.upstream.span(),
                        "upstream",
                        format!("no [upstreams.{u}] table and not an http:// URL"),
                    )
                })?)
            }
            _ => None,
        };
        let balance_spec = r
            .balance
            .as_ref()
            .or(group.and_then(|g| g.balance.as_ref()));
        let health_spec = r
            .health_check
            .as_ref()
            .or(group.and_then(|g| g.health_check.as_ref()));
        let servers_span = group.map_or(r.upstream.span(), |g| g.servers.span());
        let path = r.path.get_ref();
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(self.err(
                r.path.span(),
                "path",
                "a route path starts with '/' and has no query",
            ));
        }
        let urls: Vec<&str> = match (group, r.upstream.get_ref()) {
            (Some(g), _) => g.servers.get_ref().iter().map(String::as_str).collect(),
            (None, file::UpstreamSpec::One(u)) => vec![u.as_str()],
            (None, file::UpstreamSpec::Many(list)) => list.iter().map(String::as_str).collect(),
        };
        if urls.is_empty() {
            return Err(self.err(
                servers_span.clone(),
                "upstream",
                "needs at least one server",
            ));
        }
        let servers = urls
            .iter()
            .map(|u| parse_upstream(u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| self.err(servers_span.clone(), "upstream", m))?;
        let upstream = servers[0].clone();
        let health_check = match health_spec {
            None => None,
            Some(v) => {
                let h = v.get_ref();
                let bad = |m: &str| self.err(v.span(), "health_check", m.to_string());
                let path = h
                    .path
                    .parse::<http::uri::PathAndQuery>()
                    .ok()
                    .filter(|p| p.as_str().starts_with('/'))
                    .ok_or_else(|| bad("path must start with '/'"))?;
                let interval = match &h.interval {
                    Some(i) => parse_duration(i).map_err(|m| bad(&m))?,
                    None => Duration::from_secs(5),
                };
                if interval < Duration::from_millis(50) {
                    return Err(bad("interval must be at least 50ms"));
                }
                let count = |v: Option<i64>| {
                    u32::try_from(v.unwrap_or(2))
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| bad("healthy and unhealthy are counts from 1 to 100"))
                };
                Some(model::HealthCheck {
                    path,
                    interval,
                    healthy: count(h.healthy)?,
                    unhealthy: count(h.unhealthy)?,
                })
            }
        };
        let balance = self.choice(balance_spec, "balance", BALANCES)?;
        let forwarded_prefix =
            match &r.forwarded_prefix {
                Some(v) => Some(HeaderValue::from_str(v.get_ref()).map_err(|_| {
                    self.err(v.span(), "forwarded_prefix", "not a valid header value")
                })?),
                None => None,
            };
        let opt_dur = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
            Some(v) => self.duration(v, key),
            None => Ok(default),
        };
        let (max_body, max_body_own) = match &r.max_body {
            Some(v) => (
                parse_size(v.get_ref()).map_err(|m| self.err(v.span(), "max_body", m))?,
                true,
            ),
            None => (defaults.max_body, false),
        };
        let forwarded_for =
            self.choice(r.forwarded_for.as_ref(), "forwarded_for", FORWARDED_FOR)?;
        let rate_limit = match &r.rate_limit {
            None => None,
            Some(v) => {
                let rl = v.get_ref();
                if !(rl.per_second.is_finite()
                    && rl.per_second > 0.0
                    && rl.per_second <= 1e6
                    && (1..=1_000_000).contains(&rl.burst))
                {
                    return Err(self.err(
                        v.span(),
                        "rate_limit",
                        "expected per_second > 0 and burst from 1 to 1000000",
                    ));
                }
                Some(RateLimit {
                    per_second: rl.per_second,
                    burst: rl.burst as u32,
                })
            }
        };
        // A protocol name is token ["/" token] (RFC 9110 §7.8). RFC 9113
        // §3.1 removed h2c; tunnelling it would let requests
        // inside the tunnel skip every route rule (issue 10 point 2).
        let upgrades = match &r.upgrades {
            None => vec!["websocket".to_string()],
            Some(list) => {
                let mut out = Vec::new();
                for t in list {
                    let token = t.get_ref().trim().to_ascii_lowercase();
                    if token.starts_with("h2c") {
                        return Err(self.err(
                            t.span(),
                            "upgrades",
                            "h2c cannot be tunnelled (RFC 9113 removed it)",
                        ));
                    }
                    if token.is_empty()
                        || !token
                            .bytes()
                            .all(|b| crate::base::header_names::is_tchar(b) || b == b'/')
                    {
                        return Err(self.err(
                            t.span(),
                            "upgrades",
                            "expected a protocol token such as \"websocket\"",
                        ));
                    }
                    out.push(token);
                }
                out
            }
        };
        let access = Access {
            allow: r
                .allow
                .as_deref()
                .map(|l| self.cidrs(l, "allow"))
                .transpose()?
                .unwrap_or_default(),
            deny: r
                .deny
                .as_deref()
                .map(|l| self.cidrs(l, "deny"))
                .transpose()?
                .unwrap_or_default(),
            on_deny: self.choice(r.on_deny.as_ref(), "on_deny", ON_DENY)?,
        };
        Ok(Route {
            path: path.clone(),
            upstream,
            servers,
            balance,
            health_check,
            forwarded_prefix,
            websocket_timeout: opt_dur(
                &r.websocket_timeout,
                "websocket_timeout",
                DEFAULT_WEBSOCKET_TIMEOUT,
            )?,
            timeout: opt_dur(&r.timeout, "timeout", DEFAULT_TIMEOUT)?,
            connect_timeout: opt_dur(
                &r.connect_timeout,
                "connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            max_body,
            max_body_own,
            forwarded_for,
            compress: r.compress.unwrap_or(true),
            access,
            rate_limit,
            upgrades,
            case_insensitive: r.case_insensitive.unwrap_or(false),
            allow_encoded_slash: r.allow_encoded_slash.unwrap_or(false),
            admin_allowlist: r.admin_allowlist.unwrap_or(false),
            request_buffer: match &r.request_buffer {
                Some(v) => self.request_buffer(v)?,
                None => defaults.request_buffer,
            },
            client_body_timeout: opt_dur(
                &r.client_body_timeout,
                "client_body_timeout",
                defaults.client_body_timeout,
            )?,
        })
    }
}

const DEFAULT_KEY_PREFIX: &str = "gatehouse:";
/// A rate-limit decision waits at most this long for Redis (issue 14).
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(60);

/// `redis` of `[cluster]` or `GATEHOUSE_REDIS_URL`: parsed as the client
/// will parse it, so a URL it would refuse at start is a config error.
fn redis_url(v: &str) -> Result<String, String> {
    let v = v.trim();
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| v.starts_with(s));
    if !scheme_ok {
        return Err("expected a redis://, rediss:// or redis+unix:// URL".into());
    }
    redis::Client::open(v).map_err(|e| format!("not a Redis URL: {e}"))?;
    Ok(v.to_string())
}

/// This replica's default name: the host name (a container's or a
/// Kubernetes pod's own) and the process id, unique among replicas.
fn default_replica_name() -> String {
    format!(
        "{}-{}",
        own_hostname().unwrap_or_else(|| "gatehouse".into()),
        std::process::id()
    )
}

/// `directory` of `[acme]` or `GATEHOUSE_ACME_DIRECTORY`.
fn acme_directory(v: &str) -> Result<String, &'static str> {
    match v.trim() {
        "production" | "letsencrypt" => Ok(LETS_ENCRYPT.to_string()),
        "staging" => Ok(LETS_ENCRYPT_STAGING.to_string()),
        url if url.starts_with("https://") && url.parse::<http::Uri>().is_ok() => {
            Ok(url.to_string())
        }
        _ => Err("expected an https:// directory URL, \"production\" or \"staging\""),
    }
}

/// The words of each setting that names one of a few choices; the first
/// is the default.
const LOG_FORMATS: &[(&str, model::LogFormat)] = &[
    ("combined", model::LogFormat::Combined),
    ("json", model::LogFormat::Json),
    ("off", model::LogFormat::Off),
];
const BALANCES: &[(&str, model::Balance)] = &[
    ("round_robin", model::Balance::RoundRobin),
    ("least_outstanding", model::Balance::LeastOutstanding),
];
const FORWARDED_FOR: &[(&str, ForwardedFor)] = &[
    ("replace", ForwardedFor::Replace),
    ("append", ForwardedFor::Append),
];
const ON_DENY: &[(&str, OnDeny)] = &[
    ("fallthrough", OnDeny::Fallthrough),
    ("forbidden", OnDeny::Forbidden),
];
const ON_REDIS_ERROR: &[(&str, OnRedisError)] = &[
    ("local", OnRedisError::Local),
    ("allow", OnRedisError::Allow),
    ("deny", OnRedisError::Deny),
];
/// `challenge` of `[acme]` or `GATEHOUSE_ACME_CHALLENGE`.
const CHALLENGES: &[(&str, Challenge)] = &[
    ("http-01", Challenge::Http01),
    ("tls-alpn-01", Challenge::TlsAlpn01),
];

/// The choice `v` names among `words`, or a message listing them.
fn word<T: Copy>(v: &str, words: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, t)) = words.iter().find(|(w, _)| *w == v.trim()) {
        return Ok(*t);
    }
    let names: Vec<String> = words.iter().map(|(w, _)| format!("\"{w}\"")).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            Err(format!("expected {} or {last}", rest.join(", ")))
        }
        _ => Err(format!("expected {}", names.join(""))),
    }
}

/// Built-in ACME from the environment alone (a container's `.env`, issue
/// 11): `GATEHOUSE_ACME=true` turns it on without an `[acme]` table, the
/// other variables override the table's keys.
fn apply_acme_env(cfg: &mut Config, env: &Env) -> Result<(), ConfigError> {
    if let Some(v) = env.get("GATEHOUSE_ACME") {
        match parse_bool(&v.value) {
            Some(true) if cfg.acme.is_none() => {
                cfg.acme = Some(AcmeSettings {
                    email: None,
                    directory: LETS_ENCRYPT.to_string(),
                    challenge: Challenge::Http01,
                    extra_names: Vec::new(),
                    ca_roots: Vec::new(),
                    eab: None,
                })
            }
            Some(true) => {}
            Some(false) => cfg.acme = None,
            None => {
                return Err(ConfigError::var(
                    "GATEHOUSE_ACME",
                    v,
                    "expected true or false",
                ))
            }
        }
    }
    let Some(acme) = cfg.acme.as_mut() else {
        return Ok(());
    };
    if let Some(v) = env.get("GATEHOUSE_ACME_EMAIL") {
        let e = v.value.trim();
        acme.email = (!e.is_empty()).then(|| e.to_string());
    }
    if let Some(v) = env.get("GATEHOUSE_ACME_DIRECTORY") {
        acme.directory = acme_directory(&v.value)
            .map_err(|m| ConfigError::var("GATEHOUSE_ACME_DIRECTORY", v, m))?;
    }
    if let Some(v) = env.get("GATEHOUSE_ACME_CHALLENGE") {
        acme.challenge = word(&v.value, CHALLENGES)
            .map_err(|m| ConfigError::var("GATEHOUSE_ACME_CHALLENGE", v, m))?;
    }
    if let Some(v) = env.get("GATEHOUSE_ACME_CA_ROOTS") {
        acme.ca_roots = v
            .value
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
    }
    Ok(())
}

/// `GATEHOUSE_REDIS_URL` turns the cluster on without a `[cluster]` table
/// (a container's `.env`), or replaces the table's `redis`.
fn apply_cluster_env(cfg: &mut Config, env: &Env) -> Result<(), ConfigError> {
    let Some(v) = env
        .get("GATEHOUSE_REDIS_URL")
        .filter(|v| !v.value.trim().is_empty())
    else {
        return Ok(());
    };
    let redis = redis_url(&v.value).map_err(|m| ConfigError::var("GATEHOUSE_REDIS_URL", v, m))?;
    match cfg.cluster.as_mut() {
        Some(c) => c.redis = redis,
        None => {
            cfg.cluster = Some(ClusterSettings {
                redis,
                key_prefix: DEFAULT_KEY_PREFIX.to_string(),
                timeout: DEFAULT_REDIS_TIMEOUT,
                on_redis_error: OnRedisError::Local,
                ca_file: None,
                lock_ttl: DEFAULT_LOCK_TTL,
                name: default_replica_name(),
            })
        }
    }
    Ok(())
}

/// The machine's own host name (in a container: the container's).
fn own_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Environment variables override the file (AliasVault's `.env` names).
fn apply_env(cfg: &mut Config, env: &Env) -> Result<(), ConfigError> {
    // MAX_UPLOAD_SIZE_MB is the global default; a route's own `max_body`
    // still wins over it.
    if let Some(v) = env.get("MAX_UPLOAD_SIZE_MB") {
        let limit = v
            .value
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(mib)
            .ok_or_else(|| {
                ConfigError::var(
                    "MAX_UPLOAD_SIZE_MB",
                    v,
                    "expected a positive whole number of megabytes",
                )
            })?;
        for route in cfg.routes.iter_mut().filter(|r| !r.max_body_own) {
            route.max_body = limit;
        }
    }
    if let Some(v) = env.get("HTTP_PORT") {
        cfg.http_port = env_port(v, "HTTP_PORT")?;
    }
    if let Some(v) = env.get("HTTPS_PORT") {
        cfg.https_port = env_port(v, "HTTPS_PORT")?;
    }
    if let Some(v) = env.get("GATEHOUSE_LISTEN_HTTP_PORT") {
        cfg.listen_http_port = Some(env_port(v, "GATEHOUSE_LISTEN_HTTP_PORT")?);
    }
    if let Some(v) = env.get("GATEHOUSE_LISTEN_HTTPS_PORT") {
        cfg.listen_https_port = Some(env_port(v, "GATEHOUSE_LISTEN_HTTPS_PORT")?);
    }
    if let Some(v) = env.get("FORCE_HTTPS_REDIRECT") {
        cfg.force_https_redirect = parse_bool(&v.value)
            .ok_or_else(|| ConfigError::var("FORCE_HTTPS_REDIRECT", v, "expected true or false"))?;
    }
    if let Some(v) = env.get("HOSTNAME") {
        // AliasVault treats an empty HOSTNAME as localhost.
        let h = v.value.trim();
        if h.is_empty() {
            cfg.hostname = "localhost".into();
        } else if v.origin == env::Origin::Process && own_hostname().as_deref() == Some(h) {
            // Docker sets HOSTNAME to the container's id when `.env` does
            // not set it: that is not a name anyone reaches the service by,
            // so no certificate is made for it (issue 11 point 3).
            cfg.hostname = "localhost".into();
            cfg.warnings.push(format!(
                "HOSTNAME {h:?} is this machine's (container's) own host name, not set by .env: using \"localhost\"; set HOSTNAME in .env"
            ));
        } else {
            validate_hostname(h).map_err(|m| ConfigError::var("HOSTNAME", v, m))?;
            cfg.hostname = h.to_string();
        }
    }
    if let Some(v) = env.get("DEPLOYMENT_MODE") {
        HeaderValue::from_str(&v.value)
            .map_err(|_| ConfigError::var("DEPLOYMENT_MODE", v, "not a valid header value"))?;
        cfg.deployment_mode = (!v.value.is_empty()).then(|| v.value.clone());
    }
    if let Some(v) = env.get("GATEHOUSE_WORKERS") {
        cfg.workers = v
            .value
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                ConfigError::var(
                    "GATEHOUSE_WORKERS",
                    v,
                    "expected a number of threads from 1 to 1024",
                )
            })?;
    }
    if let Some(v) = env.get("GATEHOUSE_DIAGNOSTICS_TOKEN") {
        cfg.diagnostics_token = match v.value.trim() {
            "" => None,
            t => Some(
                validate_diagnostics_token(t)
                    .map_err(|m| ConfigError::var("GATEHOUSE_DIAGNOSTICS_TOKEN", v, m))?,
            ),
        };
    }
    if let Some(v) = env.get("TRUSTED_PROXIES") {
        let (list, bad) = ipr::trusted_proxies_from_env(&v.value);
        for token in bad {
            cfg.warnings.push(format!(
                "{}: TRUSTED_PROXIES: skipping invalid entry {token:?}",
                v.origin
            ));
        }
        cfg.trusted_proxies = list;
    }
    if let Some(v) = env.get("ADMIN_IP_ALLOWLIST") {
        let (allow, bad) = ipr::admin_allowlist_from_env(&v.value);
        for token in &bad {
            cfg.warnings.push(format!(
                "{}: ADMIN_IP_ALLOWLIST: skipping invalid entry {token:?}",
                v.origin
            ));
        }
        if let ipr::Allowlist::Only(ranges) = allow {
            if ranges == ipr::loopback_ranges() {
                cfg.warnings.push(format!(
                    "{}: ADMIN_IP_ALLOWLIST has no valid entry: the admin route is denied to everyone but loopback",
                    v.origin
                ));
            }
            // The routes marked `admin_allowlist = true`; a file that marks
            // none keeps AliasVault's meaning, the `/admin` route.
            let marked = cfg.routes.iter().any(|r| r.admin_allowlist);
            let mut applied = false;
            for route in cfg
                .routes
                .iter_mut()
                .filter(|r| r.admin_allowlist || (!marked && r.path == "/admin"))
            {
                route.access.allow = ranges.clone();
                applied = true;
            }
            if !applied {
                cfg.warnings.push(format!(
                    "{}: ADMIN_IP_ALLOWLIST is set but no route has admin_allowlist = true (nor is there an /admin route)",
                    v.origin
                ));
            }
        }
    }
    apply_acme_env(cfg, env)?;
    apply_cluster_env(cfg, env)?;
    if let Some(v) = env.get("LETSENCRYPT_ENABLED") {
        // AliasVault's entrypoint tests for exactly "true".
        cfg.letsencrypt_enabled = v
            .value
            .trim()
            .is_empty()
            .then_some(false)
            .or_else(|| parse_bool(&v.value))
            .ok_or_else(|| ConfigError::var("LETSENCRYPT_ENABLED", v, "expected true or false"))?;
    }
    Ok(())
}

fn env_port(v: &env::Value, name: &str) -> Result<u16, ConfigError> {
    v.value
        .trim()
        .parse::<u16>()
        .map_err(|_| ConfigError::var(name, v, "expected a port number from 0 to 65535"))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn mib(n: i64) -> Option<u64> {
    u64::try_from(n)
        .ok()
        .filter(|n| *n > 0)?
        .checked_mul(1024 * 1024)
}

/// A host name for the certificate: a DNS name or an IP address.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    if h.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err("expected a DNS name or an IP address".into())
    }
}

/// `http://host[:port]`, where host is a name, an IPv4 address or a
/// bracketed IPv6 address. The upstream sees the client's path as sent, so a
/// path here would be ambiguous and is refused.
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        "expected http://host:port (only plain HTTP upstreams are supported)".to_string()
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an upstream is http://host:port, without path, query or user".into());
    }
    let authority =
        Authority::from_str(rest).map_err(|_| format!("{rest:?} is not a valid host:port"))?;
    if authority.host().is_empty() {
        return Err("the upstream has no host".into());
    }
    let authority = match authority.port_u16() {
        Some(0) => return Err("port 0 is not a valid upstream port".into()),
        Some(_) => authority,
        None => {
            Authority::from_str(&format!("{}:80", authority.host())).map_err(|e| e.to_string())?
        }
    };
    Ok(Upstream {
        url: url.to_string(),
        authority,
    })
}

/// Durations such as `"24h"`, `"60s"`, `"1m30s"`, `"500ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration (examples: \"500ms\", \"60s\", \"5m\", \"24h\")");
    let s = s.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(unit).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Sizes: bytes as an integer, or `"100M"`, `"64KiB"`, `"1G"` (binary).
pub fn parse_size(v: &file::Size) -> Result<u64, String> {
    match v {
        file::Size::Bytes(n) => u64::try_from(*n).map_err(|_| "a size cannot be negative".into()),
        file::Size::Text(s) => {
            let t = s.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let n: u64 = t[..split].parse().map_err(|_| {
                format!("{s:?} is not a size (examples: 1048576, \"512K\", \"100M\", \"1G\")")
            })?;
            let mult: u64 = match t[split..].trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                _ => {
                    return Err(format!(
                        "{s:?} is not a size (examples: 1048576, \"512K\", \"100M\", \"1G\")"
                    ))
                }
            };
            n.checked_mul(mult)
                .ok_or_else(|| format!("{s:?} is too large"))
        }
    }
}

/// The diagnostic endpoint reports request headers and upstream state, so
/// its token must be a real secret: long, and valid in a header field.
fn validate_diagnostics_token(t: &str) -> Result<String, String> {
    if t.len() < 16 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "expected a secret of 16 to 256 visible ASCII characters (e.g. `openssl rand -hex 16`)"
                .into(),
        );
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "h", "10", "10x", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(
            parse_size(&file::Size::Text("100M".into())).unwrap(),
            100 << 20
        );
        assert_eq!(
            parse_size(&file::Size::Text("64KiB".into())).unwrap(),
            64 << 10
        );
        assert_eq!(parse_size(&file::Size::Bytes(10)).unwrap(), 10);
        assert!(parse_size(&file::Size::Text("10Q".into())).is_err());
        assert!(parse_size(&file::Size::Bytes(-1)).is_err());
    }

    #[test]
    fn upstreams() {
        assert_eq!(
            parse_upstream("http://admin:3002").unwrap().authority,
            "admin:3002"
        );
        assert_eq!(parse_upstream("http://api").unwrap().authority, "api:80");
        assert_eq!(
            parse_upstream("http://[::1]:8080/").unwrap().authority,
            "[::1]:8080"
        );
        for bad in [
            "https://a:1",
            "a:1",
            "http://a:1/x",
            "http://:1",
            "http://a:0",
            "http://u@a:1",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn built_in_is_aliasvault() {
        let cfg = load(&Source::BuiltIn, &Env::empty()).unwrap();
        let paths: Vec<_> = cfg
            .routes
            .iter()
            .map(|r| (r.path.as_str(), r.upstream.url.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("/admin", "http://admin:3002"),
                ("/api", "http://api:3001"),
                ("/", "http://client:3000")
            ]
        );
        assert_eq!(cfg.routes[0].websocket_timeout, Duration::from_secs(86400));
        assert_eq!((cfg.http_port, cfg.https_port), (80, 443));
        assert!(cfg.force_https_redirect);
        assert_eq!(cfg.routes[2].max_body, 100 << 20);
    }

    /// ADMIN_IP_ALLOWLIST guards the routes marked `admin_allowlist`, not
    /// whatever is at `/admin` (issue 12); unmarked files keep `/admin`.
    #[test]
    fn admin_allowlist_follows_the_marked_route() {
        let env = Env::from_pairs([("ADMIN_IP_ALLOWLIST", "198.51.100.0/24")]);
        let text = |extra: &str| {
            Source::Text {
            name: "g.toml".into(),
            text: format!(
                "[[route]]\npath = \"/panel\"\nupstream = \"http://admin:3002\"\n{extra}\n[[route]]\npath = \"/admin\"\nupstream = \"http://other:1\"\n"
            ),
            base_dir: ".".into(),
        }
        };
        let allow = |cfg: &Config, path: &str| {
            let r = cfg.routes.iter().find(|r| r.path == path).unwrap();
            r.access
                .allow
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
        };
        let marked = load(&text("admin_allowlist = true"), &env).unwrap();
        assert_eq!(
            allow(&marked, "/panel"),
            ["127.0.0.0/8", "::1/128", "198.51.100.0/24"]
        );
        assert!(allow(&marked, "/admin").is_empty());
        let unmarked = load(&text(""), &env).unwrap();
        assert!(allow(&unmarked, "/panel").is_empty());
        assert_eq!(
            allow(&unmarked, "/admin"),
            ["127.0.0.0/8", "::1/128", "198.51.100.0/24"]
        );
        let builtin = load(&Source::BuiltIn, &env).unwrap();
        assert!(builtin.routes[0].admin_allowlist);
        assert_eq!(
            allow(&builtin, "/admin"),
            ["127.0.0.0/8", "::1/128", "198.51.100.0/24"]
        );
    }

    /// MAX_UPLOAD_SIZE_MB replaces the global default, never a route's own
    /// `max_body`, whichever of file and environment sets the default.
    #[test]
    fn max_upload_size_is_the_default_a_route_can_override() {
        let text = Source::Text {
            name: "g.toml".into(),
            text: "max_upload_size_mb = 7\n[[route]]\npath = \"/up\"\nupstream = \"http://a:1\"\nmax_body = \"1M\"\n[[route]]\npath = \"/\"\nupstream = \"http://b:1\"\n".into(),
            base_dir: ".".into(),
        };
        let bodies = |cfg: &Config| cfg.routes.iter().map(|r| r.max_body).collect::<Vec<_>>();
        assert_eq!(
            bodies(&load(&text, &Env::empty()).unwrap()),
            [1 << 20, 7 << 20]
        );
        let env = Env::from_pairs([("MAX_UPLOAD_SIZE_MB", "5")]);
        assert_eq!(bodies(&load(&text, &env).unwrap()), [1 << 20, 5 << 20]);
    }

    #[test]
    fn env_overrides_file_and_names_the_variable() {
        let env = Env::from_pairs([
            ("HTTPS_PORT", "8443"),
            ("MAX_UPLOAD_SIZE_MB", "5"),
            ("FORCE_HTTPS_REDIRECT", "false"),
        ]);
        let cfg = load(&Source::BuiltIn, &env).unwrap();
        assert_eq!(cfg.https_port, 8443);
        assert!(!cfg.force_https_redirect);
        assert!(cfg.routes.iter().all(|r| r.max_body == 5 << 20));
        let err = load(
            &Source::BuiltIn,
            &Env::from_pairs([("HTTP_PORT", "eighty")]),
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("HTTP_PORT"));
        assert!(
            err.to_string()
                .contains("HTTP_PORT: invalid value \"eighty\""),
            "{err}"
        );
        let err = load(
            &Source::BuiltIn,
            &Env::from_pairs([("FORCE_HTTPS_REDIRECT", "maybe")]),
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("FORCE_HTTPS_REDIRECT"));
    }

    /// Issue 14: `GATEHOUSE_REDIS_URL` alone turns the cluster on, or
    /// replaces the table's `redis`; a bad one names the variable.
    #[test]
    fn redis_url_from_the_environment() {
        let url = "redis://:pw@redis:6379/0";
        let cfg = load(
            &Source::BuiltIn,
            &Env::from_pairs([("GATEHOUSE_REDIS_URL", url)]),
        )
        .unwrap();
        let c = cfg.cluster.expect("on");
        assert_eq!(c.redis, url);
        assert_eq!(c.key_prefix, "gatehouse:");
        assert_eq!(c.timeout, Duration::from_millis(50));
        assert_eq!(c.on_redis_error, OnRedisError::Local);
        assert!(
            c.name.ends_with(&format!("-{}", std::process::id())),
            "{}",
            c.name
        );
        assert_eq!(c.redis_redacted(), "redis://:***@redis:6379/0");
        assert!(
            !format!("{c:?}").contains("pw"),
            "the password never prints"
        );
        // The table may leave `redis` to the variable, which wins.
        let text = Source::Text {
            name: "c.toml".into(),
            text: "[cluster]\nkey_prefix = \"x:\"\n[[route]]\npath = \"/\"\nupstream = \"http://b:1\"\n".into(),
            base_dir: ".".into(),
        };
        assert!(load(&text, &Env::empty()).is_err(), "no redis anywhere");
        let cfg = load(&text, &Env::from_pairs([("GATEHOUSE_REDIS_URL", url)])).unwrap();
        let c = cfg.cluster.unwrap();
        assert_eq!((c.redis.as_str(), c.key_prefix.as_str()), (url, "x:"));
        // An empty variable is unset; a bad one is an error naming it.
        let cfg = load(
            &Source::BuiltIn,
            &Env::from_pairs([("GATEHOUSE_REDIS_URL", " ")]),
        )
        .unwrap();
        assert!(cfg.cluster.is_none());
        let err = load(
            &Source::BuiltIn,
            &Env::from_pairs([("GATEHOUSE_REDIS_URL", "redis:6379")]),
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("GATEHOUSE_REDIS_URL"));
    }
}
