//! The supervisor of a running server: it owns the signals (SIGTERM and
//! SIGINT drain and stop; SIGHUP reloads), the watch of the configuration
//! file and `.env` (polled, debounced) and the admin listener's commands.
//! A reload loads the configuration again through the one loader and swaps
//! it in with `Server::apply`; a failure is logged with the same
//! `file:line` text as `gatehouse check` and the old configuration serves on.

use std::path::PathBuf;
use std::time::Duration;

use std::process::ExitCode;

use crate::base::error_chain::ErrorChain;
use crate::config::{self, Config, ConfigError, Env, Source, EXIT_CONFIG};
use crate::ops::server::{Server, StartError};

/// Where a running server's configuration comes from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub source: Source,
    /// `--env-file`, or `None` for `.env` in the working directory.
    pub env_file: Option<PathBuf>,
}

impl Origin {
    /// The files whose changes trigger a reload.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Source::File(p) = &self.source {
            out.push(p.clone());
        }
        out.push(
            self.env_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(".env")),
        );
        out
    }
}

/// Loads `origin` again and applies it. Load errors count as reload
/// failures like apply errors do.
pub async fn reload(
    server: &mut Server,
    origin: &Origin,
    trigger: &str,
) -> Result<u64, StartError> {
    // File reads on the blocking pool: with `workers = 1` the runtime
    // thread is the only one serving requests (issue 12).
    let (env_file, source) = (origin.env_file.clone(), origin.source.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        Env::load(env_file.as_deref()).and_then(|env| config::load(&source, &env))
    })
    .await
    .unwrap_or_else(|e| Err(ConfigError::caused("configuration", "not read", e)));
    let result = match loaded {
        Ok(cfg) => server.apply(cfg).await,
        Err(e) => {
            server
                .shared
                .reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(StartError::Config(e))
        }
    };
    if let Err(e) = &result {
        tracing::error!(
            "reload ({trigger}) rejected, the previous configuration stays in service:\n{}",
            ErrorChain(e)
        );
    }
    result
}

/// How often watched files are checked; a change is applied once it has
/// stayed the same for one more check (an editor's save in several writes
/// is one reload).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Builds a runtime with I/O and timers, or says why it cannot.
pub fn runtime(builder: &mut tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the runtime: {e}"))
        .ok()
}

/// Serves until SIGTERM or SIGINT, then drains for the grace period.
/// With an `origin`, SIGHUP and changes to its files reload the
/// configuration. `started` runs once every listener is bound.
pub async fn serve_until_signal(
    cfg: Config,
    origin: Option<Origin>,
    started: impl FnOnce(&Server),
) -> ExitCode {
    // Stamped before the server is up and announced: a change made once
    // it is listening is a change, never the starting point.
    let watched = origin.as_ref().map(|o| o.watched()).unwrap_or_default();
    let mut seen = crate::base::files::stamps(&watched).await;
    let mut server = match Server::start(cfg).await {
        Ok(s) => s,
        Err(StartError::Config(e)) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::FAILURE;
        }
    };
    started(&server);
    let mut pending: Option<Vec<_>> = None;
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    let mut hangup = hangup_signal();
    let mut commands = server.take_admin_commands();
    let stop = wait_for_signal();
    tokio::pin!(stop);
    let signal = loop {
        tokio::select! {
            signal = &mut stop => break signal,
            Some(cmd) = next_command(&mut commands) => {
                let crate::ops::admin::Command::Reload(reply) = cmd;
                let result = match &origin {
                    Some(o) => reload(&mut server, o, "gatehouse reload").await.map_err(Into::into),
                    None => Err("this process has no configuration file to reload".into()),
                };
                let _ = reply.send(result);
            }
            () = next_hangup(&mut hangup) => {
                if let Some(o) = &origin {
                    let _ = reload(&mut server, o, "SIGHUP").await;
                }
            }
            _ = tick.tick(), if origin.is_some() => {
                let now = crate::base::files::stamps(&watched).await;
                match &pending {
                    // Settled since the last check: apply it once.
                    Some(p) if *p == now => {
                        pending = None;
                        seen = now;
                        if let Some(o) = &origin {
                            let _ = reload(&mut server, o, "file change").await;
                        }
                    }
                    _ if now != seen => pending = Some(now),
                    _ => pending = None,
                }
            }
        }
    };
    // The grace period of the configuration in service: a reload changes it.
    let grace = server.shared.runtime.load().config.grace_period;
    tracing::info!(
        "{signal} received: no new connections, finishing in-flight requests (grace {grace:?})"
    );
    let drained = server.shutdown(grace).await;
    tracing::info!(drained, "stopped");
    ExitCode::SUCCESS
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
}

/// The next admin command; never when there is no admin listener.
async fn next_command(
    rx: &mut Option<tokio::sync::mpsc::Receiver<crate::ops::admin::Command>>,
) -> Option<crate::ops::admin::Command> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves on SIGHUP; never where there is no such signal.
async fn next_hangup(h: &mut Hangup) {
    #[cfg(unix)]
    if let Some(s) = h {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending::<()>().await
}

async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
