//! The metrics and health listener (default 127.0.0.1:9090): `/metrics`
//! (Prometheus text), `/healthz` (process up), `/readyz` (listening, and
//! every route's upstream reached at least once or marked down), and
//! `POST /reload` from loopback, which `gatehouse reload` calls.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::ops::state::Shared;

/// A request for the serving loop, which owns the server.
pub enum Command {
    /// Answered with the new generation, or why the reload was refused
    /// (its whole chain of causes).
    Reload(oneshot::Sender<Result<u64, Box<dyn std::error::Error + Send + Sync>>>),
}

/// Accepts until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, commands: mpsc::Sender<Command>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off as the main
                // listener does instead of spinning on the error.
                static FAILED: crate::base::log_limit::Limit = crate::base::log_limit::Limit::new();
                if let Some(suppressed) = FAILED.allow() {
                    tracing::warn!(suppressed, "metrics listener: accept failed: {e}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (shared, commands) = (shared.clone(), commands.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, peer, shared.clone(), commands.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

async fn answer(
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut res = text(StatusCode::OK, render(&shared));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let rt = shared.runtime.load_full();
            // Reached, or marked down (a connect error or a failed health
            // check): either way its state is known.
            let unknown = |r: &crate::runtime::RouteRt| {
                !r.metrics.reached.load(Relaxed)
                    && !r.metrics.probed.load(Relaxed)
                    && r.metrics.connect_errors.load(Relaxed) == 0
                    && r.servers.iter().all(|s| s.healthy.load(Relaxed))
            };
            // A route no request has used yet is probed now (one connect
            // per server), so a container is healthy before its first
            // visitor (issue 11) without any traffic of ours otherwise.
            let probes: Vec<_> = rt
                .router
                .iter()
                .filter(|(_, r)| unknown(r))
                .map(|(_, r)| crate::runtime::health::probe_once(r.clone()))
                .collect();
            futures_util::future::join_all(probes).await;
            let waiting: Vec<String> = rt
                .router
                .iter()
                .filter(|(_, r)| unknown(r))
                .map(|(p, r)| format!("{p} -> {}", r.upstream.url))
                .collect();
            // Redis is reported, never waited for: while it is out the
            // replica serves on its fallback and stays ready (issue 14).
            let redis = match &shared.cluster {
                Some(c) if c.is_up() => "redis: reachable\n",
                Some(_) => "redis: unreachable (rate limits follow on_redis_error)\n",
                None => "",
            };
            if waiting.is_empty() {
                text(StatusCode::OK, format!("ready\n{redis}"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "waiting for the first contact with:\n{}\n{redis}",
                        waiting.join("\n")
                    ),
                )
            }
        }
        (&Method::POST, "/reload") => {
            if !crate::base::cidr::canonical(peer.ip()).is_loopback() {
                return Ok(text(
                    StatusCode::FORBIDDEN,
                    "reload is allowed from loopback only\n",
                ));
            }
            let (tx, rx) = oneshot::channel();
            if commands.send(Command::Reload(tx)).await.is_err() {
                return Ok(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this process cannot reload\n",
                ));
            }
            match rx.await {
                Ok(Ok(generation)) => text(
                    StatusCode::OK,
                    format!("config reloaded (generation {generation})\n"),
                ),
                Ok(Err(e)) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{}\n", crate::base::error_chain::ErrorChain(&*e)),
                ),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "reload not handled\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// The exposition with the gauges owned by the server: configuration
/// generation, reload failures, certificate expiry per name.
pub fn render(shared: &Shared) -> String {
    let mut extra = vec![
        (
            "gatehouse_config_generation",
            "Configurations loaded so far (1 at start, +1 per reload).",
            String::new(),
            shared.generation.load(Relaxed) as f64,
        ),
        (
            "gatehouse_config_reload_failures_total",
            "Reloads refused (the old configuration kept serving).",
            String::new(),
            shared.reload_failures.load(Relaxed) as f64,
        ),
        (
            "gatehouse_config_restart_pending",
            "Settings changed in the configuration that only a restart applies (workers, [metrics] listen).",
            String::new(),
            shared.restart_pending.load(Relaxed) as f64,
        ),
        (
            "gatehouse_certificate_reload_failures_total",
            "Changed certificate files that could not be used (the previous certificate kept serving).",
            String::new(),
            shared.certs.rejected_reloads.load(Relaxed) as f64,
        ),
        (
            "gatehouse_access_log_dropped_total",
            "Access log lines dropped because stdout could not keep up.",
            String::new(),
            crate::proxy::access_log::DROPPED.load(Relaxed) as f64,
        ),
    ];
    if let Some(cluster) = &shared.cluster {
        extra.extend(cluster.series());
    }
    if let Ok(info) =
        crate::certs::inspect(&shared.certs.current(), crate::certs::CertSource::Ephemeral)
    {
        for san in &info.sans {
            let name = san.split_once(':').map_or(san.as_str(), |(_, n)| n);
            extra.push((
                "gatehouse_certificate_expiry_timestamp_seconds",
                "When the served certificate expires (Unix time), per name.",
                format!("{{name=\"{}\"}}", crate::runtime::metrics::esc(name)),
                info.not_after_unix as f64,
            ));
        }
    }
    shared.metrics.render(&extra)
}
