//! `gatehouse doctor URL` (issue 5): checks an installation from outside,
//! the way a browser reaches it, and explains what is wrong in plain words.
//!
//! It runs the "Testing" list of the reverse-proxy guide (`/` loads the
//! client, `/api` answers, `/admin` loads the admin panel, a WebSocket under
//! `/admin` upgrades, all on one hostname) and diagnoses the guide's common
//! issues: 502/503 and who answered them, WebSocket headers dropped by the
//! proxy in front, TLS verification failing, paths stripped or rewritten,
//! forwarding headers missing or not believed. With `--token`, every check
//! also asks Gatehouse's diagnostic endpoint (see
//! `proxy::diagnostics`) what actually arrived, which turns guesses into
//! findings.
//!
//! Each request uses a connection of its own, so one broken check cannot
//! disturb the next.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::diagnostics::{self, Report};

/// Where the probe requests go; nothing serves this path, so without the
/// diagnostic endpoint it is an ordinary miss.
const PROBE: &str = "/.well-known/gatehouse-doctor";

/// Largest response body read for a check.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Options {
    /// The public address, e.g. `https://aliasvault.example.com`.
    pub url: Uri,
    /// Connect here instead of the URL's host (`HOST:PORT`), keeping the
    /// URL's name for SNI and `Host`: test before DNS points at the server.
    pub connect_to: Option<String>,
    /// Extra trusted roots (PEM), e.g. Gatehouse's self-signed certificate.
    pub ca: Vec<PathBuf>,
    /// The diagnostic endpoint's token (`[diagnostics] token`).
    pub token: Option<String>,
    pub api: String,
    pub admin: String,
    pub timeout: Duration,
}

/// One line of the Testing list.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A diagnosed cause, with the fix.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier: `tls-verify`, `unreachable`, `front-proxy-error`,
    /// `upstream-unavailable`, `path-rewritten`, `websocket-headers`,
    /// `websocket-failed`, `host-rewritten`, `moved`, `forwarding-headers`,
    /// `untrusted-proxy`, `https-redirect`, `redirect-loop`, `hostname`,
    /// `route-mismatch`, `unexpected-status`, `diagnostics-unavailable`.
    pub id: &'static str,
    pub path: Option<String>,
    pub message: String,
    pub fix: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    pub url: String,
    pub checks: Vec<Check>,
    pub findings: Vec<Finding>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.findings.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    fn has(&self, id: &str, path: Option<&str>) -> bool {
        self.findings
            .iter()
            .any(|f| f.id == id && (path.is_none() || f.path.as_deref() == path))
    }

    fn find(&mut self, id: &'static str, path: Option<&str>, message: String, fix: &str) {
        if !self.has(id, path) {
            self.findings.push(Finding {
                id,
                path: path.map(str::to_string),
                message,
                fix: fix.to_string(),
            });
        }
    }

    fn check(&mut self, name: &str, ok: bool, detail: String) {
        self.checks.push(Check {
            name: name.to_string(),
            ok,
            detail,
        });
    }

    /// The report for a terminal: checks, then numbered findings.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "gatehouse doctor {}", self.url);
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "  {mark} {:<22} {}", c.name, c.detail);
        }
        if self.findings.is_empty() {
            let _ = writeln!(out, "\nNo problems found.");
        } else {
            let _ = writeln!(out, "\nProblems found:");
            for (i, f) in self.findings.iter().enumerate() {
                let at = f
                    .path
                    .as_deref()
                    .map(|p| format!(" {p}:"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{}. [{}]{at} {}", i + 1, f.id, f.message);
                for line in f.fix.lines() {
                    let _ = writeln!(out, "   {line}");
                }
            }
        }
        out
    }
}

/// The answer to one request.
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The connection after a 101.
    upgraded: Option<hyper::upgrade::Upgraded>,
}

