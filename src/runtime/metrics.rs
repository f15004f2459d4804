//! The few counters and histograms Gatehouse exports, in Prometheus text
//! format. Labelled by route (its configured path) and status class, never
//! by raw path, so the series count stays bounded. Counters live outside
//! the swapped runtime and survive reloads.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
pub struct RouteMetrics {
    /// By status class: 1xx..5xx.
    requests: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    /// Set once a response came from the upstream (for /readyz).
    pub reached: std::sync::atomic::AtomicBool,
    /// Set once the start-up connect probe of its servers has finished.
    pub probed: std::sync::atomic::AtomicBool,
}

impl RouteMetrics {
    /// Runs once per request when its response head is ready.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    /// Requests no route matched (and Gatehouse's own pages).
    pub unrouted: RouteMetrics,
    pub open_http1: AtomicI64,
    pub open_http2: AtomicI64,
    pub open_websockets: AtomicI64,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Idle connections closed to admit new ones at `max_connections`.
    pub connections_evicted: AtomicU64,
}

impl Metrics {
    /// The counters of the route with this path; the same object across
    /// reloads. Runs when a runtime is built, not per request.
    pub fn route(&self, path: &str) -> Arc<RouteMetrics> {
        let mut map = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(path.to_string()).or_default().clone()
    }

    /// The exposition text. `extra` holds series owned elsewhere (config
    /// generation, certificate expiry) as (name, help, labels, value).
    pub fn render(&self, extra: &[(&str, &str, String, f64)]) -> String {
        let mut out = String::new();
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let all: Vec<(String, &RouteMetrics)> = routes
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref()))
            .chain(std::iter::once(("(none)".to_string(), &self.unrouted)))
            .collect();
        out.push_str("# HELP gatehouse_requests_total Requests by route and status class.\n# TYPE gatehouse_requests_total counter\n");
        for (route, m) in &all {
            for (i, c) in m.requests.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "gatehouse_requests_total{{route=\"{}\",class=\"{}xx\"}} {}",
                    esc(route),
                    i + 1,
                    c.load(Relaxed)
                );
            }
        }
        out.push_str("# HELP gatehouse_request_duration_seconds Time to the response head.\n# TYPE gatehouse_request_duration_seconds histogram\n");
        for (route, m) in &all {
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += m.buckets[i].load(Relaxed);
                let _ = writeln!(out, "gatehouse_request_duration_seconds_bucket{{route=\"{}\",le=\"{b}\"}} {cumulative}", esc(route));
            }
            let count = m.count.load(Relaxed);
            let _ = writeln!(
                out,
                "gatehouse_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {count}",
                esc(route)
            );
            let _ = writeln!(
                out,
                "gatehouse_request_duration_seconds_sum{{route=\"{}\"}} {}",
                esc(route),
                m.sum_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "gatehouse_request_duration_seconds_count{{route=\"{}\"}} {count}",
                esc(route)
            );
        }
        for (name, help, get) in [
            (
                "gatehouse_upstream_connect_errors_total",
                "Upstream connections that failed.",
                (|m: &RouteMetrics| m.connect_errors.load(Relaxed)) as fn(&RouteMetrics) -> u64,
            ),
            (
                "gatehouse_upstream_timeouts_total",
                "Upstream responses that did not come in time.",
                |m: &RouteMetrics| m.timeouts.load(Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (route, m) in &all {
                let _ = writeln!(out, "{name}{{route=\"{}\"}} {}", esc(route), get(m));
            }
        }
        out.push_str("# HELP gatehouse_open_connections Client connections open now.\n# TYPE gatehouse_open_connections gauge\n");
        let _ = writeln!(
            out,
            "gatehouse_open_connections{{protocol=\"http1\"}} {}",
            self.open_http1.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "gatehouse_open_connections{{protocol=\"http2\"}} {}",
            self.open_http2.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "gatehouse_open_connections{{protocol=\"websocket\"}} {}",
            self.open_websockets.load(Relaxed)
        );
        out.push_str("# HELP gatehouse_tls_handshakes_total TLS handshakes completed.\n# TYPE gatehouse_tls_handshakes_total counter\n");
        let _ = writeln!(
            out,
            "gatehouse_tls_handshakes_total {}",
            self.tls_handshakes.load(Relaxed)
        );
        out.push_str("# HELP gatehouse_tls_handshake_failures_total TLS handshakes that failed.\n# TYPE gatehouse_tls_handshake_failures_total counter\n");
        let _ = writeln!(
            out,
            "gatehouse_tls_handshake_failures_total {}",
            self.tls_handshake_failures.load(Relaxed)
        );
        out.push_str("# HELP gatehouse_connections_evicted_total Idle connections closed to admit new ones at max_connections.\n# TYPE gatehouse_connections_evicted_total counter\n");
        let _ = writeln!(
            out,
            "gatehouse_connections_evicted_total {}",
            self.connections_evicted.load(Relaxed)
        );
        let mut last = "";
        for (name, help, labels, value) in extra {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}");
                // Prometheus naming: `_total` is a counter, the rest gauges.
                let kind = if name.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                };
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last = name;
            }
            let _ = writeln!(out, "{name}{labels} {value}");
        }
        out
    }
}

/// A label value as the exposition format writes it: backslash, double
/// quote and line feed escaped.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts a connection for as long as it lives.
pub struct Gauge<'a>(&'a AtomicI64);

impl<'a> Gauge<'a> {
    pub fn up(g: &'a AtomicI64) -> Self {
        g.fetch_add(1, Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
