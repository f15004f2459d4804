//! Issue 12: one plan for `gatehouse check`, start and reload; a reload
//! commits its side effects only once the plan succeeded; what a reload
//! does not change (the ACME manager, servers' health) survives it; file
//! I/O never stalls the runtime.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// Each refused case through all three: `gatehouse check` and a start exit
/// 2 with the message, and a running server's reload refuses it with the
/// same message while the old configuration serves on.
#[tokio::test]
async fn check_start_and_reload_refuse_the_same_configurations() {
    let a = fixed(200, "A").await;
    let b = fixed(200, "B").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let head = "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\nlog_format = \"off\"\n";
    let good = |url: &str| {
        format!(
            "{head}[metrics]\nenabled = false\n{}",
            routes(&[("/", url)])
        )
    };
    // A certificate and a key that do not belong together, in [tls] and in
    // certbot's layout.
    let (cert_a, _) = gatehouse::certs::generate_self_signed("a.example").unwrap();
    let (_, key_b) = gatehouse::certs::generate_self_signed("b.example").unwrap();
    for sub in ["mismatch", "certificates/letsencrypt/live/localhost"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("mismatch/cert.pem"), &cert_a).unwrap();
    std::fs::write(d.join("mismatch/key.pem"), &key_b).unwrap();
    let live = d.join("certificates/letsencrypt/live/localhost");
    std::fs::write(live.join("fullchain.pem"), &cert_a).unwrap();
    std::fs::write(live.join("privkey.pem"), &key_b).unwrap();
    std::fs::write(d.join("empty.env"), "").unwrap();
    std::fs::write(d.join("certbot.env"), "LETSENCRYPT_ENABLED=true\n").unwrap();

    // (name, file, env file, what the error says)
    let cases = [
        (
            "certbot pair that does not match",
            good(&a.url()),
            "certbot.env",
            "fullchain.pem: the private key does not match the certificate",
        ),
        (
            "one port for HTTP and HTTPS",
            format!(
                "http_port = 47999\nhttps_port = 47999\nbind = [\"127.0.0.1\"]\n[metrics]\nenabled = false\n{}",
                routes(&[("/", &a.url())])
            ),
            "empty.env",
            "the HTTP and HTTPS listeners would both bind port 47999",
        ),
        (
            "[tls] pair that does not match",
            format!(
                "{head}[tls]\ncert = \"mismatch/cert.pem\"\nkey = \"mismatch/key.pem\"\n[metrics]\nenabled = false\n{}",
                routes(&[("/", &a.url())])
            ),
            "empty.env",
            "cert.pem: the private key does not match the certificate",
        ),
        (
            "unknown key",
            format!("{head}[[route]]\npath = \"/\"\nupstrem = \"x\"\n"),
            "empty.env",
            "toml:8:1: upstrem",
        ),
    ];
    for (name, file, env, message) in &cases {
        let env = d.join(env).to_str().unwrap().to_string();
        // Relative paths (the [tls] pair, certbot's folder) are relative to
        // the file's folder: `d`.
        let file_in_d = d.join(format!("{}.toml", name.replace(' ', "_")));
        std::fs::write(&file_in_d, file).unwrap();
        let file_in_d = file_in_d.to_str().unwrap().to_string();
        let (code, _, err) = run(
            d,
            &["check", "--config", &file_in_d, "--env-file", &env],
            &[],
        )
        .await;
        assert_eq!(code, 2, "check, {name}: {err}");
        assert!(err.contains(message), "check, {name}: {err}");
        let (code, _, err) = run(d, &["--config", &file_in_d, "--env-file", &env], &[]).await;
        assert_eq!(code, 2, "start, {name}: {err}");
        assert!(err.contains(message), "start, {name}: {err}");
    }

    // Reload: a server running the good file, then each refused case
    // written over it (the certbot case first: it is the good file with
    // the certbot .env, and every later state carries a fault of its own).
    let toml = d.join("gatehouse.toml");
    let env_file = d.join("live.env");
    std::fs::write(&toml, good(&a.url())).unwrap();
    std::fs::write(&env_file, "").unwrap();
    let mut p = Running::spawn(
        d,
        &["--config", "gatehouse.toml", "--env-file", "live.env"],
        &[],
    );
    let port = p.port_after("listening on http://127.0.0.1:").await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let get_text = async || {
        send(Proto::H1, addr, Path::new(""), get("/", "h"))
            .await
            .unwrap()
            .text()
    };
    assert_eq!(get_text().await, "A");
    for (i, (name, file, env, message)) in cases.iter().enumerate() {
        if i == 0 {
            std::fs::write(&env_file, std::fs::read(d.join(env)).unwrap()).unwrap();
        } else {
            std::fs::write(&toml, file).unwrap();
            std::fs::write(&env_file, "").unwrap();
        }
        p.wait_for(message).await;
        assert_eq!(get_text().await, "A", "reload, {name}: the old one serves");
    }
    std::fs::write(&toml, good(&b.url())).unwrap();
    // Generation 2: none of the refused reloads counted as one.
    p.wait_for("config reloaded (generation 2)").await;
    assert_eq!(get_text().await, "B");
    p.signal("TERM");
    assert_eq!(p.exit_code().await, 0);
}

