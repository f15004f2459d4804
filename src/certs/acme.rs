//! Built-in ACME (RFC 8555): obtains and renews the certificate for
//! HOSTNAME (and any extra names) without a certbot container.
//!
//! Files use certbot's layout so existing installs and tools keep working:
//! `letsencrypt/live/HOSTNAME/{fullchain,privkey,cert,chain}.pem` (keys
//! 0600). The account key lives beside them in `letsencrypt/gatehouse/`.
//! Until the first issuance succeeds the fallback (self-signed) certificate
//! is served; failures are retried with backoff and never stop the server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use crate::certs::{self, CertResolver, CertSource};
use crate::cluster::store::Lock;
use crate::cluster::{Cluster, ClusterError};
use crate::config::{AcmeSettings, Challenge};

/// HTTP-01 tokens being validated: token → key authorization.
pub type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// Why an issuance attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA's problem document (RFC 7807), kept whole for the log.
    #[error("the CA refused: {}", describe_problem(.0))]
    Problem(instant_acme::Problem),
    #[error("ACME request failed")]
    Client(#[source] instant_acme::Error),
    #[error("the authorization of {name} is {status:?}")]
    Authorization {
        name: String,
        status: AuthorizationStatus,
    },
    #[error("the CA offers no {0:?} challenge")]
    NoChallenge(ChallengeType),
    #[error("the CA asks to validate an identifier of a kind Gatehouse does not know")]
    UnsupportedIdentifier,
    #[error("the order is {status:?}{}", .problem.as_ref().map(|p| format!(": {}", describe_problem(p))).unwrap_or_default())]
    Order {
        status: OrderStatus,
        problem: Option<instant_acme::Problem>,
    },
    #[error("cannot make a key, request or validation certificate")]
    Key(#[source] rcgen::Error),
    #[error("cannot use a key made for a validation certificate")]
    ValidationKey(#[source] rustls::Error),
    #[error("the certificate the CA issued cannot be served")]
    Issued(#[source] certs::CertError),
    #[error("eab_hmac_key is not base64url")]
    Eab(#[source] base64::DecodeError),
    #[error("ca_roots {path}")]
    CaRoots {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("ca_roots {path}: a certificate was refused")]
    CaRoot {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the TLS client for the CA")]
    Tls(#[source] rustls::Error),
    #[error("cannot save the account")]
    Account(#[source] serde_json::Error),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("file work on the blocking pool stopped")]
    Stopped(#[source] tokio::task::JoinError),
    #[error("the cluster's shared state")]
    Cluster(#[from] ClusterError),
    /// Another replica holds the order lock now: this order is abandoned
    /// and its certificate, if any, not stored (issue 14's fencing).
    #[error("this replica lost the cluster's order lock")]
    LockLost,
    #[error("the cluster's certificate cannot be served")]
    Shared(#[source] certs::CertError),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(p) => AcmeError::Problem(p),
            other => AcmeError::Client(other),
        }
    }
}

fn describe_problem(p: &instant_acme::Problem) -> String {
    let mut s = format!(
        "type {}, detail {}",
        p.r#type.as_deref().unwrap_or("(none)"),
        p.detail.as_deref().unwrap_or("(none)")
    );
    for sub in &p.subproblems {
        s.push_str(&format!("; {sub:?}"));
    }
    s
}

pub struct Manager {
    pub settings: AcmeSettings,
    pub hostname: String,
    pub letsencrypt_dir: PathBuf,
    pub resolver: Arc<CertResolver>,
    pub tokens: Tokens,
    /// Replicas order one at a time and share what they get (issue 14).
    pub cluster: Option<Arc<Cluster>>,
}

/// How often a replica checks the cluster for a certificate another
/// replica issued, besides the notice on the channel.
const SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// How long an order waits for every replica to serve its TLS-ALPN-01
/// validation certificate.
const ALPN_SPREAD: Duration = Duration::from_secs(3);

/// The first retry waits this long; each failure doubles it up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Let's Encrypt's rate limits reset over hours: back off at least this much.
const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(3600);

/// The wait before the next attempt after `failures` consecutive failures.
/// A CA's Retry-After (or a rate-limit problem) is never undercut.
pub fn backoff(failures: u32, retry_after: Option<Duration>, rate_limited: bool) -> Duration {
    let exp = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.min(16).saturating_sub(1))
        .min(MAX_BACKOFF);
    let floor = if rate_limited {
        RATE_LIMIT_BACKOFF
    } else {
        Duration::ZERO
    };
    exp.max(floor).max(retry_after.unwrap_or_default())
}

/// When a certificate valid from `not_before` to `not_after` (Unix seconds)
/// should be renewed: once less than a third of its lifetime remains, which
/// also suits Let's Encrypt's short-lived certificates.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_after - (not_after - not_before) / 3
}

impl Manager {
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![self.hostname.clone()];
        for n in &self.settings.extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }

    fn live(&self) -> (PathBuf, PathBuf) {
        certs::live_paths(&self.letsencrypt_dir, &self.hostname)
    }

    /// Seconds until the live certificate should be renewed (0: now).
    async fn due_in(&self) -> Duration {
        let (cert, key) = self.live();
        // File reads on the blocking pool (issue 12).
        let read = tokio::task::spawn_blocking(move || {
            certs::load_pair(&cert, &key, CertSource::Acme(cert.clone()))
        })
        .await;
        match read.unwrap_or_else(|e| Err(certs::CertError::Stopped(e))) {
            Ok(l) => {
                let names = self.names();
                let covers = names
                    .iter()
                    .all(|n| l.info.sans.iter().any(|s| s.ends_with(&format!(":{n}"))));
                if !covers {
                    return Duration::ZERO;
                }
                let at = renew_at(l.info.not_before_unix, l.info.not_after_unix);
                Duration::from_secs((at - certs::unix_now()).max(0) as u64)
            }
            Err(_) => Duration::ZERO,
        }
    }

    /// Runs for the life of the server: issue when due, then sleep until the
    /// renewal time; on failure retry with backoff.
    pub async fn run(self) {
        if let Some(cluster) = self.cluster.clone() {
            return self.run_shared(cluster).await;
        }
        let mut failures = 0u32;
        loop {
            let due = self.due_in().await;
            if !due.is_zero() {
                tracing::info!(
                    "ACME: certificate for {} is renewed in {}s",
                    self.hostname,
                    due.as_secs()
                );
                // Wake at least daily so a replaced file is re-evaluated.
                tokio::time::sleep(due.min(Duration::from_secs(86_400))).await;
                continue;
            }
            match self.issue(None).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tokio::time::sleep(self.failed(&e, failures)).await;
                }
            }
        }
    }

    /// Logs a failed attempt and returns the wait before the next one.
    fn failed(&self, e: &AcmeError, failures: u32) -> Duration {
        let rate_limited = matches!(e, AcmeError::Problem(p)
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited"));
        let retry_after = match e {
            AcmeError::Client(instant_acme::Error::Timeout(Some(at))) => {
                Some(at.saturating_duration_since(std::time::Instant::now()))
            }
            _ => None,
        };
        let wait = backoff(failures, retry_after, rate_limited);
        tracing::error!(
            "ACME: obtaining a certificate for {} failed: {}; retrying in {}s",
            self.hostname,
            crate::base::error_chain::ErrorChain(e),
            wait.as_secs()
        );
        wait
    }

    /// The cluster's loop (issue 14): take over what another replica
    /// issued; when the certificate is due, order only while holding the
    /// cluster's lock, renewing it as the order runs; store the result
    /// fenced by the lock's token and announce it. Replicas that did not
    /// get the lock wait for the notice or the next periodic check.
    async fn run_shared(self, cluster: Arc<Cluster>) {
        let notice = Arc::new(tokio::sync::Notify::new());
        let _listener = AbortOnDrop(tokio::spawn(listen(
            cluster.clone(),
            self.resolver.clone(),
            self.hostname.clone(),
            notice.clone(),
        )));
        let mut seen = None;
        let mut failures = 0u32;
        // Redis trouble is logged when it starts, not every few seconds
        // for as long as it lasts.
        let mut redis_failing = false;
        let retry_lock = SYNC_INTERVAL.min(cluster.settings.lock_ttl / 3);
        loop {
            match self.adopt(&cluster, &mut seen).await {
                Ok(()) => redis_failing = false,
                Err(e) => {
                    self.redis_trouble(&mut redis_failing, "check the cluster's certificate", &e)
                }
            }
            let due = self.due_in().await;
            if !due.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(due.min(SYNC_INTERVAL)) => {}
                    _ = notice.notified() => {}
                }
                continue;
            }
            let lock = match cluster.lock(&self.hostname).await {
                Ok(Some(lock)) => Held {
                    cluster: cluster.clone(),
                    lock: Some(lock),
                },
                Ok(None) => {
                    tracing::debug!("ACME: another replica is ordering for {}", self.hostname);
                    tokio::select! {
                        _ = tokio::time::sleep(retry_lock) => {}
                        _ = notice.notified() => {}
                    }
                    continue;
                }
                Err(e) => {
                    // Without the lock no replica orders: N orders against
                    // the CA's limits are worse than a late renewal, and a
                    // third of the lifetime is left when renewal starts.
                    self.redis_trouble(
                        &mut redis_failing,
                        "take the cluster's order lock (not ordering until Redis answers)",
                        &AcmeError::Cluster(e),
                    );
                    tokio::time::sleep(retry_lock).await;
                    continue;
                }
            };
            let Some(held) = lock.lock.as_ref() else {
                continue;
            };
            tracing::info!(
                "ACME: replica {} holds the order lock for {} (token {})",
                cluster.settings.name,
                self.hostname,
                held.fence
            );
            // The lock may have been free because another replica just
            // finished: take its certificate instead of ordering again.
            let _ = self.adopt(&cluster, &mut seen).await;
            let result = if self.due_in().await.is_zero() {
                tokio::select! {
                    r = self.issue(Some((&cluster, held))) => r,
                    () = keep_lock(&cluster, held) => Err(AcmeError::LockLost),
                }
            } else {
                Ok(())
            };
            lock.release().await;
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = self.failed(&e, failures);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = notice.notified() => {}
                    }
                }
            }
        }
    }

    /// A failed call to Redis: a warning when the trouble starts, then
    /// debug lines until a call succeeds again.
    fn redis_trouble(&self, failing: &mut bool, what: &str, e: &AcmeError) {
        let chain = crate::base::error_chain::ErrorChain(e);
        if *failing {
            tracing::debug!("ACME: cannot {what} for {}: {chain}", self.hostname);
        } else {
            tracing::warn!("ACME: cannot {what} for {}: {chain}", self.hostname);
        }
        *failing = true;
    }

    /// Serves the cluster's certificate when it is not the one this
    /// replica last saw, and writes certbot's files when they differ (a
    /// restart without Redis then serves it).
    async fn adopt(&self, cluster: &Cluster, seen: &mut Option<u64>) -> Result<(), AcmeError> {
        let fence = cluster.cert_fence(&self.hostname).await?;
        if fence.is_none() || fence == *seen {
            return Ok(());
        }
        let Some(shared) = cluster.cert(&self.hostname).await? else {
            return Ok(());
        };
        let ck = certs::certified_key(
            shared.fullchain.as_bytes(),
            shared.privkey.as_bytes(),
            Path::new("the cluster's certificate"),
        )
        .map_err(AcmeError::Shared)?;
        let (fullchain, _) = self.live();
        let on_disk = tokio::fs::read_to_string(&fullchain).await.ok();
        if on_disk.as_deref() != Some(shared.fullchain.as_str()) {
            self.write_live(shared.fullchain.clone(), shared.privkey.clone())
                .await?;
        }
        self.resolver.set(ck.clone());
        if shared.replica != cluster.settings.name {
            cluster
                .stats
                .certs_adopted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let info =
                certs::inspect(&ck, CertSource::Acme(fullchain)).map_err(AcmeError::Shared)?;
            tracing::info!(
                "ACME: serving the certificate replica {} issued (token {}): {info}",
                shared.replica,
                shared.fence
            );
        }
        *seen = Some(shared.fence);
        Ok(())
    }

    /// One issuance: account, order, challenges, CSR, certificate, files.
    /// In a cluster, under `lock`: answers go to Redis too, and the
    /// certificate is stored there (fenced) before this replica serves it.
    pub async fn issue(&self, shared: Option<(&Cluster, &Lock)>) -> Result<(), AcmeError> {
        let cluster = shared.map(|(c, _)| c);
        let names = self.names();
        tracing::info!(
            "ACME: requesting a certificate for {} from {}",
            names.join(", "),
            self.settings.directory
        );
        let account = self.account(cluster).await?;
        let identifiers: Vec<Identifier> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Identifier::Ip(ip),
                Err(_) => Identifier::Dns(n.clone()),
            })
            .collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let kind = match self.settings.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        {
            // Withdrawn when this block ends, and also when the task is
            // aborted mid-order (a reload that changes the ACME settings,
            // shutdown): the guard's drop runs either way.
            let mut answers = Answers {
                resolver: &self.resolver,
                tokens: &self.tokens,
                cluster: cluster.and(self.cluster.clone()),
                installed: Vec::new(),
            };
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                let name = match &authz.identifier().identifier {
                    Identifier::Dns(n) => n.clone(),
                    Identifier::Ip(ip) => ip.to_string(),
                    _ => return Err(AcmeError::UnsupportedIdentifier),
                };
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    status => return Err(AcmeError::Authorization { name, status }),
                }
                let mut challenge = authz
                    .challenge(kind.clone())
                    .ok_or_else(|| AcmeError::NoChallenge(kind.clone()))?;
                let key_auth = challenge.key_authorization();
                match kind {
                    ChallengeType::TlsAlpn01 => {
                        let digest = key_auth.digest().as_ref().to_vec();
                        let for_name = name.clone();
                        let cert = tokio::task::spawn_blocking(move || {
                            validation_cert(&for_name, &digest)
                        })
                        .await
                        .map_err(AcmeError::Stopped)??;
                        answers.install_alpn(name, cert).await?;
                    }
                    _ => {
                        answers
                            .install_http(challenge.token.clone(), key_auth.as_str())
                            .await?
                    }
                }
                challenge.set_ready().await?;
            }
            let retry = RetryPolicy::new().timeout(Duration::from_secs(120));
            let status = order.poll_ready(&retry).await?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Order {
                    status,
                    problem: order.state().error.clone(),
                });
            }
        }
        // Key generation on the blocking pool, with the CSR (issue 12).
        let (key_pem, csr) = tokio::task::spawn_blocking({
            let names = names.clone();
            move || -> Result<(String, Vec<u8>), AcmeError> {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(AcmeError::Key)?;
                let mut params = rcgen::CertificateParams::new(names).map_err(AcmeError::Key)?;
                params.distinguished_name = rcgen::DistinguishedName::new();
                let csr = params.serialize_request(&key).map_err(AcmeError::Key)?;
                Ok((key.serialize_pem(), csr.der().to_vec()))
            }
        })
        .await
        .map_err(AcmeError::Stopped)??;
        order.finalize_csr(&csr).await?;
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(120)))
            .await?;
        let ck = certs::certified_key(
            chain.as_bytes(),
            key_pem.as_bytes(),
            Path::new("ACME order"),
        )
        .map_err(AcmeError::Issued)?;
        if let Some((cluster, lock)) = shared {
            // Stored only while the lock is ours and no newer token stored
            // one; a replica that lost its lock throws its certificate away.
            if !cluster
                .store_cert(lock, &chain, &key_pem, certs::unix_now())
                .await?
            {
                return Err(AcmeError::LockLost);
            }
            if let Err(e) = cluster.publish(&format!("cert {}", self.hostname)).await {
                // The others find it at their next periodic check.
                tracing::warn!(
                    "ACME: cannot announce the new certificate: {}",
                    crate::base::error_chain::ErrorChain(&e)
                );
            }
        }
        self.write_live(chain.clone(), key_pem).await?;
        let (cert_path, _) = self.live();
        let info = certs::inspect(&ck, CertSource::Acme(cert_path)).map_err(AcmeError::Issued)?;
        tracing::info!("ACME: certificate issued: {info}");
        self.resolver.set(ck);
        Ok(())
    }

    /// certbot's `live/NAME/` files: fullchain and privkey (what servers
    /// read), plus cert and chain for tools that expect them. Written and
    /// synced on the blocking pool.
    async fn write_live(&self, chain: String, key_pem: String) -> Result<(), AcmeError> {
        let (fullchain, privkey) = self.live();
        tokio::task::spawn_blocking(move || {
            let dir = fullchain.parent().unwrap_or(Path::new("."));
            let split = chain
                .find("-----END CERTIFICATE-----")
                .map(|i| i + "-----END CERTIFICATE-----".len());
            let (leaf, rest) = split.map_or((chain.as_str(), ""), |i| chain.split_at(i));
            // The key first, so the pair is never briefly mismatched on disk
            // for longer than one rename; the watcher ignores a mismatch.
            let files = [
                (privkey.clone(), key_pem.clone(), 0o600),
                (fullchain.clone(), chain.clone(), 0o644),
                (dir.join("cert.pem"), format!("{}\n", leaf.trim()), 0o644),
                (dir.join("chain.pem"), format!("{}\n", rest.trim()), 0o644),
            ];
            for (path, data, mode) in files {
                certs::write_file(&path, data.as_bytes(), mode)
                    .map_err(|source| AcmeError::Io { path, source })?;
            }
            Ok(())
        })
        .await
        .map_err(AcmeError::Stopped)?
    }

    /// The directory's host and port, as the account's file and its
    /// cluster key name it.
    fn directory_key(&self) -> String {
        self.settings
            .directory
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().replace(':', "_")))
            .unwrap_or_else(|| "directory".into())
    }

    fn account_path(&self) -> PathBuf {
        self.letsencrypt_dir
            .join("gatehouse")
            .join(self.directory_key())
            .join("account.json")
    }

    /// Loads the saved account for this directory (the cluster's first,
    /// then the file), or registers one (with External Account Binding
    /// when configured) and saves it, mode 0600, and in the cluster.
    async fn account(&self, cluster: Option<&Cluster>) -> Result<Account, AcmeError> {
        let path = self.account_path();
        let directory_key = self.directory_key();
        let stored = match cluster {
            Some(c) => c.account(&directory_key).await?,
            None => None,
        };
        if let Some(text) = stored {
            if let Ok(creds) = serde_json::from_str::<AccountCredentials>(&text) {
                return Ok(Account::builder_with_http(self.http().await?)
                    .from_credentials(creds)
                    .await?);
            }
            tracing::warn!(
                "ACME: the cluster's account for {directory_key} is not valid; registering a new account"
            );
        } else if let Ok(text) = tokio::fs::read(&path).await {
            if let Ok(creds) = serde_json::from_slice::<AccountCredentials>(&text) {
                // A replica that ran alone before shares its account.
                if let Some(c) = cluster {
                    c.set_account(&directory_key, &String::from_utf8_lossy(&text))
                        .await?;
                }
                return Ok(Account::builder_with_http(self.http().await?)
                    .from_credentials(creds)
                    .await?);
            }
            tracing::warn!(
                "ACME: {} is not a valid account file; registering a new account",
                path.display()
            );
        }
        let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match &self.settings.eab {
            Some((kid, key)) => {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(key.trim_end_matches('='))
                    .map_err(AcmeError::Eab)?;
                Some(ExternalAccountKey::new(kid.clone(), &raw))
            }
            None => None,
        };
        let (account, creds) = Account::builder_with_http(self.http().await?)
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                eab.as_ref(),
            )
            .await?;
        let json = serde_json::to_vec_pretty(&creds).map_err(AcmeError::Account)?;
        if let Some(c) = cluster {
            c.set_account(&directory_key, &String::from_utf8_lossy(&json))
                .await?;
        }
        tokio::task::spawn_blocking(move || {
            certs::write_file(&path, &json, 0o600).map_err(|source| AcmeError::Io { path, source })
        })
        .await
        .map_err(AcmeError::Stopped)??;
        tracing::info!("ACME: registered account {}", account.id());
        Ok(account)
    }

    /// The HTTPS client for the directory: the public web roots plus any
    /// `ca_roots`, on the ring provider.
    async fn http(&self) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
        let ca_roots = self.settings.ca_roots.clone();
        let roots = tokio::task::spawn_blocking(move || {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for path in ca_roots {
                let bad = |source| AcmeError::CaRoots {
                    path: path.clone(),
                    source,
                };
                for cert in rustls::pki_types::CertificateDer::pem_file_iter(&path).map_err(bad)? {
                    roots
                        .add(cert.map_err(bad)?)
                        .map_err(|source| AcmeError::CaRoot {
                            path: path.clone(),
                            source,
                        })?;
                }
            }
            Ok::<_, AcmeError>(roots)
        })
        .await
        .map_err(AcmeError::Stopped)??;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(AcmeError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, instant_acme::BodyWrapper<bytes::Bytes>>(connector);
        Ok(Box::new(client))
    }
}

