//! Certificates: what is served and where it comes from. `store` plans
//! and loads certificates (read, or AliasVault's self-signed fallback
//! generated in memory) and writes them; `resolver` hands rustls the one in
//! service (swappable, so a renewal needs no new listener) and builds the
//! server configuration (ring, TLS 1.2 and 1.3 only); `watcher` serves
//! renewed files without a restart; `acme` obtains and renews them.

pub(crate) mod acme;
mod resolver;
mod store;
mod watcher;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::config::ConfigError;

pub use resolver::CertResolver;
pub(crate) use resolver::{server_config, ACME_TLS_ALPN};
pub use store::{
    certified_key, fingerprint, generate_self_signed, inspect, CertPlan, Generated, Plan,
};
pub(crate) use store::{
    fingerprint_of, live_paths, load_pair, plan, plan_certs, unix_now, write_file,
};
pub(crate) use watcher::watch;

/// Why a certificate could not be read, made, written or used. The path
/// (when there is one) is not part of the message: a [`ConfigError`] made
/// from it puts the path first, as every configuration error does.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the {what} PEM")]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate found in the PEM file")]
    NoCertificate { path: PathBuf },
    #[error("unsupported private key")]
    UnsupportedKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the private key does not match the certificate")]
    KeyMismatch { path: PathBuf },
    #[error("cannot generate a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("the certificate has no leaf")]
    Leaf(#[source] rustls::Error),
    #[error("cannot parse the certificate")]
    Parse(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("certificate file work on the blocking pool stopped")]
    Stopped(#[source] tokio::task::JoinError),
}

impl CertError {
    /// The file the error is about, when it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            CertError::Read { path, .. }
            | CertError::Write { path, .. }
            | CertError::Pem { path, .. }
            | CertError::NoCertificate { path }
            | CertError::UnsupportedKey { path, .. }
            | CertError::KeyMismatch { path } => Some(path),
            _ => None,
        }
    }
}

/// Where certificate errors meet configuration errors (check, start,
/// reload): the file first, the certificate error as the cause.
impl From<CertError> for ConfigError {
    fn from(e: CertError) -> Self {
        let origin = e
            .path()
            .map_or_else(|| "certificate".to_string(), |p| p.display().to_string());
        ConfigError::caused(origin, "", e)
    }
}

/// Where the served certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    File(PathBuf),
    /// certbot's layout, `live/HOSTNAME/fullchain.pem` (LETSENCRYPT_ENABLED).
    Certbot(PathBuf),
    /// Issued by Gatehouse's own ACME client, in certbot's layout.
    Acme(PathBuf),
    /// Self-signed, generated now and written to disk.
    Generated(PathBuf),
    /// Self-signed, generated now and kept in memory only.
    Ephemeral,
}

/// What the start-up log and `gatehouse check` say about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub source: CertSource,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    /// SHA-256 of the leaf certificate's DER, `AB:CD:...` as openssl prints it.
    pub fingerprint: String,
    pub not_after: String,
    /// Validity bounds as Unix seconds, for renewal and expiry checks.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub self_signed: bool,
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            CertSource::File(p) => format!("file {}", p.display()),
            CertSource::Certbot(p) => format!("certbot layout {}", p.display()),
            CertSource::Acme(p) => format!("ACME, {}", p.display()),
            CertSource::Generated(p) => format!("self-signed, generated into {}", p.display()),
            CertSource::Ephemeral => "self-signed, generated in memory".to_string(),
        };
        write!(
            f,
            "{source}; subject {}; SAN {}; SHA-256 {}; expires {}",
            self.subject,
            self.sans.join(", "),
            self.fingerprint,
            self.not_after
        )
    }
}

/// The certificate being served, loaded or generated at start-up.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}
