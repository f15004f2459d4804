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
    /// Swapped on reload (the ACME ALPN may change); a handshake loads it.
    pub tls: ArcSwap<rustls::ServerConfig>,
    /// Configuration generation: 1 at start, +1 per successful reload.
    pub generation: std::sync::atomic::AtomicU64,
    pub reload_failures: std::sync::atomic::AtomicU64,
    pub certs: Arc<CertResolver>,
    pub conns: listen::ConnCounts,
    /// HTTP-01 challenges in progress (token → key authorization).
    pub acme_tokens: crate::acme::Tokens,
    pub metrics: Arc<crate::metrics::Metrics>,
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

/// One bound listening socket and the switch that stops its accept loop.
struct Bound {
    kind: Kind,
    /// The address as configured (port 0 for "any"), used to match reloads.
    requested: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// A running server.
pub struct Server {
    pub http_addrs: Vec<SocketAddr>,
    pub https_addrs: Vec<SocketAddr>,
    pub cert: CertInfo,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<Bound>,
    accept_loops: JoinSet<()>,
    connections: TaskTracker,
    /// Certificate watcher and ACME manager; replaced on reload, aborted on
    /// shutdown.
    background: JoinSet<()>,
    /// The metrics/health/reload listener's address, when it is up.
    pub metrics_addr: Option<SocketAddr>,
    admin: Option<tokio::task::JoinHandle<()>>,
    admin_commands: Option<tokio::sync::mpsc::Receiver<crate::admin::Command>>,
}

/// The certificate side built from one configuration.
struct Certs {
    initial: tls::Initial,
    acme_alpn: bool,
}

fn prepare_certs(config: &Config) -> Result<Certs, ConfigError> {
    Ok(Certs {
        initial: tls::initial(config)?,
        acme_alpn: config
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge == crate::config::Challenge::TlsAlpn01),
    })
}

/// The watcher of the served files and the ACME manager, for `config`.
fn spawn_background(
    config: &Config,
    watch_pair: Option<(std::path::PathBuf, std::path::PathBuf)>,
    shared: &Arc<Shared>,
) -> JoinSet<()> {
    let mut background = JoinSet::new();
    if let Some((cert, key)) = watch_pair {
        let source: fn(std::path::PathBuf) -> tls::CertSource = if config.acme.is_some() {
            tls::CertSource::Acme
        } else if config.letsencrypt_enabled {
            tls::CertSource::Certbot
        } else {
            tls::CertSource::File
        };
        background.spawn(tls::watch(shared.certs.clone(), cert, key, source));
    }
    if let Some(settings) = &config.acme {
        let manager = crate::acme::Manager {
            settings: settings.clone(),
            hostname: config.hostname.clone(),
            letsencrypt_dir: config.letsencrypt_dir.clone(),
            resolver: shared.certs.clone(),
            tokens: shared.acme_tokens.clone(),
        };
        background.spawn(manager.run());
    }
    background
}

fn check_ports(config: &Config) -> Result<(), ConfigError> {
    let (http, https) = (config.listen_http(), config.listen_https());
    if http == https && http != 0 {
        return Err(ConfigError::other(
            origin(config),
            format!("the HTTP and HTTPS listeners would both bind port {http}"),
        ));
    }
    Ok(())
}

/// The listening addresses a configuration asks for.
fn wanted(config: &Config) -> Vec<(Kind, SocketAddr)> {
    let mut out = Vec::new();
    for &ip in &config.bind {
        out.push((Kind::Http, SocketAddr::new(ip, config.listen_http())));
        out.push((Kind::Https, SocketAddr::new(ip, config.listen_https())));
    }
    out
}

