//! Issue points 5 (TLS and the self-signed fallback) and 6 (redirect and
//! the certbot webroot).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use http::StatusCode;

use crate::support::*;

/// Starts on `dir`; on failure hands the folder back with the error so the
/// test can inspect what is left in it.
async fn start_with(
    dir: tempfile::TempDir,
    env: &[(&str, &str)],
) -> Result<Proxy, (String, tempfile::TempDir)> {
    let up = echo().await;
    let toml = routes(&[("/", &up.url())]);
    let cfg = match load(dir.path(), &toml, env) {
        Ok(c) => c,
        Err(e) => {
            return Err((
                gatehouse::base::error_chain::ErrorChain(&e).to_string(),
                dir,
            ))
        }
    };
    let server = match within(gatehouse::Server::start(cfg)).await {
        Ok(s) => s,
        Err(e) => {
            return Err((
                gatehouse::base::error_chain::ErrorChain(&e).to_string(),
                dir,
            ))
        }
    };
    let (http, https) = (server.http_addrs[0], server.https_addrs[0]);
    Ok(Proxy {
        server: Some(server),
        http,
        https,
        dir,
    })
}

fn leaf_info(path: &std::path::Path) -> gatehouse::certs::CertInfo {
    let cert = std::fs::read(path).unwrap();
    let key = std::fs::read(path.with_file_name("key.pem")).unwrap();
    let ck = gatehouse::certs::certified_key(&cert, &key, path).unwrap();
    gatehouse::certs::inspect(&ck, gatehouse::certs::CertSource::File(path.into())).unwrap()
}

#[tokio::test]
async fn missing_certificate_is_generated_as_aliasvault_does() {
    let dir = tempfile::tempdir().unwrap();
    let px = start_with(dir, &[("HOSTNAME", "192.168.1.50")])
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    let ssl = px.dir.path().join("certificates/ssl");
    let mode = std::fs::metadata(ssl.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(ssl.join(".hostname_marker"))
            .unwrap()
            .trim(),
        "192.168.1.50"
    );
    let info = leaf_info(&ssl.join("cert.pem"));
    assert_eq!(info.subject, "CN=192.168.1.50");
    // An IP HOSTNAME is an IP SAN: mobile apps reject it as a DNS name.
    assert_eq!(
        info.sans,
        ["IP:192.168.1.50", "DNS:localhost", "IP:127.0.0.1"]
    );
    // The served certificate is that file: a client trusting it connects.
    for proto in TLS_PROTOS {
        assert_eq!(px.get_tls(proto, "/").await.status, StatusCode::OK);
    }
    px.stop().await;
}

#[tokio::test]
async fn changed_hostname_regenerates_and_a_matching_marker_keeps_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let px = start_with(dir, &[("HOSTNAME", "old.example.com")])
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    let cert = px.cert_path();
    let first = std::fs::read(&cert).unwrap();
    let Proxy {
        server, dir: tmp, ..
    } = px;
    within(server.unwrap().shutdown(std::time::Duration::from_secs(1))).await;
    // Same HOSTNAME: unchanged.
    let px = start_with(tmp, &[("HOSTNAME", "old.example.com")])
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    assert_eq!(std::fs::read(&cert).unwrap(), first);
    let Proxy {
        server, dir: tmp, ..
    } = px;
    within(server.unwrap().shutdown(std::time::Duration::from_secs(1))).await;
    // New HOSTNAME: regenerated for it.
    let px = start_with(tmp, &[("HOSTNAME", "new.example.com")])
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    assert_ne!(std::fs::read(&cert).unwrap(), first);
    assert_eq!(leaf_info(&cert).sans[0], "DNS:new.example.com");
    px.stop().await;
}

#[tokio::test]
async fn a_provided_pair_is_served_and_a_broken_one_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let ssl = dir.path().join("certificates/ssl");
    std::fs::create_dir_all(&ssl).unwrap();
    let (cert, key) = gatehouse::certs::generate_self_signed("localhost").unwrap();
    std::fs::write(ssl.join("cert.pem"), &cert).unwrap();
    std::fs::write(ssl.join("key.pem"), &key).unwrap();
    std::fs::write(ssl.join(".hostname_marker"), "localhost\n").unwrap();
    let px = start_with(dir, &[])
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(px.cert_path()).unwrap(),
        cert,
        "not regenerated"
    );
    assert_eq!(px.get_tls(Proto::TlsH1, "/").await.status, StatusCode::OK);
    let Proxy { server, dir, .. } = px;
    within(server.unwrap().shutdown(std::time::Duration::from_secs(1))).await;

    // Mismatched key: a clear error, nothing overwritten.
    let (_, other_key) = gatehouse::certs::generate_self_signed("localhost").unwrap();
    std::fs::write(ssl_path(&dir).join("key.pem"), &other_key).unwrap();
    let (err, dir) = start_with(dir, &[])
        .await
        .err()
        .expect("must refuse a mismatched pair");
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(
        std::fs::read(ssl_path(&dir).join("key.pem")).unwrap(),
        other_key.as_bytes(),
        "nothing overwritten"
    );
}

