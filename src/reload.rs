//! Reload: SIGHUP and changes to the configuration file or `.env` (polled,
//! debounced) load the configuration again through the one loader and swap
//! it in with `Server::apply`. A failure is logged with the same
//! `file:line` text as `gatehouse check` and the old configuration serves on.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{self, ConfigError, Env, Source};
use crate::server::Server;

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
) -> Result<u64, ConfigError> {
    let loaded =
        Env::load(origin.env_file.as_deref()).and_then(|env| config::load(&origin.source, &env));
    let result = match loaded {
        Ok(cfg) => server.apply(cfg).await,
        Err(e) => {
            server
                .shared
                .reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(e)
        }
    };
    if let Err(e) = &result {
        tracing::error!(
            "reload ({trigger}) rejected, the previous configuration stays in service:\n{e}"
        );
    }
    result
}

/// Size and modification time of each watched file (`None` if absent):
/// what configuration reload and certificate reload compare.
pub fn stamps(paths: &[PathBuf]) -> Vec<Option<(u64, Option<SystemTime>)>> {
    paths.iter().map(|p| stamp(p)).collect()
}

fn stamp(p: &Path) -> Option<(u64, Option<SystemTime>)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

/// How often watched files are checked; a change is applied once it has
/// stayed the same for one more check (an editor's save in several writes
/// is one reload).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);