/// A reload that would generate a certificate (HOSTNAME changed) but
/// cannot bind its new address writes nothing: the certificate and its
/// marker on disk stay those of the configuration still serving.
#[tokio::test]
async fn a_refused_reload_writes_no_certificate() {
    let a = fixed(200, "A").await;
    let mut px = Proxy::start(&routes(&[("/", &a.url())])).await;
    let cert = px.cert_path();
    let marker = cert.with_file_name(".hostname_marker");
    let before = std::fs::read(&cert).unwrap();
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "localhost"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = load(
        px.dir.path(),
        &format!(
            "http_port = {port}\nhostname = \"other.example\"\n{}",
            routes(&[("/", &a.url())])
        ),
        &[],
    )
    .unwrap();
    let server = px.server.as_mut().unwrap();
    let err = within(server.apply(cfg)).await.unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "localhost"
    );
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        before,
        "certificate rewritten"
    );
    // The same change without the taken port does generate: the check
    // above would have seen it.
    drop(taken);
    let cfg = load(
        px.dir.path(),
        &format!(
            "hostname = \"other.example\"\n{}",
            routes(&[("/", &a.url())])
        ),
        &[],
    )
    .unwrap();
    within(server.apply(cfg)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "other.example"
    );
    px.stop().await;
}

/// A server taken out by health checks stays out across a reload that
/// does not touch its route: the reload does not reset it to healthy.
#[tokio::test]
async fn server_health_survives_an_unrelated_reload() {
    let a = health_checked("A", Arc::new(AtomicBool::new(true))).await;
    let b = health_checked("B", Arc::new(AtomicBool::new(false))).await;
    let route = |extra: &str| {
        format!(
            "force_https_redirect = false\n[[route]]\npath = \"/\"\nupstream = [\"{}\", \"{}\"]\nhealth_check = {{ path = \"/health\", interval = \"300ms\", healthy = 2, unhealthy = 2 }}\n{extra}",
            a.url(),
            b.url()
        )
    };
    let mut px = Proxy::start(&route("")).await;
    // B fails two checks in a row: out of the rotation.
    until_only(&px, "A", "B never taken out").await;
    // An unrelated change: another route.
    let cfg = load(
        px.dir.path(),
        &route(&format!(
            "[[route]]\npath = \"/other\"\nupstream = \"{}\"\n",
            a.url()
        )),
        &[],
    )
    .unwrap();
    within(px.server.as_mut().unwrap().apply(cfg))
        .await
        .unwrap();
    // Straight after the reload, before any new check could have run
    // twice: still only A (a reset would send every other request to B).
    for i in 0..6 {
        assert_eq!(
            px.get("/").await.text(),
            "A",
            "request {i} after the reload"
        );
    }
    px.stop().await;
}

/// A listener that accepts connections and holds them, silent: an ACME
/// directory whose client waits forever in its first request (an order
/// in progress). Its count of accepted connections is watched.
async fn silent_directory() -> (SocketAddr, tokio::sync::watch::Receiver<usize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
            tx.send_replace(held.len());
        }
    });
    (addr, rx)
}

