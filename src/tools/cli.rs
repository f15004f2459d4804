//! The command line. Doc comments here are the `--help` text.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, Env, Source};

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
    match load(cli) {
        Ok(cfg) => super::check::run(&cfg),
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            ExitCode::from(EXIT_CONFIG)
        }
    }
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
    match load(cli) {
        Ok(cfg) => super::cert::run(&cfg),
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