/// What the doctor connects to and how.
struct Target {
    https: bool,
    /// Name for SNI and certificate checks.
    host: String,
    /// `Host` header value (with the port when not the default).
    authority: String,
    connect: String,
    verified: Arc<rustls::ClientConfig>,
    unverified: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection with what the doctor learned while opening it.
struct Opened {
    io: Box<dyn Io>,
    local: SocketAddr,
    /// SHA-256 of the certificate the server presented.
    certificate: Option<String>,
}

impl Target {
    fn new(opts: &Options) -> Result<Target, String> {
        let https = match opts.url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the URL must start with https:// or http://".into()),
        };
        let host = opts
            .url
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let default_port = if https { 443 } else { 80 };
        let port = opts.url.port_u16().unwrap_or(default_port);
        let authority = opts
            .url
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or("the URL has no host")?;
        let connect = opts.connect_to.clone().unwrap_or_else(|| {
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in &opts.ca {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                any = true;
            }
            if !any {
                return Err(format!("{}: no certificate in the file", path.display()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth();
        Ok(Target {
            https,
            host,
            authority,
            connect,
            verified: Arc::new(verified),
            unverified: Arc::new(unverified),
            timeout: opts.timeout,
        })
    }

    async fn open(&self, verify: bool) -> Result<Opened, OpenError> {
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&self.connect))
            .await
            .map_err(|_| OpenError::Connect(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let local = tcp
            .local_addr()
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if !self.https {
            return Ok(Opened {
                io: Box::new(tcp),
                local,
                certificate: None,
            });
        }
        let config = if verify {
            self.verified.clone()
        } else {
            self.unverified.clone()
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| OpenError::Connect(format!("{}: {e}", self.host)))?;
        let tls = tokio::time::timeout(
            self.timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| OpenError::Connect("the TLS handshake did not finish".into()))?
        .map_err(|e| {
            let verify_failed = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            if verify_failed {
                OpenError::Verify(e.to_string())
            } else {
                OpenError::Connect(format!("TLS handshake failed: {e}"))
            }
        })?;
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| crate::certs::fingerprint(c.as_ref()));
        Ok(Opened {
            io: Box::new(tls),
            local,
            certificate,
        })
    }

    /// One HTTP/1.1 request on a new connection.
    async fn send(
        &self,
        verify: bool,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Exchange, Meta), String> {
        let opened = self.open(verify).await.map_err(|e| e.to_string())?;
        let meta = Meta {
            local: opened.local,
            certificate: opened.certificate,
        };
        let io = TokioIo::new(opened.io);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder()
            .method(method.clone())
            .uri(target)
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("gatehouse-doctor/", env!("CARGO_PKG_VERSION")),
            );
        if method == Method::POST {
            req = req.header(header::CONTENT_LENGTH, "0");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{target}: {e}"))?;
        let res = tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| format!("no response within {:?}", self.timeout))?
            .map_err(|e| format!("{}", crate::base::error_chain::ErrorChain(&e)))?;
        let status = res.status();
        let headers = res.headers().clone();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = tokio::time::timeout(self.timeout, hyper::upgrade::on(res))
                .await
                .map_err(|_| "the upgrade did not complete".to_string())?
                .map_err(|e| e.to_string())?;
            let exchange = Exchange {
                status,
                headers,
                body: Bytes::new(),
                upgraded: Some(upgraded),
            };
            return Ok((exchange, meta));
        }
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(res.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| "the response body did not arrive in time".to_string())?
        .map_err(|e| format!("reading the response body: {e}"))?
        .to_bytes();
        let exchange = Exchange {
            status,
            headers,
            body,
            upgraded: None,
        };
        Ok((exchange, meta))
    }
}

/// What the doctor learned about a connection it opened.
struct Meta {
    local: SocketAddr,
    certificate: Option<String>,
}

#[derive(Debug)]
enum OpenError {
    Connect(String),
    Verify(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Connect(e) | OpenError::Verify(e) => f.write_str(e),
        }
    }
}

/// Accepts any certificate but still checks the handshake signatures, so
/// the remaining checks can run after verification failed (reported).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

const FIX_TLS: &str = "\
If the certificate belongs to the proxy in front, give it one browsers trust (Let's Encrypt).
If it is Gatehouse's self-signed certificate, turn on LETSENCRYPT_ENABLED or [acme], or pass
--ca certificates/ssl/cert.pem to this command to check everything else. A proxy or Cloudflare
Tunnel that connects to Gatehouse must trust that certificate too: `gatehouse external KIND`
prints how (Cloudflare Tunnel: originRequest noTLSVerify, or the certificate as caPool).";

const FIX_UNREACHABLE: &str = "\
Check that the name resolves to the server (or use --connect-to HOST:PORT), that the port is
open in the firewall, and that Gatehouse or the proxy in front is running and listening there.";

const FIX_FRONT: &str = "\
Point the proxy in front at Gatehouse (its HTTP or HTTPS port), not at the client, api or admin
container. When it connects to Gatehouse over HTTPS it must accept Gatehouse's certificate
(self-signed unless you configured one). `gatehouse external KIND --host H --to URL` prints a
working configuration.";

const FIX_UPSTREAM: &str = "\
Start the service behind that route (for AliasVault: `docker compose ps`, then the logs of the
client, api or admin container) or correct the route's upstream address in gatehouse.toml.";