/// Binds the addresses not already bound. All or nothing: on an error the
/// sockets bound so far are dropped and the error names the address.
fn bind_new(
    config: &Config,
    want: &[(Kind, SocketAddr)],
) -> Result<Vec<(Kind, SocketAddr, tokio::net::TcpListener)>, StartError> {
    let mut out = Vec::new();
    for &(kind, addr) in want {
        match listen::bind(addr.ip(), addr.port()) {
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

impl Server {
    /// Loads the certificate, binds every listener and starts serving.
    /// Must run inside a Tokio runtime.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        check_ports(&config)?;
        let certs = prepare_certs(&config)?;
        let loaded = certs.initial.loaded;
        let resolver = Arc::new(CertResolver::new(loaded.key.clone()));
        let tls_config = tls::server_config(resolver.clone(), certs.acme_alpn)
            .map_err(|e| ConfigError::other("TLS", e.to_string()))?;
        let bound = bind_new(&config, &wanted(&config))?;
        let local = |k: Kind| -> Vec<SocketAddr> {
            bound
                .iter()
                .filter(|b| b.0 == k)
                .filter_map(|b| b.2.local_addr().ok())
                .collect()
        };
        let (http_addrs, https_addrs) = (local(Kind::Http), local(Kind::Https));
        let watch_pair = certs.initial.watch;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let runtime = Runtime::build(
            config.clone(),
            https_addrs.first().map(SocketAddr::port),
            &metrics,
        );
        log_startup(&runtime, &http_addrs, &https_addrs, &loaded.info);
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            tls: ArcSwap::new(tls_config),
            generation: std::sync::atomic::AtomicU64::new(1),
            reload_failures: Default::default(),
            certs: resolver,
            conns: listen::ConnCounts::default(),
            acme_tokens: crate::acme::Tokens::default(),
            metrics,
        });
        let background = spawn_background(&config, watch_pair, &shared);
        let (shutdown, _) = watch::channel(false);
        // The metrics listener is not worth failing a start for: an address
        // in use is a warning, the proxy serves on.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (metrics_addr, admin) =
            match config.metrics.map(|a| (a, listen::bind(a.ip(), a.port()))) {
                Some((_, Ok(l))) => {
                    let addr = l.local_addr().ok();
                    if let Some(a) = addr {
                        tracing::info!(
                            "metrics and health on http://{a} (/metrics, /healthz, /readyz)"
                        );
                    }
                    (
                        addr,
                        Some(tokio::spawn(crate::admin::serve(l, shared.clone(), tx))),
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
            connections: TaskTracker::new(),
            background,
            metrics_addr,
            admin,
            admin_commands: Some(rx),
        };
        server.serve(bound);
        server.spawn_health_checks();
        Ok(server)
    }

    fn serve(&mut self, bound: Vec<(Kind, SocketAddr, tokio::net::TcpListener)>) {
        for (kind, requested, listener) in bound {
            let Ok(local) = listener.local_addr() else {
                continue;
            };
            let (stop, stop_rx) = watch::channel(false);
            self.accept_loops.spawn(listen::accept_loop(
                listener,
                kind,
                self.shared.clone(),
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

    /// Swaps in a new configuration, built off to the side: certificates
    /// loaded, new addresses bound, runtime built; only then is anything
    /// changed. Requests in flight finish on the runtime they started with,
    /// upgraded connections own their state, listeners whose address did not
    /// change are kept. On any error nothing changes and the old
    /// configuration keeps serving. Returns the new generation.
    pub async fn apply(&mut self, config: Config) -> Result<u64, ConfigError> {
        let result = self.apply_inner(config);
        if result.is_err() {
            self.shared
                .reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn apply_inner(&mut self, config: Config) -> Result<u64, ConfigError> {
        check_ports(&config)?;
        let certs = prepare_certs(&config)?;
        let want = wanted(&config);
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
        let bound = bind_new(&config, &missing)
            .map_err(|e| ConfigError::other(origin(&config), e.to_string()))?;
        let tls_config = tls::server_config(self.shared.certs.clone(), certs.acme_alpn)
            .map_err(|e| ConfigError::other("TLS", e.to_string()))?;
        // Nothing below can fail: commit.
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
        self.shared.certs.set(certs.initial.loaded.key);
        self.shared.tls.store(tls_config);
        self.background.abort_all();
        self.background = spawn_background(&config, certs.initial.watch, &self.shared);
        let runtime = Runtime::build(
            config,
            self.https_addrs.first().map(SocketAddr::port),
            &self.shared.metrics,
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
        let rt = self.shared.runtime.load_full();
        for (_, route) in rt.router.iter() {
            if route.health_check.is_some() {
                self.background
                    .spawn(crate::runtime::check_health(route.clone()));
            }
        }
    }

    /// The requests of the admin listener (`POST /reload`), for the loop
    /// that owns this server; taken once.
    pub fn take_admin_commands(
        &mut self,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::admin::Command>> {
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
        self.background.abort_all();
        if let Some(admin) = &self.admin {
            admin.abort();
        }
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
