//! Serving renewed certificate files without a restart.

use std::path::PathBuf;
use std::sync::Arc;

use super::{fingerprint_of, inspect, load_pair, unix_now, CertResolver, CertSource};
use crate::config::ConfigError;

/// How often watched certificate files are checked.
pub(crate) const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves renewed certificates without a restart (AliasVault #635: nginx
/// kept the old one). Polls the pair's size and modification time; on a
/// change the new pair is loaded and, if it parses and matches, swapped in
/// for new connections. A half-written or mismatched pair is logged and the
/// last good certificate stays. Logs the expiry once a day.
pub(crate) async fn watch(
    resolver: Arc<CertResolver>,
    cert: PathBuf,
    key: PathBuf,
    source: fn(PathBuf) -> CertSource,
) {
    let pair = [cert.clone(), key.clone()];
    // Unknown at first: the first check loads the pair and compares it with
    // the certificate in service (a no-op when equal), so a renewal written
    // between start-up and this task's first run is not missed.
    let mut last = Vec::new();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    let mut next_expiry_log = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= next_expiry_log {
            log_expiry(&resolver);
            next_expiry_log = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400);
        }
        let now = crate::base::files::stamps(&pair).await;
        if now == last || now.iter().any(Option::is_none) {
            continue;
        }
        last = now;
        // File reads and parsing on the blocking pool: with `workers = 1`
        // the runtime thread is the only one serving requests (issue 12).
        let (c, k) = (cert.clone(), key.clone());
        let read = tokio::task::spawn_blocking(move || load_pair(&c, &k, source(c.clone()))).await;
        let Ok(read) = read else {
            continue;
        };
        match read {
            Ok(loaded) => {
                if loaded.info.fingerprint != fingerprint_of(&resolver.current()) {
                    tracing::info!("certificate reloaded: {}", loaded.info);
                    resolver.set(loaded.key);
                }
            }
            Err(e) => {
                resolver
                    .rejected_reloads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "certificate change ignored, the previous one stays in service: {}",
                    crate::base::error_chain::ErrorChain(&ConfigError::from(e))
                )
            }
        }
    }
}

/// The daily expiry line (metrics carry the same as
/// `gatehouse_certificate_expiry_timestamp_seconds`).
pub(crate) fn log_expiry(resolver: &CertResolver) {
    if let Ok(info) = inspect(&resolver.current(), CertSource::Ephemeral) {
        let days = (info.not_after_unix - unix_now()) / 86_400;
        tracing::info!(fingerprint = %info.fingerprint, "certificate {} expires {} ({days} days)", info.sans.join(", "), info.not_after);
    }
}
