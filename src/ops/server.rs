//! Start-up and shutdown: turns a `Config` into bound listeners serving a
//! `Runtime`, and drains them on request.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::certs::{self, CertInfo, CertResolver};
use crate::config::{Config, ConfigError};
use crate::conn::{self, Kind};
use crate::ops::plan;
use crate::runtime::Runtime;

pub use crate::ops::state::Shared;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration or certificate problem: exit status 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An address could not be bound: exit status 1.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// rustls refused the server configuration (a broken crypto provider).
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
}

/// One bound listening socket and the switch that stops its accept loop.
struct Bound {
    kind: Kind,
    /// The address as configured (port 0 for "any"), used to match reloads.
    requested: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// A background task started for some settings, kept across a reload that
/// leaves them unchanged and aborted when dropped.
struct Background<K> {
    settings: K,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Drop for Background<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the certificate watcher watches: the pair and where it came from.
type WatchSettings = (PathBuf, PathBuf, &'static str);
/// What the ACME manager works from.
type AcmeKey = (crate::config::AcmeSettings, String, PathBuf);

/// A running server.
pub struct Server {
    pub http_addrs: Vec<SocketAddr>,
    pub https_addrs: Vec<SocketAddr>,
    pub cert: CertInfo,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<Bound>,
    accept_loops: JoinSet<()>,
    /// The idle-limit sweep (`conn::sweep`): runs through the drain and
    /// stops with the server.
    sweep: Option<tokio_util::task::AbortOnDropHandle<()>>,
    connections: TaskTracker,
    /// The served files' watcher and the ACME manager: a reload that does
    /// not change their settings keeps them (an order in progress runs on).
    cert_watch: Option<Background<WatchSettings>>,
    acme: Option<Background<AcmeKey>>,
    /// Health checks, restarted on reload; the state they keep lives in the
    /// runtime's servers, which a reload carries over.
    health: JoinSet<()>,
    /// The configuration the process started with: what a reload compares
    /// the settings only a restart applies against.
    started_with: Config,
    /// The metrics/health/reload listener's address, when it is up.
    pub metrics_addr: Option<SocketAddr>,
    admin: Option<tokio::task::JoinHandle<()>>,
    /// Pings Redis and moves the cluster's breaker (issue 14).
    cluster_watch: Option<tokio::task::JoinHandle<()>>,
    admin_commands: Option<tokio::sync::mpsc::Receiver<crate::ops::admin::Command>>,
}

/// Binds the addresses not already bound. All or nothing: on an error the
/// sockets bound so far are dropped and the error names the address.
fn bind_new(
    config: &Config,
    want: &[(Kind, SocketAddr)],
) -> Result<Vec<(Kind, SocketAddr, tokio::net::TcpListener)>, StartError> {
    let mut out = Vec::new();
    for &(kind, addr) in want {
        match conn::bind(addr.ip(), addr.port()) {
            Ok(l) => out.push((kind, addr, l)),
            // The default binds IPv6 too; a host without IPv6 (common in
            // containers) still serves IPv4.
            Err(e) if config.bind_is_default && addr.is_ipv6() => {
                tracing::warn!("not listening on {addr}: {e}");
            }
            Err(source) => return Err(StartError::Bind { addr, source }),
        }
    }
    Ok(out)
}

/// Writes what the certificate plan generated, on the blocking pool, and
/// returns the certificate to serve.
async fn commit_certs(certs: certs::CertPlan) -> Result<certs::Loaded, ConfigError> {
    tokio::task::spawn_blocking(move || certs.commit())
        .await
        .map_err(certs::CertError::Stopped)
        .and_then(|written| written)
        .map_err(ConfigError::from)
}

fn tls_config(
    resolver: Arc<CertResolver>,
    acme_alpn: bool,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    certs::server_config(resolver, acme_alpn).map_err(StartError::Tls)
}

impl Server {
    /// Plans `config`, then commits the plan: binds every listener, writes
    /// a generated certificate, and starts serving. Nothing is written
    /// unless the plan succeeded and every address was bound. Must run
    /// inside a Tokio runtime.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let (config, plan) = plan::plan_off_runtime(config).await?;
        let resolver = Arc::new(CertResolver::new(plan.certs.loaded.key.clone()));
        let tls_config = tls_config(resolver.clone(), plan.acme_alpn)?;
        let bound = bind_new(&config, &plan.listeners)?;
        let watch_pair = plan.certs.watch.clone();
        let loaded = commit_certs(plan.certs).await?;
        let local = |k: Kind| -> Vec<SocketAddr> {
            bound
                .iter()
                .filter(|b| b.0 == k)
                .filter_map(|b| b.2.local_addr().ok())
                .collect()
        };
        let (http_addrs, https_addrs) = (local(Kind::Http), local(Kind::Https));
        let cluster = match config.cluster.clone() {
            None => None,
            // Reads the CA file: on the blocking pool.
            Some(settings) => Some(
                tokio::task::spawn_blocking(move || crate::cluster::Cluster::new(settings))
                    .await
                    .map_err(|e| {
                        ConfigError::caused(plan::origin(&config), "[cluster] was not set up", e)
                    })?
                    .map_err(|e| {
                        ConfigError::caused(plan::origin(&config), "[cluster] cannot be set up", e)
                    })?,
            ),
        };
        let metrics = Arc::new(crate::runtime::metrics::Metrics::default());
        let runtime = Runtime::build(
            config.clone(),
            https_addrs.first().map(SocketAddr::port),
            &metrics,
            None,
        );
        log_startup(&runtime, &http_addrs, &https_addrs, &loaded.info);
        let runtime = Arc::new(ArcSwap::from_pointee(runtime));
        let shared = Arc::new(Shared {
            runtime: runtime.clone(),
            connections: Arc::new(conn::Context {
                runtime: runtime.clone(),
                tls: ArcSwap::new(tls_config),
                conns: conn::ConnCounts::default(),
                metrics: metrics.clone(),
            }),
            pipeline: Arc::new(crate::proxy::Context {
                runtime,
                acme_tokens: crate::certs::acme::Tokens::default(),
                certs: resolver.clone(),
                metrics: metrics.clone(),
                cluster: cluster.clone(),
            }),
            certs: resolver,
            metrics,
            generation: std::sync::atomic::AtomicU64::new(1),
            reload_failures: Default::default(),
            restart_pending: Default::default(),
            cluster: cluster.clone(),
        });
        if let Some(c) = &cluster {
            tracing::info!(
                "cluster: replica {} shares state through Redis at {} (keys {}*)",
                c.settings.name,
                c.settings.redis_redacted(),
                c.settings.key_prefix
            );
        }
        let cluster_watch = cluster.map(|c| tokio::spawn(c.watch()));
        let (shutdown, _) = watch::channel(false);
        // The metrics listener is not worth failing a start for: an address
        // in use is a warning, the proxy serves on.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (metrics_addr, admin) = match config.metrics.map(|a| (a, conn::bind(a.ip(), a.port())))
        {
            Some((_, Ok(l))) => {
                let addr = l.local_addr().ok();
                if let Some(a) = addr {
                    tracing::info!(
                        "metrics and health on http://{a} (/metrics, /healthz, /readyz)"
                    );
                }
                (
                    addr,
                    Some(tokio::spawn(crate::ops::admin::serve(
                        l,
                        shared.clone(),
                        tx,
                    ))),
                )
            }
            Some((a, Err(e))) => {
                tracing::warn!("metrics listener not started on {a}: {e}");
                (None, None)
            }
            None => (None, None),
        };
        let mut server = Server {
            http_addrs,
            https_addrs,
            cert: loaded.info,
            shared,
            shutdown,
            listeners: Vec::new(),
            accept_loops: JoinSet::new(),
            sweep: None,
            connections: TaskTracker::new(),
            cert_watch: None,
            acme: None,
            health: JoinSet::new(),
            started_with: config.clone(),
            metrics_addr,
            admin,
            admin_commands: Some(rx),
            cluster_watch,
        };
        server.update_background(&config, watch_pair);
        server.serve(bound);
        server.spawn_health_checks();
        Ok(server)
    }

    fn serve(&mut self, bound: Vec<(Kind, SocketAddr, tokio::net::TcpListener)>) {
        if self.sweep.is_none() {
            let sweep = tokio::spawn(conn::sweep(self.shared.connections.clone()));
            self.sweep = Some(tokio_util::task::AbortOnDropHandle::new(sweep));
        }
        for (kind, requested, listener) in bound {
            let Ok(local) = listener.local_addr() else {
                continue;
            };
            let (stop, stop_rx) = watch::channel(false);
            self.accept_loops.spawn(conn::accept_loop(
                listener,
                kind,
                self.shared.connections.clone(),
                self.shared.pipeline.clone(),
                self.connections.clone(),
                stop_rx,
                self.shutdown.subscribe(),
            ));
            self.listeners.push(Bound {
                kind,
                requested,
                local,
                stop,
            });
        }
        self.http_addrs = self
            .listeners
            .iter()
            .filter(|b| b.kind == Kind::Http)
            .map(|b| b.local)
            .collect();
        self.https_addrs = self
            .listeners
            .iter()
            .filter(|b| b.kind == Kind::Https)
            .map(|b| b.local)
            .collect();
    }

    /// Starts, keeps or replaces the certificate watcher and the ACME
    /// manager for `config`: a task whose settings did not change keeps
    /// running, so a reload neither restarts an ACME order nor loses it.
    fn update_background(&mut self, config: &Config, watch_pair: Option<(PathBuf, PathBuf)>) {
        let source = if config.acme.is_some() {
            "acme"
        } else if config.letsencrypt_enabled {
            "certbot"
        } else {
            "file"
        };
        let watch = watch_pair.map(|(cert, key)| (cert, key, source));
        if self.cert_watch.as_ref().map(|b| &b.settings) != watch.as_ref() {
            self.cert_watch = watch.map(|settings| {
                let kind: fn(PathBuf) -> certs::CertSource = match settings.2 {
                    "acme" => certs::CertSource::Acme,
                    "certbot" => certs::CertSource::Certbot,
                    _ => certs::CertSource::File,
                };
                let task = tokio::spawn(certs::watch(
                    self.shared.certs.clone(),
                    settings.0.clone(),
                    settings.1.clone(),
                    kind,
                ));
                Background { settings, task }
            });
        }
        let acme = config
            .acme
            .clone()
            .map(|s| (s, config.hostname.clone(), config.letsencrypt_dir.clone()));
        if self.acme.as_ref().map(|b| &b.settings) != acme.as_ref() {
            // The old manager (if any) is dropped first: its order's
            // challenge answers are withdrawn by its own guard.
            self.acme = None;
            self.acme = acme.map(|settings| {
                let manager = crate::certs::acme::Manager {
                    settings: settings.0.clone(),
                    hostname: settings.1.clone(),
                    letsencrypt_dir: settings.2.clone(),
                    resolver: self.shared.certs.clone(),
                    tokens: self.shared.pipeline.acme_tokens.clone(),
                    cluster: self.shared.cluster.clone(),
                };
                Background {
                    settings,
                    task: tokio::spawn(manager.run()),
                }
            });
        }
    }

    /// Swaps in a new configuration through the same plan as start and
    /// `gatehouse check`, committed only once the plan succeeded: new
    /// addresses bound, then a generated certificate written, then the swap.
    /// Requests in flight finish on the runtime they started with, upgraded
    /// connections own their state, listeners whose address did not change
    /// are kept, and so are the ACME manager, the certificate watcher and
    /// each server's health when their settings did not change. On any
    /// error nothing changes and the old configuration keeps serving.
    /// Returns the new generation.
    pub async fn apply(&mut self, config: Config) -> Result<u64, StartError> {
        let result = self.apply_inner(config).await;
        if result.is_err() {
            self.shared
                .reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn apply_inner(&mut self, config: Config) -> Result<u64, StartError> {
        let (config, plan) = plan::plan_off_runtime(config).await?;
        let tls_config = tls_config(self.shared.certs.clone(), plan.acme_alpn)?;
        let want = &plan.listeners;
        // Port 0 asks for any port: an existing listener of that kind and
        // address satisfies it.
        let keep = |b: &Bound| {
            want.iter()
                .any(|(k, a)| *k == b.kind && (*a == b.requested || *a == b.local))
        };
        let missing: Vec<(Kind, SocketAddr)> = want
            .iter()
            .filter(|(k, a)| {
                !self
                    .listeners
                    .iter()
                    .any(|b| b.kind == *k && (b.requested == *a || b.local == *a))
            })
            .copied()
            .collect();
        let bound = bind_new(&config, &missing)?;
        let watch_pair = plan.certs.watch.clone();
        // Written only now that every address is bound; on an error here
        // the new sockets are dropped with `bound`.
        let loaded = commit_certs(plan.certs).await?;
        // Nothing below can fail: swap.
        let (stay, gone): (Vec<Bound>, Vec<Bound>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(keep);
        for b in &gone {
            tracing::info!("no longer listening on {}", b.local);
            let _ = b.stop.send(true);
        }
        self.listeners = stay;
        self.serve(bound);
        for b in self.listeners.iter().filter(|b| {
            missing
                .iter()
                .any(|(k, a)| *k == b.kind && (*a == b.requested))
        }) {
            tracing::info!("listening on {}", b.local);
        }
        let restart = plan::restart_required(&self.started_with, &config);
        for change in &restart {
            tracing::warn!(
                "restart required to apply {change}; the running value stays until then"
            );
        }
        self.shared
            .restart_pending
            .store(restart.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.shared.certs.set(loaded.key);
        self.cert = loaded.info;
        self.shared.connections.tls.store(tls_config);
        self.update_background(&config, watch_pair);
        let previous = self.shared.runtime.load_full();
        let runtime = Runtime::build(
            config,
            self.https_addrs.first().map(SocketAddr::port),
            &self.shared.metrics,
            Some(&previous),
        );
        self.shared.runtime.store(Arc::new(runtime));
        self.spawn_health_checks();
        let generation = self
            .shared
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        tracing::info!("config reloaded (generation {generation})");
        Ok(generation)
    }

    /// One health-check task per route that asks for them, on the current
    /// runtime; they join the background set replaced on reload.
    fn spawn_health_checks(&mut self) {
        self.health.abort_all();
        let rt = self.shared.runtime.load_full();
        for (_, route) in rt.router.iter() {
            if route.health_check.is_some() {
                self.health
                    .spawn(crate::runtime::health::check_health(route.clone()));
            }
        }
    }

    /// The requests of the admin listener (`POST /reload`), for the loop
    /// that owns this server; taken once.
    pub fn take_admin_commands(
        &mut self,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::ops::admin::Command>> {
        self.admin_commands.take()
    }

    /// Stops accepting, asks every connection to finish its in-flight
    /// requests, and waits up to `grace` for them. Returns true when all
    /// finished in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        let _ = self.shutdown.send(true);
        for b in &self.listeners {
            let _ = b.stop.send(true);
        }
        self.cert_watch = None;
        self.acme = None;
        self.health.abort_all();
        if let Some(admin) = &self.admin {
            admin.abort();
        }
        if let Some(watch) = &self.cluster_watch {
            watch.abort();
        }
        while self.accept_loops.join_next().await.is_some() {}
        // HTTP/1 connections between requests close now (HTTP/2 ones send
        // GOAWAY on the shutdown signal).
        self.shared.connections.conns.close_idle();
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
}
