//! Load tools for `bench/run.py` that the usual tools lack: a WebSocket
//! echo upstream, a WebSocket round-trip client, and a holder of idle
//! keep-alive connections.
//!
//! ```text
//! wsbench echo ADDR                      serve WebSocket echo on ADDR
//! wsbench service ADDR TEXT              HTTP/1.1 on ADDR: WebSocket echo at
//!                                        any path, TEXT and the path for
//!                                        anything else (the admin service of
//!                                        the container test)
//! wsbench rtt HOST:PORT PATH CONNS SECS [tls]
//!                                        round trips; prints one JSON line
//! wsbench idle HOST:PORT N [tls]         open N keep-alive connections, one
//!                                        request each; print "ready", hold
//!                                        them until stdin closes
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("echo") => echo(&args[2]).await,
            Some("service") => service(&args[2], &args[3]).await,
            Some("rtt") => {
                let tls = args.get(6).is_some_and(|a| a == "tls");
                rtt(&args[2], &args[3], args[4].parse().unwrap(), args[5].parse().unwrap(), tls).await
            }
            Some("idle") => {
                let tls = args.get(4).is_some_and(|a| a == "tls");
                idle(&args[2], args[3].parse().unwrap(), tls).await
            }
            _ => {
                eprintln!("usage: wsbench echo ADDR | service ADDR TEXT | rtt HOST:PORT PATH CONNS SECS [tls] | idle HOST:PORT N [tls]");
                2
            }
        }
    });
    std::process::exit(code);
}

async fn echo(addr: &str) -> i32 {
    let listener = TcpListener::bind(addr).await.expect("bind");
    println!("listening {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn service(addr: &str, text: &str) -> i32 {
    use http_body_util::Full;
    use hyper::body::Incoming;
    let listener = TcpListener::bind(addr).await.expect("bind");
    println!("listening {}", listener.local_addr().unwrap());
    let text: Arc<str> = text.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let text = text.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                let text = text.clone();
                async move {
                    let key = req.headers().get("sec-websocket-key").cloned();
                    let Some(key) = key else {
                        let body = format!("{text} {}\n", req.uri().path());
                        return Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from(body),
                        )));
                    };
                    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                        key.as_bytes(),
                    );
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(up) = on.await else { return };
                        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                            hyper_util::rt::TokioIo::new(up),
                            tokio_tungstenite::tungstenite::protocol::Role::Server,
                            None,
                        )
                        .await;
                        while let Some(Ok(msg)) = ws.next().await {
                            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut res = hyper::Response::new(Full::new(bytes::Bytes::new()));
                    *res.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                    let h = res.headers_mut();
                    h.insert(
                        "upgrade",
                        hyper::header::HeaderValue::from_static("websocket"),
                    );
                    h.insert(
                        "connection",
                        hyper::header::HeaderValue::from_static("Upgrade"),
                    );
                    h.insert("sec-websocket-accept", accept.parse().unwrap());
                    Ok(res)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn insecure() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(Any))
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

async fn rtt(addr: &str, path: &str, conns: usize, secs: u64, tls: bool) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, path) = (addr.to_string(), path.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let tcp = TcpStream::connect(&addr).await.expect("connect");
            tcp.set_nodelay(true).ok();
            let url = format!("{}://localhost{path}", if tls { "wss" } else { "ws" });
            let payload = "x".repeat(32);
            macro_rules! run {
                ($ws:expr) => {{
                    let mut ws = $ws;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if ws.send(Message::text(payload.clone())).await.is_err() {
                            return (lat, 1usize);
                        }
                        match ws.next().await {
                            Some(Ok(_)) => lat.push(t.elapsed().as_micros() as u64),
                            _ => return (lat, 1),
                        }
                    }
                    let _ = ws.close(None).await;
                    (lat, 0)
                }};
            }
            if tls {
                let s = tokio_rustls::TlsConnector::from(insecure())
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
                    .expect("tls");
                let (ws, _) = tokio_tungstenite::client_async(url, s)
                    .await
                    .expect("upgrade");
                run!(ws)
            } else {
                let (ws, _) = tokio_tungstenite::client_async(url, tcp)
                    .await
                    .expect("upgrade");
                run!(ws)
            }
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("task");
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\": {}, \"seconds\": {secs}, \"p50_us\": {}, \"p99_us\": {}, \"errors\": {errors}}}",
        all.len(),
        pct(0.50),
        pct(0.99)
    );
    0
}

async fn idle(addr: &str, n: usize, tls: bool) -> i32 {
    trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}
    let mut held: Vec<Box<dyn Conn>> = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4096];
    let connector = tokio_rustls::TlsConnector::from(insecure());
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut s: Box<dyn Conn> = if tls {
            Box::new(
                connector
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
                    .expect("tls"),
            )
        } else {
            Box::new(tcp)
        };
        s.write_all(b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        // Read the whole small response (headers + 13 bytes).
        let mut got = Vec::new();
        while !got.windows(13).any(|w| w == b"Hello, world!") {
            let k = s.read(&mut buf).await.expect("read");
            assert!(k > 0, "closed");
            got.extend_from_slice(&buf[..k]);
        }
        held.push(s);
    }
    println!("ready {}", held.len());
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    })
    .await;
    drop(held);
    0
}
