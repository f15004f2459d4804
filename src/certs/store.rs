//! Certificates on disk: which one a configuration serves (read, or
//! AliasVault's self-signed one generated in memory), planned without
//! writing, and written only when a plan is committed.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{CertError, CertInfo, CertSource, Loaded};
use crate::config::{ConfigError, TlsSettings};

/// What start-up will do about the certificate; `gatehouse check` prints it
/// without writing anything.
pub enum Plan {
    /// Serve this existing pair.
    Use(Loaded),
    /// Generate a self-signed certificate, for this reason.
    Generate(&'static str),
}

/// Decides between the configured pair and AliasVault's self-signed one,
/// reading but never writing.
///
/// Generates (AliasVault's entrypoint rules) when either file is missing,
/// or when the `.hostname_marker` beside the certificate is missing or names
/// another host and the existing certificate is self-signed. A certificate
/// from a CA is never replaced for a missing marker. An existing pair that
/// cannot be read or does not match is an error.
pub fn plan(settings: &TlsSettings, hostname: &str) -> Result<Plan, CertError> {
    let (cert_path, key_path) = match settings {
        TlsSettings::Ephemeral => return Ok(Plan::Generate("kept in memory")),
        TlsSettings::Files { cert, key, .. } => (cert, key),
    };
    if !cert_path.exists() || !key_path.exists() {
        return Ok(Plan::Generate("certificate or key file missing"));
    }
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let key = certified_key(&cert_pem, &key_pem, cert_path)?;
    let info = inspect(&key, CertSource::File(cert_path.clone()))?;
    let marker_path = marker_path(cert_path);
    let marker = fs::read_to_string(&marker_path).ok();
    Ok(match marker.as_deref().map(str::trim) {
        Some(m) if m == hostname => Plan::Use(Loaded { key, info }),
        _ if !info.self_signed => {
            tracing::warn!(
                cert = %cert_path.display(),
                "{} does not name HOSTNAME {hostname:?}, but the certificate is not self-signed: serving it unchanged",
                marker_path.display()
            );
            Plan::Use(Loaded { key, info })
        }
        None => Plan::Generate("hostname marker missing"),
        Some(_) => Plan::Generate("HOSTNAME changed"),
    })
}

/// A self-signed pair made in memory by [`plan_certs`], still to be
/// written by [`CertPlan::commit`].
pub struct Generated {
    /// Why it is generated (`gatehouse check` prints it).
    pub reason: &'static str,
    /// Where it goes, or `None` for a pair kept in memory only.
    files: Option<GeneratedFiles>,
}

struct GeneratedFiles {
    cert: PathBuf,
    key: PathBuf,
    hostname: String,
    cert_pem: String,
    key_pem: String,
}

/// The certificate side of a configuration, worked out without writing
/// anything (issue 12: a rejected reload must leave no certificate behind).
pub struct CertPlan {
    /// What is served once committed: read from disk, or generated now.
    pub loaded: Loaded,
    /// Set when `loaded` was generated rather than read.
    pub generated: Option<Generated>,
    /// The pair to watch for changes (renewals, manual swaps).
    pub watch: Option<(PathBuf, PathBuf)>,
    /// certbot's or ACME's `live/` certificate, looked for and not there
    /// yet: `loaded` stands in until it appears.
    pub awaiting: Option<PathBuf>,
    /// Lines for the log when the plan is committed.
    pub notes: Vec<String>,
}

impl CertPlan {
    /// Carries the plan out: writes a generated pair (key 0600, then the
    /// marker) and returns what to serve. Blocking file I/O: runs on the
    /// blocking pool.
    pub fn commit(self) -> Result<Loaded, CertError> {
        for note in &self.notes {
            tracing::warn!("{note}");
        }
        if let Some(Generated {
            reason,
            files: Some(f),
        }) = &self.generated
        {
            tracing::info!(cert = %f.cert.display(), hostname = f.hostname, "generating a self-signed certificate ({reason})");
            let marker = format!("{}\n", f.hostname);
            for (path, data, mode) in [
                (f.cert.clone(), f.cert_pem.as_bytes(), 0o644),
                (f.key.clone(), f.key_pem.as_bytes(), 0o600),
                (marker_path(&f.cert), marker.as_bytes(), 0o644),
            ] {
                write_file(&path, data, mode)
                    .map_err(|source| CertError::Write { path, source })?;
            }
        }
        Ok(self.loaded)
    }
}

/// Generates, in memory, the self-signed pair [`plan`] asked for.
fn generate(
    settings: &TlsSettings,
    hostname: &str,
    reason: &'static str,
) -> Result<(Loaded, Generated), CertError> {
    let (cert_pem, key_pem) = generate_self_signed(hostname)?;
    let (origin, source) = match settings {
        TlsSettings::Files { cert, .. } => (cert.as_path(), CertSource::Generated(cert.clone())),
        TlsSettings::Ephemeral => (Path::new("<generated>"), CertSource::Ephemeral),
    };
    let key = certified_key(cert_pem.as_bytes(), key_pem.as_bytes(), origin)?;
    let info = inspect(&key, source)?;
    let files = match settings {
        TlsSettings::Files { cert, key, .. } => Some(GeneratedFiles {
            cert: cert.clone(),
            key: key.clone(),
            hostname: hostname.to_string(),
            cert_pem,
            key_pem,
        }),
        TlsSettings::Ephemeral => None,
    };
    Ok((Loaded { key, info }, Generated { reason, files }))
}

/// The certbot-layout pair for `hostname` under `letsencrypt_dir`.
pub(crate) fn live_paths(letsencrypt_dir: &Path, hostname: &str) -> (PathBuf, PathBuf) {
    let live = letsencrypt_dir.join("live").join(hostname);
    (live.join("fullchain.pem"), live.join("privkey.pem"))
}

/// Picks the certificate a configuration serves, reading files and
/// generating in memory but writing nothing. With `LETSENCRYPT_ENABLED` or
/// `[acme]`, certbot's `live/HOSTNAME/` files win over `[tls]`; until they
/// exist (first issuance pending) the `[tls]` certificate or its self-signed
/// fallback is served, never a failed start. Blocking: file reads and key
/// generation.
pub(crate) fn plan_certs(cfg: &crate::config::Config) -> Result<CertPlan, CertError> {
    let mut notes = Vec::new();
    let mut awaiting = None;
    let watch = if cfg.letsencrypt_enabled || cfg.acme.is_some() {
        let (cert, key) = live_paths(&cfg.letsencrypt_dir, &cfg.hostname);
        if cert.exists() && key.exists() {
            let source = if cfg.acme.is_some() {
                CertSource::Acme(cert.clone())
            } else {
                CertSource::Certbot(cert.clone())
            };
            match load_pair(&cert, &key, source) {
                Ok(loaded) => {
                    return Ok(CertPlan {
                        loaded,
                        generated: None,
                        watch: Some((cert, key)),
                        awaiting: None,
                        notes,
                    })
                }
                // ACME will replace a broken pair; plain certbot files are
                // the user's, and a broken pair is their error to see.
                Err(e) if cfg.acme.is_some() => notes.push(format!(
                    "{}; serving a fallback until ACME issues a new one",
                    crate::base::error_chain::ErrorChain(&ConfigError::from(e))
                )),
                Err(e) => return Err(e),
            }
        } else {
            notes.push(format!(
                "{} not found; serving the [tls] certificate until it appears",
                cert.display()
            ));
        }
        awaiting = Some(cert.clone());
        Some((cert, key))
    } else {
        match &cfg.tls {
            TlsSettings::Files { cert, key, .. } => Some((cert.clone(), key.clone())),
            TlsSettings::Ephemeral => None,
        }
    };
    let (loaded, generated) = match plan(&cfg.tls, &cfg.hostname)? {
        Plan::Use(loaded) => (loaded, None),
        Plan::Generate(reason) => {
            let (loaded, generated) = generate(&cfg.tls, &cfg.hostname, reason)?;
            (loaded, Some(generated))
        }
    };
    Ok(CertPlan {
        loaded,
        generated,
        watch,
        awaiting,
        notes,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and checks a PEM pair.
pub(crate) fn load_pair(cert: &Path, key: &Path, source: CertSource) -> Result<Loaded, CertError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let ck = certified_key(&cert_pem, &key_pem, cert)?;
    let info = inspect(&ck, source)?;
    Ok(Loaded { key: ck, info })
}

pub(crate) fn fingerprint_of(key: &CertifiedKey) -> String {
    key.end_entity_cert()
        .map(|c| fingerprint(c.as_ref()))
        .unwrap_or_default()
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// AliasVault's marker: the HOSTNAME the self-signed certificate was made for.
pub(crate) fn marker_path(cert: &Path) -> PathBuf {
    cert.with_file_name(".hostname_marker")
}

/// A self-signed certificate as AliasVault's entrypoint makes it: CN =
/// hostname; SAN = the hostname as an IP entry when it is an address (mobile
/// apps reject an IP stored as a DNS name, AliasVault #1223) or a DNS entry
/// otherwise, plus `localhost` and 127.0.0.1; valid 10 years. ECDSA P-256
/// rather than RSA-2048: smaller, faster, accepted by every current client.
pub fn generate_self_signed(hostname: &str) -> Result<(String, String), CertError> {
    let fail = CertError::Generate;
    let mut sans: Vec<String> = vec![hostname.to_string()];
    for extra in ["localhost", "127.0.0.1"] {
        if !sans.iter().any(|s| s.eq_ignore_ascii_case(extra)) {
            sans.push(extra.to_string());
        }
    }
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(rcgen::SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Parses a PEM chain and key and checks that they belong together.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: &Path,
) -> Result<Arc<CertifiedKey>, CertError> {
    let path = || origin.to_path_buf();
    let pem = |what| {
        move |source| CertError::Pem {
            path: path(),
            what,
            source,
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(pem("certificate"))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate { path: path() });
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem("private key"))?;
    let signing = provider::sign::any_supported_type(&key_der).map_err(|source| {
        CertError::UnsupportedKey {
            path: path(),
            source,
        }
    })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(ck))
        }
        Err(_) => Err(CertError::KeyMismatch { path: path() }),
    }
}

/// Reads subject, SANs, expiry and fingerprint off the leaf certificate.
pub fn inspect(key: &CertifiedKey, source: CertSource) -> Result<CertInfo, CertError> {
    use x509_parser::prelude::*;
    let leaf = key.end_entity_cert().map_err(CertError::Leaf)?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(CertError::Parse)?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => format!(
                            "IP:{}",
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                        ),
                        16 => format!(
                            "IP:{}",
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                        ),
                        _ => "IP:?".to_string(),
                    },
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertInfo {
        source,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        fingerprint: fingerprint(leaf.as_ref()),
        not_after: cert.validity().not_after.to_string(),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
    })
}

