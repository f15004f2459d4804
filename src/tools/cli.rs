//! The command line. Doc comments here are the `--help` text.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::certs;
use crate::config::{self, Config, Env, Source};
use crate::runtime::Runtime;

/// Gatehouse: a reverse proxy for self-hosted web apps (AliasVault's layout
/// by default: /admin, /api and / behind one hostname).
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version)]
pub(crate) struct Cli {
    /// Configuration file. Default: gatehouse.toml in the working directory
    /// if present, else the built-in AliasVault layout.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// File of environment variables (AliasVault's .env). Default: .env in
    /// the working directory if present. The process environment wins.
    #[arg(long, global = true, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate the configuration and print the effective listeners, routes
    /// and certificate source. Exit 0 when valid, 2 otherwise.
    Check,
    /// Print the certificate being served for each name: source, issuer,
    /// SANs, SHA-256 fingerprint, expiry, next renewal. Exits 1 when it
    /// expires within 7 days.
    Cert,
    /// Ask the running server to reload its configuration (through the
    /// metrics listener, from loopback). Exit 0 when it was applied.
    Reload,
    /// Check the running server's /readyz (for a container HEALTHCHECK).
    /// Exit 0 when ready, 1 otherwise.
    Health,
    /// Check an installation from outside: `/` loads, `/api` answers,
    /// `/admin` loads, a WebSocket under `/admin` upgrades, all on one
    /// hostname; explains what the proxy in front breaks. Exit 0 when all
    /// is well, 1 when a problem was found.
    Doctor(DoctorArgs),
    /// Print a configuration for the proxy in front of Gatehouse (nginx,
    /// apache, caddy, traefik, haproxy or cloudflared) to stdout.
    External(crate::tools::external::Args),
    /// Start three sample upstreams on loopback and the proxy in front of
    /// them on http://localhost:8080 and https://localhost:8443.
    Demo {
        /// HTTP port of the demo proxy (0 picks a free one).
        #[arg(long, default_value_t = crate::tools::demo::HTTP_PORT)]
        http_port: u16,
        /// HTTPS port of the demo proxy (0 picks a free one).
        #[arg(long, default_value_t = crate::tools::demo::HTTPS_PORT)]
        https_port: u16,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct DoctorArgs {
    /// The public address, e.g. https://aliasvault.example.com
    pub url: String,
    /// The diagnostic endpoint's token (`[diagnostics] token`); read from
    /// GATEHOUSE_DIAGNOSTICS_TOKEN (process or .env) when not given.
    #[arg(long)]
    pub token: Option<String>,
    /// Also trust this CA or self-signed certificate (PEM); repeatable.
    #[arg(long, value_name = "PEM")]
    pub ca: Vec<PathBuf>,
    /// Connect to HOST:PORT instead of the URL's address (keeps the URL's
    /// name for TLS and Host), to test before DNS points at the server.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect_to: Option<String>,
    /// Path of the API.
    #[arg(long, default_value = "/api")]
    pub api: String,
    /// Path of the admin panel.
    #[arg(long, default_value = "/admin")]
    pub admin: String,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Exit status for configuration errors (file, line and key are printed).
pub(crate) use crate::config::EXIT_CONFIG;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let code = match cli.command {
        None => run(&cli),
        Some(Command::Check) => check(&cli),
        Some(Command::Cert) => cert(&cli),
        Some(Command::Reload) => admin_request(&cli, http::Method::POST, "/reload"),
        Some(Command::Health) => admin_request(&cli, http::Method::GET, "/readyz"),
        Some(Command::Doctor(ref args)) => doctor(&cli, args),
        Some(Command::External(ref args)) => crate::tools::external::main(args),
        Some(Command::Demo {
            http_port,
            https_port,
        }) => crate::tools::demo::main(http_port, https_port),
    };
    // Log lines still queued for stdout are written before the exit.
    crate::proxy::access_log::flush(Duration::from_secs(2));
    code
}

fn doctor(cli: &Cli, args: &DoctorArgs) -> ExitCode {
    let url: http::Uri = match args.url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {}: {e}", args.url);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let token = args.token.clone().or_else(|| {
        Env::load(cli.env_file.as_deref())
            .ok()
            .and_then(|env| {
                env.get("GATEHOUSE_DIAGNOSTICS_TOKEN")
                    .map(|v| v.value.clone())
            })
            .filter(|t| !t.trim().is_empty())
    });
    let opts = crate::tools::doctor::Options {
        url,
        connect_to: args.connect_to.clone(),
        ca: args.ca.clone(),
        token,
        api: args.api.clone(),
        admin: args.admin.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let Some(rt) =
        crate::ops::supervisor::runtime(&mut tokio::runtime::Builder::new_current_thread())
    else {
        return ExitCode::FAILURE;
    };
    let outcome = rt.block_on(crate::tools::doctor::run(&opts));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).expect("invariant: the outcome serializes")
        );
    } else {
        print!("{}", outcome.render());
    }
    if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The libraries under the request path log what peers send them (h2
/// writes a WARN line per unsolicited PING ACK, issue 10 point 10): only
/// their errors are shown unless `RUST_LOG` asks for more. Gatehouse's own
/// peer-caused lines are limited per call site (`log_limit`).
pub(crate) const DEFAULT_LOG_FILTER: &str =
    "info,h2=error,hyper=error,rustls=error,tokio_rustls=error";

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // AliasVault's containers log to stdout; so does Gatehouse.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(crate::proxy::access_log::LineWriter::default)
        .init();
}