/// One challenge answer installed for the CA to fetch.
enum Answer {
    /// HTTP-01: the token, answered under `/.well-known/acme-challenge/`.
    Http(String),
    /// TLS-ALPN-01: the name whose validation certificate is served.
    TlsAlpn(String),
}

/// The answers of one order, withdrawn when dropped: at the end of the
/// order and when the task running it is aborted. In a cluster they are
/// also in Redis, for whichever replica the CA happens to reach.
struct Answers<'a> {
    resolver: &'a CertResolver,
    tokens: &'a Tokens,
    cluster: Option<Arc<Cluster>>,
    installed: Vec<Answer>,
}

impl Answers<'_> {
    async fn install_http(
        &mut self,
        token: String,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        lock(self.tokens).insert(token.clone(), key_authorization.to_string());
        self.installed.push(Answer::Http(token.clone()));
        if let Some(c) = &self.cluster {
            c.set_http01(&token, key_authorization).await?;
        }
        Ok(())
    }

    async fn install_alpn(&mut self, name: String, cert: Validation) -> Result<(), AcmeError> {
        self.resolver.set_challenge(&name, Some(cert.key));
        self.installed.push(Answer::TlsAlpn(name.clone()));
        if let Some(c) = &self.cluster {
            // A CA's TLS handshake is answered from memory, so every
            // replica must hold the certificate before the CA is told to
            // look: wait (bounded) for each one the notice reached to say so.
            let reached = c.set_alpn(&name, &cert.cert_pem, &cert.key_pem).await?;
            let deadline = std::time::Instant::now() + ALPN_SPREAD;
            while c.alpn_acks(&name).await? < reached && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        let installed = std::mem::take(&mut self.installed);
        for answer in &installed {
            match answer {
                Answer::Http(token) => {
                    lock(self.tokens).remove(token);
                }
                Answer::TlsAlpn(name) => self.resolver.set_challenge(name, None),
            }
        }
        // Redis's copies expire by themselves; withdrawing them early is
        // worth one task, when a runtime is still there to run it.
        if let (Some(c), Ok(rt)) = (self.cluster.clone(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                for answer in installed {
                    let _ = match answer {
                        Answer::Http(token) => c.del_http01(&token).await,
                        Answer::TlsAlpn(name) => c.del_alpn(&name).await,
                    };
                }
            });
        }
    }
}

