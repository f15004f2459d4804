//! Issue 4: real certificates from Pebble (Let's Encrypt's RFC 8555 test
//! server, Debian's package) through Gatehouse's built-in ACME client, by
//! HTTP-01 and TLS-ALPN-01, with renewal of short-lived certificates and
//! External Account Binding. No mock ACME server.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::*;

pub(crate) const HOST: &str = "acme-test.gatehouse.test";
const EAB_KID: &str = "kid-1";
const EAB_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

pub(crate) async fn wait_for_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never listened on {port}"
        );
        tick.tick().await;
    }
}

/// Pebble and its DNS helper (every name resolves to 127.0.0.1), validating
/// challenges on `http_port`/`tls_port`: where Gatehouse will listen.
pub(crate) struct Pebble {
    _dns: Child,
    _pebble: Child,
    pub(crate) directory: String,
    /// Pebble's own HTTPS certificate, for `ca_roots`.
    pub(crate) server_cert: PathBuf,
    mgmt: u16,
    /// Pebble's log: one line per request it handled.
    log: PathBuf,
}

impl Pebble {
    pub(crate) async fn start(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
        eab: bool,
    ) -> Pebble {
        let (cert, key) = gatehouse::certs::generate_self_signed("127.0.0.1").unwrap();
        let server_cert = dir.join("pebble-cert.pem");
        std::fs::write(&server_cert, cert).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), key).unwrap();
        let (dns, dns_mgmt, listen, mgmt) = (free_port(), free_port(), free_port(), free_port());
        let dns_child = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble-challtestsrv is installed (scripts/test installs pebble)");
        wait_for_port(dns_mgmt, "pebble-challtestsrv").await;
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": eab,
                "externalAccountMACKeys": { EAB_KID: EAB_KEY },
            }
        });
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = serde_json::json!(v);
        }
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
        let log = dir.join("pebble.log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random sleeps before validation, no random nonce rejection.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble is installed (scripts/test installs it)");
        wait_for_port(listen, "pebble").await;
        wait_for_port(mgmt, "pebble management").await;
        Pebble {
            _dns: dns_child,
            _pebble: pebble,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            server_cert,
            mgmt,
            log,
        }
    }

    /// Orders placed so far, from Pebble's log of requests.
    pub(crate) fn orders(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("POST /order-plz"))
            .count()
    }

    /// The root Pebble issues under (random per run), from its management
    /// interface.
    pub(crate) async fn issuing_root(&self) -> rustls::RootCertStore {
        let out = within(
            Command::new("curl")
                .args(["-sS", "--cacert"])
                .arg(&self.server_cert)
                .arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
                .output(),
        )
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut roots = rustls::RootCertStore::empty();
        for c in
            <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
                &out.stdout,
            )
        {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }
}

/// A handshake with a client that trusts only Pebble's root: succeeds once
/// Gatehouse serves the issued chain. Returns the leaf's fingerprint.
pub(crate) async fn verified_fingerprint(
    addr: std::net::SocketAddr,
    roots: &rustls::RootCertStore,
) -> Option<String> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(HOST.try_into().unwrap(), tcp)
        .await
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?[0].clone();
    Some(gatehouse::certs::fingerprint(leaf.as_ref()))
}

/// Waits (bounded) until the served chain verifies against Pebble's root
/// and differs from `not`.
async fn wait_issued(
    px: &Proxy,
    roots: &rustls::RootCertStore,
    not: Option<&str>,
    limit: Duration,
) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        if let Some(fp) = verified_fingerprint(px.https, roots).await {
            if Some(fp.as_str()) != not {
                return fp;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate from Pebble within {limit:?}"
        );
        tick.tick().await;
    }
}