fn load(cli: &Cli) -> Result<Config, config::ConfigError> {
    let env = Env::load(cli.env_file.as_deref())?;
    config::load(&Source::discover(cli.config.as_deref()), &env)
}

fn run(cli: &Cli) -> ExitCode {
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One worker: the single-threaded scheduler does the same work without
    // work-stealing queues and cross-thread wake-ups (cheaper per request,
    // see docs/benchmarks.md). Blocking work (DNS) still goes to the
    // blocking pool either way.
    let mut builder = if cfg.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.workers);
        b
    };
    let Some(rt) = crate::ops::supervisor::runtime(&mut builder) else {
        return ExitCode::FAILURE;
    };
    let origin = crate::ops::supervisor::Origin {
        source: Source::discover(cli.config.as_deref()),
        env_file: cli.env_file.clone(),
    };
    rt.block_on(crate::ops::supervisor::serve_until_signal(
        cfg,
        Some(origin),
        |_| {},
    ))
}

fn check(cli: &Cli) -> ExitCode {
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The same plan start and reload commit: what it refuses, they refuse.
    let plan = match crate::ops::plan::plan(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    print!("{}", describe(&cfg, &plan));
    ExitCode::SUCCESS
}

/// One request to the running server's metrics listener.
fn admin_request(cli: &Cli, method: http::Method, path: &str) -> ExitCode {
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(addr) = cfg.metrics else {
        eprintln!("error: the metrics listener is disabled ([metrics] enabled = false)");
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(http::StatusCode, String), Box<dyn std::error::Error + Send + Sync>> = rt
        .block_on(async {
            use http_body_util::BodyExt;
            let stream =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                    .await??;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, addr.to_string())
                .body(http_body_util::Empty::<bytes::Bytes>::new())?;
            let res =
                tokio::time::timeout(Duration::from_secs(60), sender.send_request(req)).await??;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        });
    match result {
        Ok((status, body)) => {
            print!("{body}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: cannot reach the server at http://{addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cert(cli: &Cli) -> ExitCode {
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match served_certificate(&cfg) {
        Ok(Some((info, renewal))) => {
            print!("{}", describe_cert(&info, renewal));
            let left = info.not_after_unix - certs::unix_now();
            if left < 7 * 86_400 {
                eprintln!("warning: the certificate expires in {} hours", left / 3600);
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!(
                "no certificate yet: a self-signed one is generated for {:?} at start-up",
                cfg.hostname
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// What a server started from `cfg` serves (the files it reads; hot reload
/// keeps the running process on them), with its renewal time when
/// Gatehouse renews it.
pub(crate) fn served_certificate(
    cfg: &Config,
) -> Result<Option<(certs::CertInfo, Option<i64>)>, config::ConfigError> {
    if cfg.letsencrypt_enabled || cfg.acme.is_some() {
        let (cert, key) = certs::live_paths(&cfg.letsencrypt_dir, &cfg.hostname);
        let source = if cfg.acme.is_some() {
            certs::CertSource::Acme(cert.clone())
        } else {
            certs::CertSource::Certbot(cert.clone())
        };
        if let Ok(l) = certs::load_pair(&cert, &key, source) {
            let renewal = cfg.acme.is_some().then(|| {
                crate::certs::acme::renew_at(l.info.not_before_unix, l.info.not_after_unix)
            });
            return Ok(Some((l.info, renewal)));
        }
    }
    Ok(match certs::plan(&cfg.tls, &cfg.hostname)? {
        certs::Plan::Use(l) => Some((l.info, None)),
        certs::Plan::Generate(_) => None,
    })
}

fn describe_cert(info: &certs::CertInfo, renewal: Option<i64>) -> String {
    use std::fmt::Write;
    let source = match &info.source {
        certs::CertSource::File(p) => format!("file {}", p.display()),
        certs::CertSource::Certbot(p) => format!("file {} (certbot layout)", p.display()),
        certs::CertSource::Acme(p) => format!("ACME {}", p.display()),
        certs::CertSource::Generated(p) => format!("self-signed {}", p.display()),
        certs::CertSource::Ephemeral => "self-signed (memory)".to_string(),
    };
    let source = if info.self_signed && matches!(info.source, certs::CertSource::File(_)) {
        format!("self-signed, {source}")
    } else {
        source
    };
    let renewal = match renewal {
        Some(at) => format!(
            "{} (in {} hours)",
            rfc3339(at),
            (at - certs::unix_now()).max(0) / 3600
        ),
        None => "not renewed by Gatehouse".to_string(),
    };
    let mut out = String::new();
    for name in &info.sans {
        let name = name.split_once(':').map_or(name.as_str(), |(_, n)| n);
        let _ = writeln!(out, "{name}");
        let _ = writeln!(out, "  source:       {source}");
        let _ = writeln!(out, "  issuer:       {}", info.issuer);
        let _ = writeln!(out, "  SANs:         {}", info.sans.join(", "));
        let _ = writeln!(out, "  SHA-256:      {}", info.fingerprint);
        let _ = writeln!(out, "  not after:    {}", rfc3339(info.not_after_unix));
        let _ = writeln!(out, "  next renewal: {renewal}");
    }
    out
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The effective configuration as `gatehouse check` prints it.
pub fn describe(cfg: &Config, plan: &crate::ops::plan::Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let source = cfg.source.as_ref().map_or_else(
        || "built-in default (AliasVault layout)".to_string(),
        |p| p.display().to_string(),
    );
    let _ = writeln!(out, "configuration: {source}: ok");
    let _ = writeln!(out, "workers: {}", cfg.workers);
    let _ = writeln!(out, "listeners:");
    for ip in &cfg.bind {
        let addr = |port| std::net::SocketAddr::new(*ip, port);
        let http_mode = if cfg.force_https_redirect {
            format!("redirect to https, port {}", cfg.https_port)
        } else {
            "routes".to_string()
        };
        // The public port, when the listener binds another (a container).
        let public = |listen: u16, public: u16| {
            if listen == public {
                String::new()
            } else {
                format!("public port {public}; ")
            }
        };
        let _ = writeln!(
            out,
            "  http  {} ({}{http_mode})",
            addr(cfg.listen_http()),
            public(cfg.listen_http(), cfg.http_port)
        );
        let _ = writeln!(
            out,
            "  https {} ({}routes; HTTP/2 and HTTP/1.1)",
            addr(cfg.listen_https()),
            public(cfg.listen_https(), cfg.https_port)
        );
    }
    let l = &cfg.listener;
    let _ = writeln!(
        out,
        "limits: {} connections ({} per address), header timeout {}, keep-alive {}, TLS handshake {}, {} headers / {} head / {} request line, {} HTTP/2 streams{}",
        l.max_connections,
        l.max_connections_per_ip,
        human_duration(l.header_timeout),
        human_duration(l.keepalive_timeout),
        human_duration(l.handshake_timeout),
        l.max_headers,
        human_size(cfg.max_header_bytes as u64),
        human_size(cfg.max_uri_bytes as u64),
        l.h2_max_concurrent_streams,
        if l.proxy_protocol { ", PROXY protocol from trusted peers" } else { "" }
    );
    let _ = writeln!(
        out,
        "metrics: {}",
        cfg.metrics.map_or_else(
            || "disabled".to_string(),
            |a| format!("http://{a} (/metrics, /healthz, /readyz, POST /reload)")
        )
    );
    let _ = writeln!(
        out,
        "diagnostics: {}",
        if cfg.diagnostics_token.is_some() {
            "on (requests with the Gatehouse-Diagnostics token; see `gatehouse doctor`)"
        } else {
            "off"
        }
    );
    let trusted: Vec<String> = cfg
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        out,
        "trusted proxies: {}",
        if trusted.is_empty() {
            "none".to_string()
        } else {
            trusted.join(", ")
        }
    );
    let _ = writeln!(out, "routes:");
    let runtime = Runtime::build(
        cfg.clone(),
        None,
        &crate::runtime::metrics::Metrics::default(),
        None,
    );
    for (path, r) in runtime.router.iter() {
        let mut extras = format!(
            "timeout {}, websocket idle {}, max body {} (read ahead {}, {} between reads)",
            human_duration(r.timeout),
            human_duration(r.websocket_timeout),
            human_size(r.max_body),
            human_size(r.request_buffer),
            human_duration(r.client_body_timeout)
        );
        if let Some(p) = &r.forwarded_prefix {
            let _ = write!(extras, ", X-Forwarded-Prefix {}", p.to_str().unwrap_or("?"));
        }
        if r.forwarded_for == config::ForwardedFor::Append {
            extras.push_str(", X-Forwarded-For appended");
        }
        let list = |l: &[crate::base::cidr::Cidr]| {
            l.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !r.access.allow.is_empty() {
            let _ = write!(extras, ", allow {}", list(&r.access.allow));
        }
        if !r.access.deny.is_empty() {
            let _ = write!(extras, ", deny {}", list(&r.access.deny));
        }
        if !r.access.allow.is_empty() || !r.access.deny.is_empty() {
            extras.push_str(match r.access.on_deny {
                config::OnDeny::Fallthrough => ", refused clients fall through",
                config::OnDeny::Forbidden => ", refused clients get 403",
            });
        }
        if let Some(route_cfg) = cfg.routes.iter().find(|c| c.path == path) {
            if route_cfg.case_insensitive {
                extras.push_str(", case-insensitive");
            }
            if route_cfg.allow_encoded_slash {
                extras.push_str(", %2F allowed");
            }
            if route_cfg.upgrades != ["websocket"] {
                let _ = write!(extras, ", upgrades {}", route_cfg.upgrades.join(" "));
            }
            if let Some(rl) = route_cfg.rate_limit {
                let _ = write!(
                    extras,
                    ", rate limit {}/s burst {}",
                    rl.per_second, rl.burst
                );
            }
        }
        let target = match cfg.routes.iter().find(|c| c.path == path) {
            Some(c) if c.servers.len() > 1 => {
                let urls: Vec<&str> = c.servers.iter().map(|s| s.url.as_str()).collect();
                let rule = match c.balance {
                    config::model::Balance::RoundRobin => "round robin",
                    config::model::Balance::LeastOutstanding => "least outstanding",
                };
                let health = c.health_check.as_ref().map_or_else(String::new, |h| {
                    format!(
                        ", health check {} every {} (out after {}, back after {})",
                        h.path,
                        human_duration(h.interval),
                        h.unhealthy,
                        h.healthy
                    )
                });
                format!("[{}] ({rule}{health})", urls.join(", "))
            }
            _ => r.upstream.url.clone(),
        };
        let _ = writeln!(out, "  {path} -> {target} ({extras})");
    }
    let certs = &plan.certs;
    let cert = match &certs.generated {
        None => certs.loaded.info.to_string(),
        Some(generated) => {
            let at = match &cfg.tls {
                config::TlsSettings::Files { cert, .. } => format!(" at {}", cert.display()),
                config::TlsSettings::Ephemeral => String::new(),
            };
            format!(
                "self-signed for {:?} will be generated{at} ({})",
                cfg.hostname, generated.reason
            )
        }
    };
    match &certs.awaiting {
        Some(live) => {
            let _ = writeln!(
                out,
                "certificate: {} not present yet; until then: {cert}",
                live.display()
            );
        }
        None => {
            let _ = writeln!(out, "certificate: {cert}");
        }
    }
    if let Some(a) = &cfg.acme {
        let challenge = match a.challenge {
            config::Challenge::Http01 => "http-01",
            config::Challenge::TlsAlpn01 => "tls-alpn-01",
        };
        let mut names = vec![cfg.hostname.clone()];
        names.extend(a.extra_names.iter().cloned());
        let _ = writeln!(
            out,
            "acme: {} via {challenge} for {}{}{}",
            a.directory,
            names.join(", "),
            a.email
                .as_ref()
                .map(|e| format!(", contact {e}"))
                .unwrap_or_default(),
            if a.eab.is_some() {
                ", external account binding"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "restart required to change: {} (a reload keeps the running values)",
        crate::ops::plan::RESTART_ONLY
    );
    out
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn human_size(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}