fn lock(tokens: &Tokens) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
    tokens.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TLS-ALPN-01 validation certificate, ready to serve and as PEM for
/// the other replicas.
struct Validation {
    key: Arc<rustls::sign::CertifiedKey>,
    cert_pem: String,
    key_pem: String,
}

/// The TLS-ALPN-01 validation certificate (RFC 8737 §3): self-signed, SAN =
/// the name, and the critical acmeIdentifier extension holding the SHA-256
/// of the key authorization.
fn validation_cert(name: &str, digest: &[u8]) -> Result<Validation, AcmeError> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(AcmeError::Key)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(AcmeError::Key)?;
    let cert = params.self_signed(&key).map_err(AcmeError::Key)?;
    // Built directly, without `certified_key`'s pair check: that check
    // parses the certificate with webpki, which (rightly, for a served
    // certificate) refuses the unknown critical acmeIdentifier extension.
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok(Validation {
        key: validation_key(cert.der().clone(), &der)?,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn validation_key(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: &rustls::pki_types::PrivateKeyDer<'_>,
) -> Result<Arc<rustls::sign::CertifiedKey>, AcmeError> {
    let signing =
        rustls::crypto::ring::sign::any_supported_type(key).map_err(AcmeError::ValidationKey)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert],
        signing,
    )))
}