/// The ACME manager in the middle of an order is kept by a reload that
/// does not change the ACME settings, and replaced by one that does.
#[tokio::test]
async fn an_acme_order_in_progress_survives_an_unrelated_reload() {
    let up = fixed(200, "A").await;
    let (first, mut first_count) = silent_directory().await;
    let (second, mut second_count) = silent_directory().await;
    let config = |dir: SocketAddr, extra: &str| {
        format!(
            "hostname = \"acme.gatehouse.test\"\n[acme]\nemail = \"admin@example.com\"\ndirectory = \"https://{dir}/dir\"\n\n{}{extra}",
            routes(&[("/", &up.url())])
        )
    };
    let mut px = Proxy::start(&config(first, "")).await;
    within(first_count.wait_for(|n| *n == 1)).await.unwrap();
    let unrelated = load(
        px.dir.path(),
        &config(first, &routes(&[("/other", &up.url())])),
        &[],
    )
    .unwrap();
    let server = px.server.as_mut().unwrap();
    within(server.apply(unrelated)).await.unwrap();
    // A new manager would connect again at once; none may within a
    // generous window (an absence can only be checked over one).
    let again = tokio::time::timeout(Duration::from_millis(800), first_count.wait_for(|n| *n > 1))
        .await
        .is_ok();
    assert!(!again, "the unrelated reload restarted the ACME order");
    // Changing the ACME settings does replace the manager.
    let related = load(px.dir.path(), &config(second, ""), &[]).unwrap();
    within(server.apply(related)).await.unwrap();
    within(second_count.wait_for(|n| *n == 1)).await.unwrap();
    assert_eq!(*first_count.borrow(), 1);
    px.stop().await;
}

/// With one runtime thread (a `current_thread` test runtime, as
/// `workers = 1`), requests are served while a reload waits on a
/// certificate file that is slow to read (a FIFO whose writer holds back).
#[tokio::test]
async fn requests_are_served_while_a_reload_reads_a_slow_certificate() {
    let a = fixed(200, "A").await;
    let mut px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &a.url())])
    ))
    .await;
    let slow = px.dir.path().join("slow");
    std::fs::create_dir_all(&slow).unwrap();
    let (cert, key) = gatehouse::certs::generate_self_signed("localhost").unwrap();
    std::fs::write(slow.join("key.pem"), key).unwrap();
    std::fs::write(slow.join(".hostname_marker"), "localhost\n").unwrap();
    let fifo = slow.join("cert.pem");
    let slow_cert = fifo.clone();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // The writer opens the FIFO (returns once the reload's read opened
    // it), says so, and writes the certificate once a request has been
    // served — or after a bounded wait, so a stalled runtime fails the
    // test instead of hanging it.
    let (reading_tx, reading_rx) = tokio::sync::oneshot::channel();
    let (served_tx, served_rx) = std::sync::mpsc::channel::<()>();
    let released_early = Arc::new(AtomicBool::new(false));
    let flag = released_early.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let _ = reading_tx.send(());
        if served_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            flag.store(true, Ordering::SeqCst);
        }
        f.write_all(cert.as_bytes()).unwrap();
    });
    let cfg = load(
        px.dir.path(),
        &format!(
            "force_https_redirect = false\n[tls]\ncert = \"slow/cert.pem\"\nkey = \"slow/key.pem\"\n{}",
            routes(&[("/", &a.url())])
        ),
        &[],
    )
    .unwrap();
    let http = px.http;
    let cert_path = px.cert_path();
    let server = px.server.as_mut().unwrap();
    let request = async {
        reading_rx.await.unwrap();
        let res = send(Proto::H1, http, &cert_path, get("/", "localhost"))
            .await
            .unwrap();
        let _ = served_tx.send(());
        res
    };
    let (applied, res) = within(async { tokio::join!(server.apply(cfg), request) }).await;
    writer.join().unwrap();
    // A regular file in the FIFO's place before the certificate watcher
    // first runs (it would wait for a writer forever).
    std::fs::remove_file(&slow_cert).unwrap();
    std::fs::write(&slow_cert, b"").unwrap();
    assert_eq!(res.text(), "A");
    assert!(
        !released_early.load(Ordering::SeqCst),
        "no request was served while the reload read the certificate"
    );
    applied.unwrap();
    px.stop().await;
}