const FIX_PATH: &str = "\
Do not strip or rewrite paths: /, /api and /admin must reach Gatehouse as they are.
nginx: `proxy_pass https://gatehouse:443;` with no URI part (no trailing slash or path) in
`location /`. Apache: `ProxyPass / https://gatehouse:443/` for the whole site, not per path.
Traefik: no StripPrefix middleware. Caddy: `reverse_proxy`, not `handle_path`.";

const FIX_WEBSOCKET: &str = "\
Pass the WebSocket upgrade through (the admin panel is Blazor Server and needs it).
nginx: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;
proxy_set_header Connection $connection_upgrade;` with `map $http_upgrade $connection_upgrade
{ default upgrade; '' close; }`. Apache 2.4.47+: `ProxyPass / https://gatehouse/ upgrade=websocket`.
Caddy, Traefik and HAProxy pass upgrades by default; Cloudflare: WebSockets on in the dashboard.";

const FIX_HOST: &str = "\
Forward the Host the browser used: nginx `proxy_set_header Host $host;`, Apache
`ProxyPreserveHost On`, HAProxy and Caddy keep it unless told otherwise.";

const FIX_FORWARDING: &str = "\
Have the proxy in front send the client's address and scheme: nginx `proxy_set_header
X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;`
(Apache, Caddy, Traefik and HAProxy with `option forwardfor` send them).";

const FIX_REDIRECT: &str = "\
Gatehouse redirects plain-HTTP requests to HTTPS. Either point the proxy in front at Gatehouse's
HTTPS port, or let it send `X-Forwarded-Proto: https` from an address in TRUSTED_PROXIES, or set
FORCE_HTTPS_REDIRECT=false when the proxy in front handles HTTPS.";

const FIX_ROUTE: &str = "\
Check the routes in gatehouse.toml (`gatehouse check` lists them). For /admin, the address
Gatehouse sees for you must be in ADMIN_IP_ALLOWLIST; behind a proxy that needs TRUSTED_PROXIES.";

const FIX_DIAGNOSTICS: &str = "\
Turn the diagnostic endpoint on with the same token: `[diagnostics] token = \"...\"` in
gatehouse.toml or GATEHOUSE_DIAGNOSTICS_TOKEN in .env, then reload Gatehouse.";

const FIX_HOSTNAME: &str = "\
All services must be available under the same hostname. Make the proxy in front forward every
path of this host to Gatehouse, and set HOSTNAME to this name.";

/// Runs every check against `opts.url`.
pub async fn run(opts: &Options) -> Outcome {
    let mut out = Outcome {
        url: opts.url.to_string(),
        ..Outcome::default()
    };
    let target = match Target::new(opts) {
        Ok(t) => t,
        Err(e) => {
            out.check("connection", false, e.clone());
            out.find("unreachable", None, e, FIX_UNREACHABLE);
            return out;
        }
    };
    let mut d = Doctor {
        t: target,
        opts,
        out,
        verify: true,
        reports: Vec::new(),
    };
    if d.connection().await {
        d.run_checks().await;
    }
    d.out
}

struct Doctor<'a> {
    t: Target,
    opts: &'a Options,
    out: Outcome,
    /// False once verification failed (reported): later checks go on.
    verify: bool,
    /// The diagnostic report for each prefix that returned one.
    reports: Vec<(String, Report)>,
}