fn ssl_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("certificates/ssl")
}

#[tokio::test]
async fn garbage_certificate_is_an_error_and_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let ssl = ssl_path(&dir);
    std::fs::create_dir_all(&ssl).unwrap();
    std::fs::write(ssl.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(ssl.join("key.pem"), "not a key").unwrap();
    std::fs::write(ssl.join(".hostname_marker"), "localhost").unwrap();
    let (err, dir) = start_with(dir, &[]).await.err().expect("must refuse");
    assert!(err.contains("cert.pem"), "{err}");
    let ssl = ssl_path(&dir);
    assert_eq!(
        std::fs::read_to_string(ssl.join("cert.pem")).unwrap(),
        "not a certificate"
    );
}

#[tokio::test]
async fn only_tls_12_and_13_are_offered() {
    let dir = tempfile::tempdir().unwrap();
    let px = start_with(dir, &[])
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(px.cert_path()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(px.https).await.unwrap();
        let tls = within(
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect("localhost".try_into().unwrap(), tcp),
        )
        .await
        .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }
    px.stop().await;
}

#[tokio::test]
async fn http_redirects_to_https_keeping_the_port() {
    let up = echo().await;
    let px = Proxy::start(&routes(&[("/", &up.url())])).await;
    let port = px.https.port();
    for (host, want) in [
        (
            "vault.example.com",
            format!("https://vault.example.com:{port}/admin/x?y=1&z=%20"),
        ),
        (
            "vault.example.com:8080",
            format!("https://vault.example.com:{port}/admin/x?y=1&z=%20"),
        ),
        (
            "[::1]:8080",
            format!("https://[::1]:{port}/admin/x?y=1&z=%20"),
        ),
    ] {
        let res = px
            .send(Proto::H1, get("/admin/x?y=1&z=%20", host))
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::MOVED_PERMANENTLY, "{host}");
        assert_eq!(res.header("location"), Some(want.as_str()), "{host}");
    }
    // A Host that is not a host is refused rather than redirected.
    let out = raw(
        px.http,
        b"GET / HTTP/1.1\r\nHost: evil.example/path\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing proxied on HTTP"
    );
    px.stop().await;
}

#[tokio::test]
async fn without_the_redirect_both_ports_serve_the_routes() {
    let up = echo().await;
    let px = Proxy::start_env(
        &routes(&[("/", &up.url())]),
        &[("FORCE_HTTPS_REDIRECT", "false")],
    )
    .await;
    let res = px.get("/x").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.seen().header("x-forwarded-proto"), Some("http"));
    assert_eq!(px.get_tls(Proto::TlsH2, "/x").await.status, StatusCode::OK);
    px.stop().await;
}

#[tokio::test]
async fn acme_challenges_are_served_from_the_certbot_webroot_only() {
    let up = echo().await;
    let px = Proxy::start(&routes(&[("/", &up.url())])).await;
    let dir = px
        .dir
        .path()
        .join("certificates/letsencrypt/www/.well-known/acme-challenge");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tok-EN_123"), "tok-EN_123.thumbprint").unwrap();
    std::fs::write(px.dir.path().join("certificates/secret.txt"), "secret").unwrap();
    let res = px.get("/.well-known/acme-challenge/tok-EN_123").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), "tok-EN_123.thumbprint");
    assert_eq!(res.header("cache-control"), Some("no-cache"));
    let res = px.get("/.well-known/acme-challenge/absent").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.header("cache-control"), Some("no-cache"));
    for evil in [
        "/.well-known/acme-challenge/../../../secret.txt",
        "/.well-known/acme-challenge/..%2F..%2F..%2Fsecret.txt",
        "/.well-known/acme-challenge/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/.well-known/acme-challenge/",
    ] {
        let req = format!("GET {evil} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let out = raw(px.http, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 404"), "{evil}: {out}");
        assert!(!out.contains("secret"), "{evil}");
    }
    px.stop().await;
}

#[tokio::test]
async fn tls_sessions_resume() {
    use rustls::client::Resumption;
    let up = fixed(200, "OK").await;
    let px = Proxy::start(&routes(&[("/", &up.url())])).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(px.cert_path()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.resumption = Resumption::in_memory_sessions(16);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(px.https).await.unwrap();
            let mut tls = within(connector.connect("localhost".try_into().unwrap(), tcp))
                .await
                .unwrap();
            // TLS 1.3 tickets arrive after the handshake: read a response.
            tls.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = within(tls.read_to_end(&mut out)).await;
            kinds.push(tls.get_ref().1.handshake_kind());
        }
        assert_eq!(
            kinds[1],
            Some(rustls::HandshakeKind::Resumed),
            "{version:?}: {kinds:?}"
        );
    }
    px.stop().await;
}
