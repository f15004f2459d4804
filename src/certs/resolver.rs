//! The certificate in service, as rustls asks for it, and the rustls
//! server configuration.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Hands rustls the current certificate; `set` swaps it for new handshakes
/// while open connections keep theirs. During a TLS-ALPN-01 challenge a
/// validation certificate is served to handshakes that offer `acme-tls/1`.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
    /// Changed files that could not be used (half-written, mismatched).
    pub rejected_reloads: std::sync::atomic::AtomicU64,
    challenges: std::sync::Mutex<std::collections::HashMap<String, Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: ArcSwap::new(key),
            rejected_reloads: Default::default(),
            challenges: Default::default(),
        }
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Installs (or with `None` removes) the validation certificate for `name`.
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut map = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        match key {
            Some(k) => map.insert(name.to_ascii_lowercase(), k),
            None => map.remove(&name.to_ascii_lowercase()),
        };
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only the validation certificate answers acme-tls/1, and only
            // for a name under validation (RFC 8737 §3).
            let name = hello.server_name()?.to_ascii_lowercase();
            let map = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
            return map.get(&name).cloned();
        }
        Some(self.current.load_full())
    }
}

/// The rustls server configuration: ring, TLS 1.2 and 1.3 only with rustls'
/// AEAD-only suites, ALPN h2 then http/1.1, resumption by session cache and
/// stateless tickets. rustls has no compression and no renegotiation.
pub(crate) fn server_config(
    resolver: Arc<CertResolver>,
    acme_alpn: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_alpn {
        cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    cfg.ticketer = provider::Ticketer::new()?;
    Ok(Arc::new(cfg))
}
