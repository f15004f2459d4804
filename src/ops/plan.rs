//! One plan/commit path for `gatehouse check`, start and reload (issue 12).
//!
//! [`plan`] works out everything a configuration asks for and refuses
//! whatever cannot work — the port rules, the certificate files — while
//! touching nothing: it reads files and may generate a key in memory, but
//! writes, binds and swaps nothing. `gatehouse check` prints a plan;
//! `Server::start` and `Server::apply` commit one (bind, write the
//! certificate, swap) only once it exists, so check refuses exactly what
//! start and reload refuse, and a refused reload leaves no trace.
//!
//! What no plan can know ahead is whether an address can be bound: that
//! depends on the machine at the time (another process, the running server
//! itself), so only the commit finds out, and undoes its binds if it fails.

use std::net::SocketAddr;

use crate::certs::CertPlan;
use crate::config::{Challenge, Config, ConfigError};
use crate::conn::Kind;

/// Everything a configuration asks for, worked out off to the side.
pub struct Plan {
    /// The listening addresses, HTTP and HTTPS on every `bind` address.
    pub listeners: Vec<(Kind, SocketAddr)>,
    /// The certificate to serve and the files to write and watch.
    pub certs: CertPlan,
    /// TLS-ALPN-01 challenges are answered: `acme-tls/1` is offered.
    pub acme_alpn: bool,
}

/// Plans `config`. Blocking (file reads, key generation): from async code
/// use [`plan_off_runtime`].
pub fn plan(config: &Config) -> Result<Plan, ConfigError> {
    let (http, https) = (config.listen_http(), config.listen_https());
    if http == https && http != 0 {
        return Err(ConfigError::other(
            origin(config),
            format!("the HTTP and HTTPS listeners would both bind port {http}"),
        ));
    }
    let mut listeners = Vec::new();
    for &ip in &config.bind {
        listeners.push((Kind::Http, SocketAddr::new(ip, http)));
        listeners.push((Kind::Https, SocketAddr::new(ip, https)));
    }
    Ok(Plan {
        listeners,
        certs: crate::certs::plan_certs(config)?,
        acme_alpn: config
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge == Challenge::TlsAlpn01),
    })
}

/// [`plan`] on the blocking pool, so a slow disk never stalls requests on
/// the runtime (with `workers = 1` its only thread serves them).
pub(crate) async fn plan_off_runtime(config: Config) -> Result<(Config, Plan), ConfigError> {
    tokio::task::spawn_blocking(move || plan(&config).map(|p| (config, p)))
        .await
        .unwrap_or_else(|e| Err(ConfigError::caused("configuration", "planning stopped", e)))
}

/// The settings of `new` that a running server started with `running`
/// cannot apply: the worker threads exist and the metrics listener is bound
/// for the life of the process. Each entry reads `key: old -> new`.
pub(crate) fn restart_required(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if running.workers != new.workers {
        out.push(format!("workers: {} -> {}", running.workers, new.workers));
    }
    if running.metrics != new.metrics {
        let show = |m: Option<SocketAddr>| m.map_or_else(|| "off".to_string(), |a| a.to_string());
        out.push(format!(
            "[metrics] listen: {} -> {}",
            show(running.metrics),
            show(new.metrics)
        ));
    }
    if running.cluster != new.cluster {
        let show = |c: &Option<crate::config::ClusterSettings>| {
            c.as_ref()
                .map_or_else(|| "off".to_string(), |c| c.redis_redacted())
        };
        out.push(format!(
            "[cluster]: {} -> {}",
            show(&running.cluster),
            show(&new.cluster)
        ));
    }
    out
}

/// The settings only a restart applies, as `gatehouse check` lists them.
pub(crate) const RESTART_ONLY: &str = "workers, [metrics] listen, [cluster]";

/// The configuration's file, or what stands for it in messages.
pub(crate) fn origin(config: &Config) -> String {
    config
        .source
        .as_ref()
        .map_or_else(|| "configuration".to_string(), |p| p.display().to_string())
}