/// SHA-256 of DER bytes as colon-separated upper-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Writes through a temporary file and a rename, so a reader never sees half
/// a certificate, with the mode set before any byte is written.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp-gatehouse");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(&tmp)?;
    #[cfg(unix)]
    {
        // The mode given to open() is filtered by the umask; set it exactly.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_sans_follow_aliasvault() {
        for (host, want) in [
            (
                "vault.example.com",
                vec!["DNS:vault.example.com", "DNS:localhost", "IP:127.0.0.1"],
            ),
            (
                "192.168.1.10",
                vec!["IP:192.168.1.10", "DNS:localhost", "IP:127.0.0.1"],
            ),
            (
                "fd00::10",
                vec!["IP:fd00::10", "DNS:localhost", "IP:127.0.0.1"],
            ),
            ("localhost", vec!["DNS:localhost", "IP:127.0.0.1"]),
        ] {
            let (c, k) = generate_self_signed(host).unwrap();
            let key = certified_key(c.as_bytes(), k.as_bytes(), Path::new("t")).unwrap();
            let info = inspect(&key, CertSource::Ephemeral).unwrap();
            assert_eq!(info.sans, want, "{host}");
            assert_eq!(info.subject, format!("CN={host}"));
            assert!(info.self_signed);
        }
    }

    #[test]
    fn mismatched_pair_is_refused() {
        let (c1, _) = generate_self_signed("a.example").unwrap();
        let (_, k2) = generate_self_signed("b.example").unwrap();
        let err = certified_key(c1.as_bytes(), k2.as_bytes(), Path::new("cert.pem")).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
