//! Issue 11: the container drop-in. Public and listening ports, the
//! container layout, and the image itself run by a private Docker daemon
//! in AliasVault's own compose service definition.

use crate::support::*;

/// The public ports go into redirects; the listeners bind others.
#[tokio::test]
async fn public_and_listening_ports_are_two_things() {
    let up = echo().await;
    let px = Proxy::start_env(
        &routes(&[("/", &up.url())]),
        &[
            ("HTTP_PORT", "23080"),
            ("HTTPS_PORT", "23643"),
            ("GATEHOUSE_LISTEN_HTTP_PORT", "0"),
            ("GATEHOUSE_LISTEN_HTTPS_PORT", "0"),
        ],
    )
    .await;
    assert_ne!(px.https.port(), 23643, "bound where the listener was told");
    let res = px.get("/x?y=1").await;
    assert_eq!(res.status, 301);
    assert_eq!(
        res.header("location"),
        Some("https://localhost:23643/x?y=1")
    );
    px.stop().await;
    // `gatehouse check` prints both.
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["check"],
        &[
            ("HTTPS_PORT", "23643"),
            ("GATEHOUSE_LISTEN_HTTPS_PORT", "443"),
            ("GATEHOUSE_LISTEN_HTTP_PORT", "80"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("http  0.0.0.0:80 (redirect to https, port 23643)"),
        "{out}"
    );
    assert!(
        out.contains("https 0.0.0.0:443 (public port 23643; routes"),
        "{out}"
    );
}

/// `GATEHOUSE_LAYOUT=container` (set by the image): AliasVault's container
/// paths without a file.
#[tokio::test]
async fn the_container_layout_uses_aliasvaults_container_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(dir.path(), &["check"], &[("GATEHOUSE_LAYOUT", "container")]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/etc/nginx/ssl/cert.pem"), "{out}");
    let cfg = gatehouse::config::load(
        &gatehouse::config::Source::BuiltIn,
        &gatehouse::config::Env::from_pairs([
            ("GATEHOUSE_LAYOUT", "container"),
            ("LETSENCRYPT_ENABLED", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(
        cfg.letsencrypt_dir,
        std::path::Path::new("/etc/nginx/ssl-letsencrypt")
    );
    match &cfg.tls {
        gatehouse::config::TlsSettings::Files { cert, key, webroot } => {
            assert_eq!(cert, std::path::Path::new("/etc/nginx/ssl/cert.pem"));
            assert_eq!(key, std::path::Path::new("/etc/nginx/ssl/key.pem"));
            assert_eq!(webroot, std::path::Path::new("/var/www/certbot"));
        }
        other => panic!("{other:?}"),
    }
    let paths: Vec<&str> = cfg.routes.iter().map(|r| r.upstream.url.as_str()).collect();
    assert_eq!(
        paths,
        ["http://admin:3002", "http://api:3001", "http://client:3000"]
    );
}
