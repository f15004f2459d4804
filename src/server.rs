//! Start-up and shutdown: turns a `Config` into bound listeners serving a
//! `Runtime`, and drains them on request.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::listen::{self, Kind};
use crate::runtime::Runtime;
use crate::tls::{self, CertInfo, CertResolver};

/// State shared by every connection. The runtime is swappable; a request
/// loads one snapshot of it.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub tls: Arc<rustls::ServerConfig>,
    pub certs: Arc<CertResolver>,
    pub conns: listen::ConnCounts,
    /// HTTP-01 challenges in progress (token → key authorization).
    pub acme_tokens: crate::acme::Tokens,
}

impl Shared {
    /// Client connections open right now.
    pub fn open_connections(&self) -> usize {
        self.conns.open()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration or certificate problem: exit status 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An address could not be bound: exit status 1.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A running server.
pub struct Server {
    pub http_addrs: Vec<SocketAddr>,
    pub https_addrs: Vec<SocketAddr>,
    pub cert: CertInfo,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_loops: JoinSet<()>,
    connections: TaskTracker,
    /// Certificate watcher and ACME manager; aborted on shutdown.
    background: JoinSet<()>,
}

impl Server {
    /// Loads the certificate, binds every listener and starts serving.
    /// Must run inside a Tokio runtime.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        if config.http_port == config.https_port && config.http_port != 0 {
            return Err(ConfigError::other(
                origin(&config),
                format!("http_port and https_port are both {}", config.http_port),
            )
            .into());
        }
        let initial = tls::initial(&config)?;
        let loaded = initial.loaded;
        let certs = Arc::new(CertResolver::new(loaded.key.clone()));
        let acme_alpn = config
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge == crate::config::Challenge::TlsAlpn01);
        let tls_config = tls::server_config(certs.clone(), acme_alpn)
            .map_err(|e| ConfigError::other("TLS", e.to_string()))?;
        let acme_tokens = crate::acme::Tokens::default();
        let mut background = JoinSet::new();
        if let Some((cert, key)) = initial.watch {
            let source: fn(std::path::PathBuf) -> tls::CertSource = if config.acme.is_some() {
                tls::CertSource::Acme
            } else if config.letsencrypt_enabled {
                tls::CertSource::Certbot
            } else {
                tls::CertSource::File
            };
            background.spawn(tls::watch(certs.clone(), cert, key, source));
        }
        if let Some(settings) = &config.acme {
            let manager = crate::acme::Manager {
                settings: settings.clone(),
                hostname: config.hostname.clone(),
                letsencrypt_dir: config.letsencrypt_dir.clone(),
                resolver: certs.clone(),
                tokens: acme_tokens.clone(),
            };
            background.spawn(manager.run());
        }

        let mut http = Vec::new();
        let mut https = Vec::new();
        for &ip in &config.bind {
            for (port, list) in [
                (config.http_port, &mut http),
                (config.https_port, &mut https),
            ] {
                match listen::bind(ip, port) {
                    Ok(l) => list.push(l),
                    // The default binds IPv6 too; a host without IPv6
                    // (common in containers) still serves IPv4.
                    Err(e) if config.bind_is_default && ip.is_ipv6() => {
                        tracing::warn!("not listening on [{ip}]:{port}: {e}");
                    }
                    Err(source) => {
                        return Err(StartError::Bind {
                            addr: SocketAddr::new(ip, port),
                            source,
                        })
                    }
                }
            }
        }
        let addrs = |l: &Vec<tokio::net::TcpListener>| {
            l.iter()
                .filter_map(|l| l.local_addr().ok())
                .collect::<Vec<_>>()
        };
        let (http_addrs, https_addrs) = (addrs(&http), addrs(&https));
        let runtime = Runtime::build(config, https_addrs.first().map(SocketAddr::port));
        log_startup(&runtime, &http_addrs, &https_addrs, &loaded.info);
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            tls: tls_config,
            certs,
            conns: listen::ConnCounts::default(),
            acme_tokens,
        });
        let (shutdown, rx) = watch::channel(false);
        let connections = TaskTracker::new();
        let mut accept_loops = JoinSet::new();
        for (kind, list) in [(Kind::Http, http), (Kind::Https, https)] {
            for l in list {
                accept_loops.spawn(listen::accept_loop(
                    l,
                    kind,
                    shared.clone(),
                    connections.clone(),
                    rx.clone(),
                ));
            }
        }
        Ok(Server {
            http_addrs,
            https_addrs,
            cert: loaded.info,
            shared,
            shutdown,
            accept_loops,
            connections,
            background,
        })
    }

    /// Stops accepting, asks every connection to finish its in-flight
    /// requests, and waits up to `grace` for them. Returns true when all
    /// finished in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        let _ = self.shutdown.send(true);
        self.background.abort_all();
        while self.accept_loops.join_next().await.is_some() {}
        self.connections.close();
        let drained = tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                ?grace,
                "grace period over; closing the remaining connections"
            );
        }
        drained
    }
}

fn origin(config: &Config) -> String {
    config
        .source
        .as_ref()
        .map_or_else(|| "configuration".to_string(), |p| p.display().to_string())
}

fn log_startup(rt: &Runtime, http: &[SocketAddr], https: &[SocketAddr], cert: &CertInfo) {
    let cfg = &rt.config;
    for a in http {
        let mode = if cfg.force_https_redirect {
            "redirects to HTTPS"
        } else {
            "serves routes"
        };
        tracing::info!("listening on http://{a} ({mode})");
    }
    for a in https {
        tracing::info!("listening on https://{a}");
    }
    for (path, route) in rt.router.iter() {
        tracing::info!("route {path} -> {}", route.upstream.url);
    }
    tracing::info!("certificate: {cert}");
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    for var in &cfg.unsupported_vars {
        tracing::warn!("{var} is set but not supported yet; it is ignored");
    }
}