impl Doctor<'_> {
    async fn connection(&mut self) -> bool {
        match self.t.open(true).await {
            Ok(o) => {
                let detail = match &o.certificate {
                    Some(fp) => format!(
                        "TLS certificate for {} verified (SHA-256 {fp})",
                        self.t.host
                    ),
                    None => format!("connected to {} (plain HTTP)", self.t.connect),
                };
                self.out.check("connection", true, detail);
                true
            }
            Err(OpenError::Verify(e)) => {
                self.out
                    .check("connection", false, format!("TLS verification failed: {e}"));
                self.out.find(
                    "tls-verify",
                    None,
                    format!(
                        "The certificate presented for {} cannot be verified: {e}.",
                        self.t.host
                    ),
                    FIX_TLS,
                );
                self.verify = false;
                match self.t.open(false).await {
                    Ok(_) => true,
                    Err(e) => {
                        self.out.find(
                            "unreachable",
                            None,
                            format!("Cannot complete a connection to {}: {e}.", self.t.connect),
                            FIX_UNREACHABLE,
                        );
                        false
                    }
                }
            }
            Err(OpenError::Connect(e)) => {
                self.out.check("connection", false, e.clone());
                self.out.find(
                    "unreachable",
                    None,
                    format!("Cannot connect to {}: {e}.", self.t.connect),
                    FIX_UNREACHABLE,
                );
                false
            }
        }
    }

    async fn run_checks(&mut self) {
        let prefixes = [
            "/".to_string(),
            self.opts.api.clone(),
            self.opts.admin.clone(),
        ];
        if let Some(token) = self.opts.token.clone() {
            let mut got = Vec::new();
            for p in &prefixes {
                if self.probe(p, &token).await {
                    got.push(p.as_str());
                }
            }
            if !got.is_empty() {
                self.out.check(
                    "diagnostics",
                    true,
                    format!("Gatehouse reported what arrived for {}", got.join(", ")),
                );
            }
            self.websocket_probe(&token).await;
        }
        self.page("client", "/").await;
        let api = self.opts.api.clone();
        self.page("api", &api).await;
        let admin = self.opts.admin.clone();
        self.page("admin", &admin).await;
        self.websocket_app().await;
    }

    fn report_for(&self, prefix: &str) -> Option<&Report> {
        self.reports
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, r)| r)
    }

    /// The prefix (`/`, `/api`, `/admin`) a path belongs to.
    fn prefix_of(&self, path: &str) -> String {
        for p in [&self.opts.admin, &self.opts.api] {
            if path == p.as_str()
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
            {
                return p.clone();
            }
        }
        "/".to_string()
    }

    fn probe_target(prefix: &str, extra: &str) -> String {
        format!(
            "{}{PROBE}?n={}{extra}",
            prefix.trim_end_matches('/'),
            nonce()
        )
    }

    /// Asks the diagnostic endpoint what arrives for a path under `prefix`.
    async fn probe(&mut self, prefix: &str, token: &str) -> bool {
        let sent = Self::probe_target(prefix, "");
        let headers = [
            (diagnostics::HEADER.as_str(), token),
            ("accept", "application/json"),
        ];
        let (ex, meta) = match self.t.send(self.verify, Method::GET, &sent, &headers).await {
            Ok(x) => x,
            Err(_) => return false,
        };
        if ex.status == StatusCode::FORBIDDEN && ex.body.starts_with(b"diagnostics token mismatch")
        {
            self.out.find(
                "diagnostics-unavailable",
                None,
                "Gatehouse refused the diagnostics token: it differs from the configured one."
                    .into(),
                FIX_DIAGNOSTICS,
            );
            return false;
        }
        let report = (ex.status == StatusCode::OK)
            .then(|| serde_json::from_slice::<Report>(&ex.body).ok())
            .flatten();
        let Some(report) = report else {
            // A 5xx is diagnosed by the page checks; anything else means the
            // report never came back.
            if !ex.status.is_server_error() {
                self.out.find(
                    "diagnostics-unavailable",
                    Some(prefix),
                    format!(
                        "No diagnostic report came back (status {}): the endpoint is off, or \
                         the proxy in front does not send this path to Gatehouse.",
                        ex.status.as_u16()
                    ),
                    FIX_DIAGNOSTICS,
                );
            }
            return false;
        };
        self.analyze(prefix, &sent, &report, &meta);
        self.reports.push((prefix.to_string(), report));
        true
    }

    fn analyze(&mut self, prefix: &str, sent: &str, r: &Report, meta: &Meta) {
        let header = |name: &str| {
            r.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        // Direct when Gatehouse served the very certificate the doctor saw
        // (nothing terminated TLS in between), or, without TLS, when the
        // peer Gatehouse saw is the doctor's own socket.
        let direct = match (&meta.certificate, &r.certificate) {
            (Some(seen), Some(served)) => seen == served,
            (Some(_), None) => false,
            (None, _) => r.peer.parse::<SocketAddr>().ok() == Some(meta.local),
        };
        let rewritten = r.target != sent;
        if rewritten {
            let how = match sent.strip_prefix(prefix.trim_end_matches('/')) {
                Some(rest) if prefix != "/" && r.target == rest => {
                    format!("stripped the {prefix} prefix")
                }
                _ => "rewrote the path".to_string(),
            };
            self.out.find(
                "path-rewritten",
                Some(prefix),
                format!(
                    "The proxy in front {how}: the doctor sent {sent}, Gatehouse received {}.",
                    r.target
                ),
                FIX_PATH,
            );
        }
        let hosts: Vec<&str> = r.host.as_deref().into_iter().collect();
        let host_ok = hosts.first().is_some_and(|h| {
            let name = crate::proxy::forwarded::host_without_port(h);
            name.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(&self.t.host)
        });
        if !host_ok && !hosts.is_empty() {
            self.out.find(
                "host-rewritten",
                None,
                format!(
                    "The proxy in front changed the Host header: the doctor sent {}, Gatehouse received {}.",
                    self.t.authority,
                    hosts[0]
                ),
                FIX_HOST,
            );
        }
        if !direct {
            let peer_ip = r
                .peer
                .parse::<SocketAddr>()
                .map(|a| crate::base::cidr::canonical(a.ip()).to_string())
                .unwrap_or_else(|_| r.peer.clone());
            let mut missing = Vec::new();
            if header("x-forwarded-for").is_empty() {
                missing.push("X-Forwarded-For");
            }
            if header("x-forwarded-proto").is_empty() && self.t.https && !r.tls {
                missing.push("X-Forwarded-Proto");
            }
            if !missing.is_empty() {
                let mut lost = Vec::new();
                if missing.contains(&"X-Forwarded-For") {
                    lost.push(
                        "Gatehouse and the apps see the proxy's address instead of the client's",
                    );
                }
                if missing.contains(&"X-Forwarded-Proto") {
                    lost.push("they take the HTTPS request for plain HTTP");
                }
                self.out.find(
                    "forwarding-headers",
                    None,
                    format!(
                        "The proxy in front ({peer_ip}) does not send {}: {}.",
                        missing.join(" or "),
                        lost.join(", and ")
                    ),
                    FIX_FORWARDING,
                );
            } else if !r.trusted_peer {
                self.out.find(
                    "untrusted-proxy",
                    None,
                    format!(
                        "Gatehouse does not trust the proxy in front ({peer_ip}), so it ignores \
                         its X-Forwarded-For: the client address it logs and limits is {}.",
                        r.client_ip
                    ),
                    &format!(
                        "Add the proxy's address to Gatehouse's .env: TRUSTED_PROXIES={}",
                        // One address as a range, e.g. 127.0.0.1/32.
                        peer_ip
                            .parse::<crate::base::cidr::Cidr>()
                            .map_or_else(|_| peer_ip.clone(), |c| c.to_string())
                    ),
                );
            }
        }
        if r.would_redirect {
            self.out.find(
                "https-redirect",
                None,
                "The proxy in front connects to Gatehouse's HTTP port, and Gatehouse answers it \
                 with a redirect to HTTPS, which loops."
                    .into(),
                FIX_REDIRECT,
            );
        }
        if !rewritten {
            let mismatch = match (&r.route, &r.route_error) {
                (Some(route), _) if route.path != prefix => Some(format!(
                    "Gatehouse serves {prefix} with its route {} (client address {}).",
                    route.path, r.client_ip
                )),
                (None, Some(e)) => Some(format!("Gatehouse has no route for {prefix}: {e}.")),
                _ => None,
            };
            if let Some(m) = mismatch {
                self.out.find("route-mismatch", Some(prefix), m, FIX_ROUTE);
            }
        }
    }

    /// A WebSocket upgrade answered by the diagnostic endpoint under the
    /// admin prefix: proves the proxy in front passes upgrades, whatever
    /// the application does.
    async fn websocket_probe(&mut self, token: &str) {
        let admin = self.opts.admin.clone();
        let sent = Self::probe_target(&admin, "&ws=1");
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let headers = [
            (diagnostics::HEADER.as_str(), token),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", key.as_str()),
        ];
        let name = "websocket (proxy)";
        let (ex, _) = match self.t.send(self.verify, Method::GET, &sent, &headers).await {
            Ok(x) => x,
            Err(e) => {
                self.out.check(name, false, e);
                return;
            }
        };
        if let Some(mut io) = ex.upgraded {
            let accepted = accept_matches(&ex.headers, &key);
            let report = read_report(TokioIo::new(&mut io))
                .await
                .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
            match report {
                Some(_) if accepted => self.out.check(
                    name,
                    true,
                    format!("{sent}: upgraded through to Gatehouse (101)"),
                ),
                _ => {
                    self.out
                        .check(name, false, "101, but no valid WebSocket answer".into());
                }
            }
            return;
        }
        let report = (ex.status == StatusCode::OK)
            .then(|| serde_json::from_slice::<Report>(&ex.body).ok())
            .flatten();
        match report {
            Some(r) => {
                let get = |n: &str| {
                    r.headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map_or("(none)", |(_, v)| v.as_str())
                        .to_string()
                };
                let (upgrade, connection) = (get("upgrade"), get("connection"));
                self.out.check(
                    name,
                    false,
                    format!("{sent}: {}, not 101", ex.status.as_u16()),
                );
                self.out.find(
                    "websocket-headers",
                    Some(&admin),
                    format!(
                        "The proxy in front dropped the WebSocket upgrade: Gatehouse received \
                         Upgrade: {upgrade}, Connection: {connection}."
                    ),
                    FIX_WEBSOCKET,
                );
            }
            None => self.out.check(
                name,
                false,
                format!("{sent}: {} instead of 101", ex.status.as_u16()),
            ),
        }
    }

    /// The application's own WebSocket: SignalR's negotiate, as Blazor
    /// Server does it, then the upgrade.
    async fn websocket_app(&mut self) {
        let admin = self.opts.admin.trim_end_matches('/').to_string();
        let negotiate = format!("{admin}/_blazor/negotiate?negotiateVersion=1");
        let mut target = format!("{admin}/_blazor");
        if let Ok((ex, _)) = self
            .t
            .send(self.verify, Method::POST, &negotiate, &[])
            .await
        {
            let token = (ex.status == StatusCode::OK)
                .then(|| serde_json::from_slice::<serde_json::Value>(&ex.body).ok())
                .flatten()
                .and_then(|v| {
                    v.get("connectionToken")
                        .or_else(|| v.get("connectionId"))
                        .and_then(|t| t.as_str().map(str::to_string))
                });
            if let Some(token) = token {
                target = format!("{admin}/_blazor?id={}", url_escape(&token));
            }
        }
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let headers = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", key.as_str()),
        ];
        let name = "websocket";
        let path = admin.clone();
        let explained = |out: &Outcome| {
            out.has("websocket-headers", None)
                || out.has("path-rewritten", Some(&path))
                || out.has("moved", None)
                || out.has("https-redirect", None)
        };
        match self
            .t
            .send(self.verify, Method::GET, &target, &headers)
            .await
        {
            Err(e) => {
                self.out.check(name, false, format!("{target}: {e}"));
                if !explained(&self.out) {
                    self.out.find(
                        "websocket-failed",
                        Some(&admin),
                        format!("The WebSocket upgrade at {target} failed: {e}."),
                        FIX_WEBSOCKET,
                    );
                }
            }
            Ok((ex, _)) if ex.upgraded.is_some() => {
                let ok = accept_matches(&ex.headers, &key);
                if let Some(mut io) = ex.upgraded {
                    close_websocket(TokioIo::new(&mut io)).await;
                }
                self.out.check(
                    name,
                    ok,
                    if ok {
                        format!("{target}: 101 Switching Protocols")
                    } else {
                        format!("{target}: 101 with a wrong Sec-WebSocket-Accept")
                    },
                );
            }
            Ok((ex, _)) => {
                self.out.check(
                    name,
                    false,
                    format!("{target}: {} instead of 101", ex.status.as_u16()),
                );
                if is_unavailable(ex.status) {
                    self.unavailable(&target, &ex);
                } else if !explained(&self.out) {
                    let hint = if self.opts.token.is_some() {
                        ""
                    } else {
                        " The most common cause is a proxy in front that drops the Upgrade and \
                         Connection headers; run again with --token to see what arrives."
                    };
                    self.out.find(
                        "websocket-failed",
                        Some(&admin),
                        format!(
                            "The WebSocket upgrade at {target} was answered {} instead of 101.{hint}",
                            ex.status.as_u16()
                        ),
                        FIX_WEBSOCKET,
                    );
                }
            }
        }
    }

    /// GET a page, following redirects on the same host.
    async fn page(&mut self, name: &str, path: &str) {
        let mut url = path.to_string();
        let mut seen = vec![url.clone()];
        let prefix = self.prefix_of(path);
        for _ in 0..6 {
            let headers = [("accept", "text/html,application/json;q=0.9,*/*;q=0.8")];
            let (ex, _) = match self.t.send(self.verify, Method::GET, &url, &headers).await {
                Ok(x) => x,
                Err(e) => {
                    self.out.check(name, false, format!("{url}: {e}"));
                    self.out.find(
                        "unreachable",
                        Some(path),
                        format!("The request for {url} failed: {e}."),
                        FIX_UNREACHABLE,
                    );
                    return;
                }
            };
            let status = ex.status;
            if status.is_redirection() {
                let location = ex
                    .headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                match self.same_host_target(&location, &url) {
                    Ok(next) if seen.contains(&next) => {
                        self.out.check(
                            name,
                            false,
                            format!("{url}: {} redirects in a loop", status.as_u16()),
                        );
                        if !self.out.has("https-redirect", None) {
                            self.out.find(
                                "redirect-loop",
                                Some(path),
                                format!(
                                    "{url} redirects to {location}, which leads back to itself."
                                ),
                                FIX_REDIRECT,
                            );
                        }
                        return;
                    }
                    Ok(next) => {
                        seen.push(next.clone());
                        url = next;
                        continue;
                    }
                    Err(other) if self.same_name(&other) => {
                        self.out.check(
                            name,
                            false,
                            format!("{url}: {} to {location}", status.as_u16()),
                        );
                        // Behind a proxy, that is Gatehouse's HTTPS redirect,
                        // already diagnosed with its cause.
                        if self.out.has("https-redirect", None) {
                            return;
                        }
                        self.out.find(
                            "moved",
                            None,
                            format!(
                                "{} redirects to {other}: the checks need the address browsers \
                                 end up on.",
                                self.opts.url
                            ),
                            &format!("Run: gatehouse doctor {other}"),
                        );
                        return;
                    }
                    Err(other) => {
                        self.out.check(
                            name,
                            false,
                            format!("{url}: {} to {location}", status.as_u16()),
                        );
                        self.out.find(
                            "hostname",
                            Some(path),
                            format!(
                                "{url} redirects to another address ({other}); the services must \
                                 all answer on {}.",
                                self.t.authority
                            ),
                            FIX_HOSTNAME,
                        );
                        return;
                    }
                }
            }
            if status.is_success() {
                let ctype = ex
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type");
                let text = String::from_utf8_lossy(&ex.body);
                let detail = if name == "api" && text.trim() == "OK" {
                    format!("{url}: {} \"OK\"", status.as_u16())
                } else {
                    format!(
                        "{url}: {} {ctype}, {} bytes",
                        status.as_u16(),
                        ex.body.len()
                    )
                };
                self.out.check(name, true, detail);
                return;
            }
            self.out
                .check(name, false, format!("{url}: {}", status.as_u16()));
            if is_unavailable(status) {
                self.unavailable(&url, &ex);
            } else if !self.out.has("path-rewritten", Some(&prefix))
                && !self.out.has("route-mismatch", Some(&prefix))
            {
                self.out.find(
                    "unexpected-status",
                    Some(path),
                    format!("{url} answered {} instead of 200.", status.as_u16()),
                    FIX_ROUTE,
                );
            }
            return;
        }
        self.out
            .check(name, false, format!("{path}: too many redirects"));
        self.out.find(
            "redirect-loop",
            Some(path),
            format!("{path} redirects more than five times."),
            FIX_REDIRECT,
        );
    }

    /// The path of `location` when it stays on this host, else the other
    /// address.
    fn same_host_target(&self, location: &str, current: &str) -> Result<String, String> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(location.to_string());
        }
        let uri: Uri = location.parse().map_err(|_| location.to_string())?;
        match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(auth)) => {
                let same_scheme = (scheme == "https") == self.t.https;
                if same_scheme && auth.as_str().eq_ignore_ascii_case(&self.t.authority) {
                    Ok(uri
                        .path_and_query()
                        .map_or("/".to_string(), |p| p.as_str().to_string()))
                } else {
                    Err(format!("{scheme}://{auth}"))
                }
            }
            // A relative reference without a leading slash.
            _ => {
                let base = current.rsplit_once('/').map_or("", |(b, _)| b);
                Ok(format!("{base}/{location}"))
            }
        }
    }

    /// `scheme://authority` names this host (perhaps another scheme or
    /// port: the HTTP-to-HTTPS redirect).
    fn same_name(&self, other: &str) -> bool {
        other
            .parse::<Uri>()
            .ok()
            .and_then(|u| {
                u.host().map(|h| {
                    h.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase()
                })
            })
            .is_some_and(|h| h == self.t.host.to_ascii_lowercase())
    }

    /// A 502/503/504: says who answered it and why.
    fn unavailable(&mut self, url: &str, ex: &Exchange) {
        let prefix = self.prefix_of(url);
        let by_gatehouse = ex.status == StatusCode::SERVICE_UNAVAILABLE
            && ex
                .headers
                .get(&crate::proxy::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|id| {
                    String::from_utf8_lossy(&ex.body).contains(&format!("Request ID: {id}"))
                });
        if by_gatehouse {
            let route = self.report_for(&prefix).and_then(|r| r.route.as_ref());
            // Keyed by route: /admin served by `/` is the same cause as `/`.
            let key = route.map_or(prefix.clone(), |r| r.path.clone());
            let why = match route {
                Some(route) => {
                    let servers: Vec<String> = route
                        .servers
                        .iter()
                        .map(|s| match &s.connect_error {
                            Some(e) => format!("{} ({e})", s.address),
                            None if s.marked_down => {
                                format!("{} (marked down after a failure)", s.address)
                            }
                            None if !s.healthy => {
                                format!("{} (failing its health check)", s.address)
                            }
                            None => format!("{} (accepts connections now)", s.address),
                        })
                        .collect();
                    format!(
                        " Its route {} cannot get an answer from {}.",
                        route.path,
                        servers.join(", ")
                    )
                }
                None => String::new(),
            };
            self.out.find(
                "upstream-unavailable",
                Some(&key),
                format!(
                    "Gatehouse answered {url} with 503: the service behind it is down or starting.{why}"
                ),
                FIX_UPSTREAM,
            );
        } else {
            let server = ex
                .headers
                .get(header::SERVER)
                .and_then(|v| v.to_str().ok())
                .map(|s| format!(" (Server: {s})"))
                .unwrap_or_default();
            // One finding however many paths it hit: the cause is the same.
            self.out.find(
                "front-proxy-error",
                None,
                format!(
                    "The proxy in front answered {url} with {} itself{server}: the request \
                     never got an answer from Gatehouse.",
                    ex.status.as_u16()
                ),
                FIX_FRONT,
            );
        }
    }
}

fn is_unavailable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 502..=504)
}

fn accept_matches(headers: &HeaderMap, key: &str) -> bool {
    let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == want.as_bytes())
}

/// The first message on an upgraded connection, which must be text, then
/// a normal close from this side (RFC 6455 §5.5.1, §7.4.1).
async fn read_report<S>(io: S) -> Option<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;
    let config = WebSocketConfig::default().max_message_size(Some(MAX_BODY));
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await;
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    let _ = ws.close(None).await;
    match first {
        Ok(Some(Ok(Message::Text(text)))) => Some(text.as_bytes().to_vec()),
        _ => None,
    }
}

/// Closes an upgraded connection as a WebSocket client does.
async fn close_websocket<S>(io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::Role;
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    let _ = ws.close(None).await;
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Percent-encodes a query value (RFC 3986 §2.3 unreserved kept).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