/// The same for a slow certificate write: a reload that generates a
/// certificate (HOSTNAME changed) writes it through a temporary file, here
/// a FIFO whose reader holds back. Requests are served meanwhile; the
/// write then fails (a FIFO cannot be synced), so the reload is refused
/// and the old certificate serves on.
#[tokio::test]
async fn requests_are_served_while_a_reload_writes_a_slow_certificate() {
    let a = fixed(200, "A").await;
    let routes_toml = format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &a.url())])
    );
    let mut px = Proxy::start(&routes_toml).await;
    let cert_path = px.cert_path();
    let before = std::fs::read(&cert_path).unwrap();
    let fifo = cert_path.with_extension("tmp-gatehouse");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (writing_tx, writing_rx) = tokio::sync::oneshot::channel();
    let (served_tx, served_rx) = std::sync::mpsc::channel::<()>();
    let released_early = Arc::new(AtomicBool::new(false));
    let flag = released_early.clone();
    let reader_fifo = fifo.clone();
    // Opens the FIFO for reading (returns once the commit opened it to
    // write), says so, and reads only after a request was served — or
    // after a bounded wait, so a stalled runtime fails the test.
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&reader_fifo).unwrap();
        let _ = writing_tx.send(());
        if served_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            flag.store(true, Ordering::SeqCst);
        }
        let mut sink = Vec::new();
        let _ = f.read_to_end(&mut sink);
    });
    let cfg = load(
        px.dir.path(),
        &format!("hostname = \"other.example\"\n{routes_toml}"),
        &[],
    )
    .unwrap();
    let http = px.http;
    let server = px.server.as_mut().unwrap();
    let request = async {
        writing_rx.await.unwrap();
        let res = send(Proto::H1, http, Path::new(""), get("/", "localhost"))
            .await
            .unwrap();
        let _ = served_tx.send(());
        res
    };
    let (applied, res) = within(async { tokio::join!(server.apply(cfg), request) }).await;
    reader.join().unwrap();
    std::fs::remove_file(&fifo).unwrap();
    assert_eq!(res.text(), "A");
    assert!(
        !released_early.load(Ordering::SeqCst),
        "no request was served while the reload wrote the certificate"
    );
    let err = applied.expect_err("a FIFO cannot be synced");
    assert!(
        gatehouse::base::error_chain::ErrorChain(&err)
            .to_string()
            .contains("cannot write"),
        "{}",
        gatehouse::base::error_chain::ErrorChain(&err)
    );
    assert_eq!(
        std::fs::read(&cert_path).unwrap(),
        before,
        "old certificate kept"
    );
    assert_eq!(px.get("/").await.text(), "A");
    px.stop().await;
}

/// Issue 14: `[cluster]` is made once at start; a reload that adds,
/// changes or removes it is applied otherwise and reports the restart it
/// needs (the count behind `gatehouse_config_restart_pending`), keeping
/// the running value.
#[tokio::test]
async fn a_reload_that_changes_the_cluster_asks_for_a_restart() {
    let up = fixed(200, "OK").await;
    let mut px = Proxy::start(&routes(&[("/", &up.url())])).await;
    let server = px.server.as_mut().unwrap();
    assert!(server.shared.cluster.is_none());
    let with_cluster = load(
        px.dir.path(),
        &format!(
            "{}\n[cluster]\nredis = \"redis://127.0.0.1:1/0\"\nname = \"r\"\n",
            routes(&[("/", &up.url())])
        ),
        &[],
    )
    .unwrap();
    within(server.apply(with_cluster)).await.unwrap();
    assert!(server.shared.cluster.is_none(), "the running value stays");
    let pending = |s: &gatehouse::Server| {
        s.shared
            .restart_pending
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(pending(server), 1);
    // Back to what it started with: nothing pending.
    let plain = load(px.dir.path(), &routes(&[("/", &up.url())]), &[]).unwrap();
    within(server.apply(plain)).await.unwrap();
    assert_eq!(pending(server), 0);
    px.stop().await;
}