/// A validation certificate another replica stored (certificate and key
/// PEM in one text), ready to serve.
fn validation_from_pem(pem: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    validation_key(cert, &key).ok()
}

/// The order lock while this replica holds it; released when dropped (an
/// aborted manager: a reload that changes the ACME settings, shutdown), so
/// the others need not wait for it to expire.
struct Held {
    cluster: Arc<Cluster>,
    lock: Option<Lock>,
}

impl Held {
    async fn release(mut self) {
        if let Some(lock) = self.lock.take() {
            self.cluster.release(&lock).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let (Some(lock), Ok(rt)) = (self.lock.take(), tokio::runtime::Handle::try_current()) {
            let cluster = self.cluster.clone();
            rt.spawn(async move { cluster.release(&lock).await });
        }
    }
}

/// Aborts a background task when its owner goes: an aborted manager
/// leaves no listener behind.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the order lock every third of its lifetime; returns when the
/// lock is lost (taken over, or Redis unreachable for as long as the lock
/// lives), which abandons the order.
async fn keep_lock(cluster: &Cluster, lock: &Lock) {
    let ttl = cluster.settings.lock_ttl;
    let mut last_ok = std::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match cluster.renew(lock).await {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => {
                tracing::warn!("ACME: the order lock for {} was taken over", lock.host);
                return;
            }
            Err(e) if last_ok.elapsed() >= ttl => {
                tracing::warn!(
                    "ACME: the order lock for {} could not be renewed: {}",
                    lock.host,
                    crate::base::error_chain::ErrorChain(&e)
                );
                return;
            }
            Err(_) => {}
        }
    }
}

