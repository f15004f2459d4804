//! The state of a route's servers as health checks see it: active checks
//! (`health_check`) and the one-off probe `/readyz` makes of routes no
//! request has used yet.

use std::sync::Arc;

use super::RouteRt;

/// One TCP connect to each of a route's servers, when `/readyz` (a
/// container's HEALTHCHECK) asks about a route no request has used yet.
/// Reached or refused, the state is known; neither counts as a request or
/// an error.
pub async fn probe_once(route: Arc<RouteRt>) {
    use std::sync::atomic::Ordering::Relaxed;
    for server in &route.servers {
        let _ = tokio::time::timeout(
            route.connect_timeout,
            tokio::net::TcpStream::connect(server.authority.as_str()),
        )
        .await;
    }
    route.metrics.probed.store(true, Relaxed);
}

/// Active health checks of one route's servers, for as long as its
/// runtime serves (the task is replaced on reload). `GET path` on each
/// server every interval; 2xx and 3xx are good.
pub async fn check_health(route: Arc<RouteRt>) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(hc) = route.health_check.clone() else {
        return;
    };
    let mut streaks = vec![(0u32, 0u32); route.servers.len()];
    let mut tick = tokio::time::interval(hc.interval);
    loop {
        tick.tick().await;
        for (i, server) in route.servers.iter().enumerate() {
            let uri = format!("http://{}{}", server.authority, hc.path);
            let Ok(req) = http::Request::get(uri)
                .header(http::header::HOST, server.authority.as_str())
                .body(crate::upstream::body::UpstreamBody::empty())
            else {
                continue;
            };
            let limit = hc.interval.min(route.timeout);
            let good = matches!(
                tokio::time::timeout(limit, route.client.request(req, &())).await,
                Ok(Ok(res)) if res.status().is_success() || res.status().is_redirection()
            );
            let (ok, bad) = &mut streaks[i];
            if good {
                *ok += 1;
                *bad = 0;
                if !server.healthy.load(Relaxed) && *ok >= hc.healthy {
                    server.healthy.store(true, Relaxed);
                    tracing::info!(route = route.path, upstream = %server.authority, "health check passed: server back in service");
                }
            } else {
                *bad += 1;
                *ok = 0;
                if server.healthy.load(Relaxed) && *bad >= hc.unhealthy {
                    server.healthy.store(false, Relaxed);
                    tracing::warn!(route = route.path, upstream = %server.authority, "health check failed: server taken out of service");
                }
            }
        }
    }
}