fn config(
    http: u16,
    https: u16,
    pebble: &Pebble,
    challenge: &str,
    extra: &str,
    upstream: &str,
) -> String {
    format!(
        "http_port = {http}\nhttps_port = {https}\nbind = [\"127.0.0.1\"]\nhostname = \"{HOST}\"\n\n[acme]\nemail = \"admin@example.com\"\ndirectory = \"{}\"\nca_roots = [\"{}\"]\nchallenge = \"{challenge}\"\n{extra}\n\n{}",
        pebble.directory,
        pebble.server_cert.display(),
        routes(&[("/", upstream)])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_certificate_in_certbot_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), http, https, None, false).await;
    let up = fixed(200, "OK").await;
    let toml = config(http, https, &pebble, "http-01", "", &up.url());
    std::fs::write(dir.path().join("gatehouse.toml"), &toml).unwrap();
    let px = Proxy::start_in(dir, &toml, &[]).await;
    // Self-signed until issued: the start never waits for or fails on ACME.
    let roots = pebble.issuing_root().await;
    let fp = wait_issued(&px, &roots, None, Duration::from_secs(90)).await;
    let le = px.dir.path().join("certificates/letsencrypt");
    let live = le.join("live").join(HOST);
    for f in ["fullchain.pem", "privkey.pem", "cert.pem", "chain.pem"] {
        assert!(live.join(f).is_file(), "{f}");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&live.join("privkey.pem")), 0o600);
    let account = std::fs::read_dir(le.join("gatehouse"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("account.json");
    assert_eq!(mode(&account), 0o600);
    // `gatehouse cert` reports the same certificate.
    let (code, out, _) = run(px.dir.path(), &["cert"], &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("SHA-256:      {fp}")), "{out}");
    assert!(out.contains("source:       ACME"), "{out}");
    assert!(
        out.contains("issuer:       CN=Pebble Intermediate"),
        "{out}"
    );
    assert!(out.contains(&format!("DNS:{HOST}")), "{out}");
    assert!(out.contains("next renewal: "), "{out}");
    px.stop().await;
}

/// Issue 11 point 3: built-in ACME turned on from the environment alone
/// (a container's `.env`), no `[acme]` table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_from_the_environment_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), http, https, None, false).await;
    let up = fixed(200, "OK").await;
    let toml = format!(
        "http_port = {http}\nhttps_port = {https}\nbind = [\"127.0.0.1\"]\n\n{}",
        routes(&[("/", &up.url())])
    );
    let roots_file = pebble.server_cert.display().to_string();
    let env = [
        ("HOSTNAME", HOST),
        ("GATEHOUSE_ACME", "true"),
        ("GATEHOUSE_ACME_EMAIL", "admin@example.com"),
        ("GATEHOUSE_ACME_DIRECTORY", pebble.directory.as_str()),
        ("GATEHOUSE_ACME_CA_ROOTS", roots_file.as_str()),
    ];
    let px = Proxy::start_in(dir, &toml, &env).await;
    let roots = pebble.issuing_root().await;
    wait_issued(&px, &roots, None, Duration::from_secs(90)).await;
    let live = px
        .dir
        .path()
        .join("certificates/letsencrypt/live")
        .join(HOST);
    assert!(live.join("fullchain.pem").is_file());
    px.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_with_external_account_binding() {
    let dir = tempfile::tempdir().unwrap();
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), http, https, None, true).await;
    let up = fixed(200, "OK").await;
    let extra = format!("eab_kid = \"{EAB_KID}\"\neab_hmac_key = \"{EAB_KEY}\"");
    let toml = config(http, https, &pebble, "tls-alpn-01", &extra, &up.url());
    let px = Proxy::start_in(dir, &toml, &[]).await;
    let roots = pebble.issuing_root().await;
    wait_issued(&px, &roots, None, Duration::from_secs(90)).await;
    // The issued chain serves real traffic.
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(px.https).await.unwrap();
    let tls = within(
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(HOST.try_into().unwrap(), tcp),
    )
    .await
    .unwrap();
    let (mut sender, conn) = within(hyper::client::conn::http1::handshake(
        hyper_util::rt::TokioIo::new(tls),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    let res = within(sender.send_request(get("/", HOST))).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    px.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let (http, https) = (free_port(), free_port());
    // 30 s certificates: renewed once 10 s remain.
    let pebble = Pebble::start(dir.path(), http, https, Some(30), false).await;
    let up = fixed(200, "OK").await;
    let toml = config(http, https, &pebble, "http-01", "", &up.url());
    std::fs::write(dir.path().join("gatehouse.toml"), &toml).unwrap();
    let px = Proxy::start_in(dir, &toml, &[]).await;
    let roots = pebble.issuing_root().await;
    let first = wait_issued(&px, &roots, None, Duration::from_secs(90)).await;
    // It expires within 7 days: `gatehouse cert` says so with its status.
    let (code, out, _) = run(px.dir.path(), &["cert"], &[]).await;
    assert_eq!(code, 1, "{out}");
    let second = wait_issued(&px, &roots, Some(&first), Duration::from_secs(90)).await;
    assert_ne!(first, second);
    px.stop().await;
}
