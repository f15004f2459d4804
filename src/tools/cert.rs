//! `gatehouse cert`: the certificate served for each name, and when it
//! is renewed.

use std::process::ExitCode;

use crate::certs;
use crate::config::{self, Config, EXIT_CONFIG};

/// `gatehouse cert`: the certificate a server started from `cfg` serves,
/// and its renewal time; exit 1 when it expires within 7 days.
pub(crate) fn run(cfg: &Config) -> ExitCode {
    match served_certificate(cfg) {
        Ok(Some((info, renewal))) => {
            print!("{}", describe_cert(&info, renewal));
            if let Some(c) = &cfg.cluster {
                print!("{}", describe_cluster(c, &cfg.hostname));
            }
            let left = info.not_after_unix - certs::unix_now();
            if left < 7 * 86_400 {
                eprintln!("warning: the certificate expires in {} hours", left / 3600);
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!(
                "no certificate yet: a self-signed one is generated for {:?} at start-up",
                cfg.hostname
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// What a server started from `cfg` serves (the files it reads; hot reload
/// keeps the running process on them), with its renewal time when
/// Gatehouse renews it.
pub(crate) fn served_certificate(
    cfg: &Config,
) -> Result<Option<(certs::CertInfo, Option<i64>)>, config::ConfigError> {
    if cfg.letsencrypt_enabled || cfg.acme.is_some() {
        let (cert, key) = certs::live_paths(&cfg.letsencrypt_dir, &cfg.hostname);
        let source = if cfg.acme.is_some() {
            certs::CertSource::Acme(cert.clone())
        } else {
            certs::CertSource::Certbot(cert.clone())
        };
        if let Ok(l) = certs::load_pair(&cert, &key, source) {
            let renewal = cfg.acme.is_some().then(|| {
                crate::certs::acme::renew_at(l.info.not_before_unix, l.info.not_after_unix)
            });
            return Ok(Some((l.info, renewal)));
        }
    }
    Ok(match certs::plan(&cfg.tls, &cfg.hostname)? {
        certs::Plan::Use(l) => Some((l.info, None)),
        certs::Plan::Generate(_) => None,
    })
}

fn describe_cert(info: &certs::CertInfo, renewal: Option<i64>) -> String {
    use std::fmt::Write;
    let source = match &info.source {
        certs::CertSource::File(p) => format!("file {}", p.display()),
        certs::CertSource::Certbot(p) => format!("file {} (certbot layout)", p.display()),
        certs::CertSource::Acme(p) => format!("ACME {}", p.display()),
        certs::CertSource::Generated(p) => format!("self-signed {}", p.display()),
        certs::CertSource::Ephemeral => "self-signed (memory)".to_string(),
    };
    let source = if info.self_signed && matches!(info.source, certs::CertSource::File(_)) {
        format!("self-signed, {source}")
    } else {
        source
    };
    let renewal = match renewal {
        Some(at) => format!(
            "{} (in {} hours)",
            rfc3339(at),
            (at - certs::unix_now()).max(0) / 3600
        ),
        None => "not renewed by Gatehouse".to_string(),
    };
    let mut out = String::new();
    for name in &info.sans {
        let name = name.split_once(':').map_or(name.as_str(), |(_, n)| n);
        let _ = writeln!(out, "{name}");
        let _ = writeln!(out, "  source:       {source}");
        let _ = writeln!(out, "  issuer:       {}", info.issuer);
        let _ = writeln!(out, "  SANs:         {}", info.sans.join(", "));
        let _ = writeln!(out, "  SHA-256:      {}", info.fingerprint);
        let _ = writeln!(out, "  not after:    {}", rfc3339(info.not_after_unix));
        let _ = writeln!(out, "  next renewal: {renewal}");
    }
    out
}

/// The cluster's side (issue 14): who holds the order lock and when the
/// shared certificate was last issued, asked of Redis.
fn describe_cluster(settings: &config::ClusterSettings, host: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster:      {} (keys {}*, this replica {})",
        settings.redis_redacted(),
        settings.key_prefix,
        settings.name
    );
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let cluster = crate::cluster::Cluster::new(settings.clone())
                    .map_err(|e| crate::base::error_chain::ErrorChain(&e).to_string())?;
                let err = |e: crate::cluster::ClusterError| {
                    crate::base::error_chain::ErrorChain(&e).to_string()
                };
                let holder = cluster.lock_holder(host).await.map_err(err)?;
                let cert = cluster.cert(host).await.map_err(err)?;
                Ok((holder, cert))
            })
        });
    match asked {
        Ok((holder, cert)) => {
            let lock = match holder {
                Some(h) => format!(
                    "held by {} (token {}, expires in {}s)",
                    h.replica,
                    h.fence,
                    h.expires_in.as_secs()
                ),
                None => "free".to_string(),
            };
            let _ = writeln!(out, "  order lock:   {lock}");
            let last = match cert {
                Some(c) => format!(
                    "{} by {} (token {})",
                    rfc3339(c.issued_at),
                    c.replica,
                    c.fence
                ),
                None => "none yet".to_string(),
            };
            let _ = writeln!(out, "  last renewal: {last}");
        }
        Err(e) => {
            let _ = writeln!(out, "  Redis:        unreachable: {e}");
        }
    }
    out
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
