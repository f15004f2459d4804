//! Issue 4: hot certificate reload and the certbot layout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// The SHA-256 fingerprint a new TLS connection is served, as the
/// `gatehouse` log and `gatehouse cert` print it.
pub async fn served_fingerprint(addr: std::net::SocketAddr, sni: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cfg = crate::cli::insecure_client();
    let tls = within(
        tokio_rustls::TlsConnector::from(cfg).connect(sni.to_string().try_into().unwrap(), tcp),
    )
    .await
    .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    gatehouse::certs::fingerprint(leaf.as_ref())
}

fn write_pair(dir: &std::path::Path, host: &str) -> String {
    let (cert, key) = gatehouse::certs::generate_self_signed(host).unwrap();
    // Key first, then the certificate, as a renewal tool would.
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer| c)
        .unwrap();
    gatehouse::certs::fingerprint(der.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_files_are_served_to_new_connections_without_dropping_anything() {
    let ws = websocket_echo().await;
    let api = fixed(200, "OK").await;
    let toml = format!(
        "force_https_redirect = false\n[[route]]\npath = \"/admin\"\nupstream = \"{}\"\n\n{}",
        ws.url(),
        routes(&[("/", &api.url())])
    );
    let px = Proxy::start(&toml).await;
    let first = served_fingerprint(px.https, "localhost").await;
    // An open WebSocket over TLS.
    let tls = tls_connect(px.https, &px.cert_path(), &[b"http/1.1"])
        .await
        .unwrap();
    let (mut socket, _) = within(tokio_tungstenite::client_async(
        "wss://localhost/admin/ws",
        tls,
    ))
    .await
    .unwrap();
    // Load: requests on fresh connections until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (https, cert) = (px.https, px.cert_path());
    let load = {
        let (stop, done) = (stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            // Trust any certificate: the point is that no request fails while
            // the certificate changes under it.
            while !stop.load(Ordering::SeqCst) && done.load(Ordering::SeqCst) < 100_000 {
                let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
                let tls = tokio_rustls::TlsConnector::from(crate::cli::insecure_client())
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await;
                match tls {
                    Ok(tls) => {
                        let (mut sender, conn) = hyper::client::conn::http1::handshake(
                            hyper_util::rt::TokioIo::new(tls),
                        )
                        .await
                        .unwrap();
                        tokio::spawn(conn);
                        match sender.send_request(get("/api", "localhost")).await {
                            Ok(r) if r.status() == 200 => {}
                            other => failures.push(format!("{other:?}")),
                        }
                    }
                    Err(e) => failures.push(e.to_string()),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            let _ = cert;
            failures
        })
    };
    let ssl = px.dir.path().join("certificates/ssl");
    let second = write_pair(&ssl, "localhost");
    assert_ne!(first, second);
    // New connections get the new certificate within seconds.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while served_fingerprint(px.https, "localhost").await != second {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tick.tick().await;
    }
    // A corrupt replacement is ignored; the last good one stays.
    let rejected = &px.server.as_ref().unwrap().shared.certs.rejected_reloads;
    let before = rejected.load(Ordering::SeqCst);
    std::fs::write(
        ssl.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    while rejected.load(Ordering::SeqCst) == before {
        assert!(
            tokio::time::Instant::now() < deadline + LIMIT,
            "corrupt file never examined"
        );
        tick.tick().await;
    }
    assert_eq!(served_fingerprint(px.https, "localhost").await, second);
    stop.store(true, Ordering::SeqCst);
    let failures = within(load).await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        done.load(Ordering::SeqCst)
    );
    assert!(done.load(Ordering::SeqCst) > 5);
    // The WebSocket opened before any of this still works.
    within(socket.send(Message::text("still here")))
        .await
        .unwrap();
    let back = within(socket.next()).await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "still here");
    px.stop().await;
}

#[tokio::test]
async fn letsencrypt_enabled_serves_the_certbot_layout() {
    let up = fixed(200, "OK").await;
    let dir = tempfile::tempdir().unwrap();
    let live = dir
        .path()
        .join("certificates/letsencrypt/live/vault.example.com");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key) = gatehouse::certs::generate_self_signed("vault.example.com").unwrap();
    std::fs::write(live.join("fullchain.pem"), &cert).unwrap();
    std::fs::write(live.join("privkey.pem"), &key).unwrap();
    let env = [
        ("LETSENCRYPT_ENABLED", "true"),
        ("HOSTNAME", "vault.example.com"),
    ];
    let px = Proxy::start_in(dir, &routes(&[("/", &up.url())]), &env).await;
    let served = served_fingerprint(px.https, "vault.example.com").await;
    let der: rustls::pki_types::CertificateDer =
        rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(served, gatehouse::certs::fingerprint(der.as_ref()));
    // And a certbot renewal is picked up (AliasVault #635).
    let (cert2, key2) = gatehouse::certs::generate_self_signed("vault.example.com").unwrap();
    std::fs::write(live.join("privkey.pem"), &key2).unwrap();
    std::fs::write(live.join("fullchain.pem"), &cert2).unwrap();
    let der2: rustls::pki_types::CertificateDer =
        rustls::pki_types::pem::PemObject::from_pem_slice(cert2.as_bytes()).unwrap();
    let want = gatehouse::certs::fingerprint(der2.as_ref());
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while served_fingerprint(px.https, "vault.example.com").await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewed certbot files never served"
        );
        tick.tick().await;
    }
    px.stop().await;
}
