//! `gatehouse check`: the configuration as it would run, planned exactly
//! as start and reload plan it, printed without binding or writing.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, Config, EXIT_CONFIG};
use crate::runtime::Runtime;

/// `gatehouse check`: plans `cfg` as start and reload would and prints
/// the plan, or the error all three refuse with (exit 2).
pub(crate) fn run(cfg: &Config) -> ExitCode {
    // The same plan start and reload commit: what it refuses, they refuse.
    let plan = match crate::ops::plan::plan(cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    print!("{}", describe(cfg, &plan));
    ExitCode::SUCCESS
}

/// `[cluster]` as it would run (issue 14): where the state is, and what
/// a replica does without it. The password never shows.
fn describe_cluster(cfg: &Config) -> String {
    let Some(c) = &cfg.cluster else {
        return "off (rate limits and certificates are this process's own)".to_string();
    };
    let fallback = match c.on_redis_error {
        config::OnRedisError::Local => "this replica's own limits",
        config::OnRedisError::Allow => "no limit",
        config::OnRedisError::Deny => "503",
    };
    let mut out = format!(
        "{} as replica {:?}, keys {}*; rate limits shared (Redis answers within {}, else {fallback})",
        c.redis_redacted(),
        c.name,
        c.key_prefix,
        human_duration(c.timeout),
    );
    if cfg.acme.is_some() {
        out.push_str(&format!(
            "; ACME orders one replica at a time (lock expires {} after its holder stops)",
            human_duration(c.lock_ttl)
        ));
    }
    if let Some(ca) = &c.ca_file {
        out.push_str(&format!("; TLS roots {}", ca.display()));
    }
    out
}

/// The effective configuration as `gatehouse check` prints it.
pub fn describe(cfg: &Config, plan: &crate::ops::plan::Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let source = cfg.source.as_ref().map_or_else(
        || "built-in default (AliasVault layout)".to_string(),
        |p| p.display().to_string(),
    );
    let _ = writeln!(out, "configuration: {source}: ok");
    let _ = writeln!(out, "workers: {}", cfg.workers);
    let _ = writeln!(out, "listeners:");
    for ip in &cfg.bind {
        let addr = |port| std::net::SocketAddr::new(*ip, port);
        let http_mode = if cfg.force_https_redirect {
            format!("redirect to https, port {}", cfg.https_port)
        } else {
            "routes".to_string()
        };
        // The public port, when the listener binds another (a container).
        let public = |listen: u16, public: u16| {
            if listen == public {
                String::new()
            } else {
                format!("public port {public}; ")
            }
        };
        let _ = writeln!(
            out,
            "  http  {} ({}{http_mode})",
            addr(cfg.listen_http()),
            public(cfg.listen_http(), cfg.http_port)
        );
        let _ = writeln!(
            out,
            "  https {} ({}routes; HTTP/2 and HTTP/1.1)",
            addr(cfg.listen_https()),
            public(cfg.listen_https(), cfg.https_port)
        );
    }
    let l = &cfg.listener;
    let _ = writeln!(
        out,
        "limits: {} connections ({} per address), header timeout {}, keep-alive {}, TLS handshake {}, {} headers / {} head / {} request line, {} HTTP/2 streams{}",
        l.max_connections,
        l.max_connections_per_ip,
        human_duration(l.header_timeout),
        human_duration(l.keepalive_timeout),
        human_duration(l.handshake_timeout),
        l.max_headers,
        human_size(cfg.max_header_bytes as u64),
        human_size(cfg.max_uri_bytes as u64),
        l.h2_max_concurrent_streams,
        if l.proxy_protocol { ", PROXY protocol from trusted peers" } else { "" }
    );
    let _ = writeln!(
        out,
        "metrics: {}",
        cfg.metrics.map_or_else(
            || "disabled".to_string(),
            |a| format!("http://{a} (/metrics, /healthz, /readyz, POST /reload)")
        )
    );
    let _ = writeln!(
        out,
        "diagnostics: {}",
        if cfg.diagnostics_token.is_some() {
            "on (requests with the Gatehouse-Diagnostics token; see `gatehouse doctor`)"
        } else {
            "off"
        }
    );
    let trusted: Vec<String> = cfg
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        out,
        "trusted proxies: {}",
        if trusted.is_empty() {
            "none".to_string()
        } else {
            trusted.join(", ")
        }
    );
    let _ = writeln!(out, "cluster: {}", describe_cluster(cfg));
    let _ = writeln!(out, "routes:");
    let runtime = Runtime::build(
        cfg.clone(),
        None,
        &crate::runtime::metrics::Metrics::default(),
        None,
    );
    for (path, r) in runtime.router.iter() {
        let mut extras = format!(
            "timeout {}, websocket idle {}, max body {} (read ahead {}, {} between reads)",
            human_duration(r.timeout),
            human_duration(r.websocket_timeout),
            human_size(r.max_body),
            human_size(r.request_buffer),
            human_duration(r.client_body_timeout)
        );
        if let Some(p) = &r.forwarded_prefix {
            let _ = write!(extras, ", X-Forwarded-Prefix {}", p.to_str().unwrap_or("?"));
        }
        if r.forwarded_for == config::ForwardedFor::Append {
            extras.push_str(", X-Forwarded-For appended");
        }
        let list = |l: &[crate::base::cidr::Cidr]| {
            l.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !r.access.allow.is_empty() {
            let _ = write!(extras, ", allow {}", list(&r.access.allow));
        }
        if !r.access.deny.is_empty() {
            let _ = write!(extras, ", deny {}", list(&r.access.deny));
        }
        if !r.access.allow.is_empty() || !r.access.deny.is_empty() {
            extras.push_str(match r.access.on_deny {
                config::OnDeny::Fallthrough => ", refused clients fall through",
                config::OnDeny::Forbidden => ", refused clients get 403",
            });
        }
        if let Some(route_cfg) = cfg.routes.iter().find(|c| c.path == path) {
            if route_cfg.case_insensitive {
                extras.push_str(", case-insensitive");
            }
            if route_cfg.allow_encoded_slash {
                extras.push_str(", %2F allowed");
            }
            if route_cfg.upgrades != ["websocket"] {
                let _ = write!(extras, ", upgrades {}", route_cfg.upgrades.join(" "));
            }
            if let Some(rl) = route_cfg.rate_limit {
                let _ = write!(
                    extras,
                    ", rate limit {}/s burst {}",
                    rl.per_second, rl.burst
                );
            }
        }
        let target = match cfg.routes.iter().find(|c| c.path == path) {
            Some(c) if c.servers.len() > 1 => {
                let urls: Vec<&str> = c.servers.iter().map(|s| s.url.as_str()).collect();
                let rule = match c.balance {
                    config::model::Balance::RoundRobin => "round robin",
                    config::model::Balance::LeastOutstanding => "least outstanding",
                };
                let health = c.health_check.as_ref().map_or_else(String::new, |h| {
                    format!(
                        ", health check {} every {} (out after {}, back after {})",
                        h.path,
                        human_duration(h.interval),
                        h.unhealthy,
                        h.healthy
                    )
                });
                format!("[{}] ({rule}{health})", urls.join(", "))
            }
            _ => r.upstream.url.clone(),
        };
        let _ = writeln!(out, "  {path} -> {target} ({extras})");
    }
    let certs = &plan.certs;
    let cert = match &certs.generated {
        None => certs.loaded.info.to_string(),
        Some(generated) => {
            let at = match &cfg.tls {
                config::TlsSettings::Files { cert, .. } => format!(" at {}", cert.display()),
                config::TlsSettings::Ephemeral => String::new(),
            };
            format!(
                "self-signed for {:?} will be generated{at} ({})",
                cfg.hostname, generated.reason
            )
        }
    };
    match &certs.awaiting {
        Some(live) => {
            let _ = writeln!(
                out,
                "certificate: {} not present yet; until then: {cert}",
                live.display()
            );
        }
        None => {
            let _ = writeln!(out, "certificate: {cert}");
        }
    }
    if let Some(a) = &cfg.acme {
        let challenge = match a.challenge {
            config::Challenge::Http01 => "http-01",
            config::Challenge::TlsAlpn01 => "tls-alpn-01",
        };
        let mut names = vec![cfg.hostname.clone()];
        names.extend(a.extra_names.iter().cloned());
        let _ = writeln!(
            out,
            "acme: {} via {challenge} for {}{}{}",
            a.directory,
            names.join(", "),
            a.email
                .as_ref()
                .map(|e| format!(", contact {e}"))
                .unwrap_or_default(),
            if a.eab.is_some() {
                ", external account binding"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "restart required to change: {} (a reload keeps the running values)",
        crate::ops::plan::RESTART_ONLY
    );
    out
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn human_size(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}