/// Follows the cluster's channel for the life of the manager: a new
/// certificate wakes the loop; a validation certificate another replica
/// stored is served here too (the CA may connect to any replica).
/// Resubscribes after an error; a notice missed meanwhile is caught by
/// the check that follows every (re)subscription.
async fn listen(
    cluster: Arc<Cluster>,
    resolver: Arc<CertResolver>,
    hostname: String,
    notice: Arc<tokio::sync::Notify>,
) {
    use futures_util::StreamExt;
    loop {
        let mut pubsub = match cluster.pubsub().await {
            Ok(p) => p,
            Err(_) => {
                tokio::time::sleep(SYNC_INTERVAL).await;
                continue;
            }
        };
        if pubsub.subscribe(cluster.channel()).await.is_err() {
            tokio::time::sleep(SYNC_INTERVAL).await;
            continue;
        }
        notice.notify_one();
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(event) = msg.get_payload::<String>() else {
                continue;
            };
            match event.split_once(' ') {
                Some(("cert", host)) if host == hostname => notice.notify_one(),
                Some(("alpn", name)) => {
                    if let Ok(Some(pem)) = cluster.alpn(name).await {
                        if let Some(key) = validation_from_pem(&pem) {
                            resolver.set_challenge(name, Some(key));
                            let _ = cluster.ack_alpn(name).await;
                        }
                    }
                }
                Some(("alpn-done", name)) => resolver.set_challenge(name, None),
                _ => {}
            }
        }
        drop(messages);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_respects_the_ca() {
        assert_eq!(backoff(1, None, false), Duration::from_secs(30));
        assert_eq!(backoff(2, None, false), Duration::from_secs(60));
        assert_eq!(backoff(5, None, false), Duration::from_secs(480));
        assert_eq!(backoff(30, None, false), MAX_BACKOFF);
        assert_eq!(
            backoff(1, Some(Duration::from_secs(900)), false),
            Duration::from_secs(900)
        );
        assert_eq!(backoff(1, None, true), RATE_LIMIT_BACKOFF);
    }

    #[test]
    fn renewal_when_a_third_remains() {
        // 90-day certificate: renewed after 60 days.
        assert_eq!(renew_at(0, 90 * 86_400), 60 * 86_400);
        // Six-day short-lived certificate: after four days.
        assert_eq!(renew_at(1000, 1000 + 6 * 86_400), 1000 + 4 * 86_400);
    }
}
