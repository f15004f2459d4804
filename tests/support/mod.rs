//! Test harness: the real proxy in-process on 127.0.0.1:0, real upstream
//! servers on 127.0.0.1:0, and real clients (hyper over TCP or rustls).

// Shared by the two test binaries (the in-process suite and the one
// driving outside programs); each uses a part of it.
#![allow(dead_code)]

pub mod apps;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse::config::{self, Env, Source};
use gatehouse::Server;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Every await in a test goes through this.
pub const LIMIT: Duration = Duration::from_secs(20);

pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

// ---------------------------------------------------------------- upstreams

/// A real HTTP/1.1 server on an ephemeral loopback port.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    upstream_on("127.0.0.1:0", handler).await
}

pub async fn upstream_on<F, Fut>(bind: &str, handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind(bind).await.expect("bind upstream");
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, connections }
}

/// Echoes what it received as text: the request line (target exactly as
/// sent), every header, a blank line, then the body.
pub async fn echo() -> Upstream {
    upstream(echo_handler).await
}

pub async fn echo_handler(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut text = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
    for (k, v) in &parts.headers {
        text.push_str(&format!(
            "{}: {}\n",
            k,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    text.push('\n');
    let mut out = text.into_bytes();
    out.extend_from_slice(&body);
    let mut res = Response::new(full(out));
    res.headers_mut()
        .insert("content-type", "application/octet-stream".parse().unwrap());
    res
}

/// What the echo upstream saw, parsed back.
pub struct Seen {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    pub fn parse(b: &Bytes) -> Seen {
        let split = b
            .windows(2)
            .position(|w| w == b"\n\n")
            .expect("echo format");
        let head = std::str::from_utf8(&b[..split]).unwrap();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap().to_string();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Seen {
            request_line,
            headers,
            body: b.slice(split + 2..),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An upstream that always answers `status` with `body`.
pub async fn fixed(status: u16, body: &'static str) -> Upstream {
    upstream(move |_req| async move {
        let mut res = Response::new(full(body));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        res
    })
    .await
}

/// A WebSocket echo upstream (tokio-tungstenite), at any path.
pub async fn websocket_echo() -> Upstream {
    use futures_util::{SinkExt, StreamExt};
    upstream(|mut req: Request<Incoming>| async move {
        let key = req.headers().get("sec-websocket-key").cloned();
        let Some(key) = key else {
            return Response::new(full("not a websocket"));
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
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
        let mut res = Response::new(full(Bytes::new()));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        res.headers_mut()
            .insert("connection", "Upgrade".parse().unwrap());
        res.headers_mut()
            .insert("sec-websocket-accept", accept.parse().unwrap());
        res
    })
    .await
}

/// A raw TCP upstream: reads a request head, then runs `script` on the socket.
pub async fn raw_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            tokio::spawn(async move {
                read_head(&mut stream).await;
                script(stream).await;
            });
        }
    });
    addr
}

/// An upstream that answers every request with `bytes`, as they are, and
/// closes: for answers no HTTP library would write.
pub async fn answering(bytes: &[u8]) -> SocketAddr {
    let bytes = bytes.to_vec();
    raw_upstream(move |mut s| {
        let bytes = bytes.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
    })
    .await
}

/// Reads until the end of an HTTP head.
pub async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    buf
}

/// A port for a program that must be told its port before it starts
/// (Pebble, nginx, Apache, ...). Drawn just below the kernel's ephemeral
/// range (`ip_local_port_range`), so no `bind(0)` or outgoing connection
/// of a parallel test can take it between this check and the program's
/// own bind; only these picks compete, and they do not repeat in a run.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let span = 8000.min(low.saturating_sub(1024));
    let base = low - span;
    // Different test processes start at different places.
    let offset = std::process::id() as usize * 7919;
    for _ in 0..span {
        let port = base + (offset + NEXT.fetch_add(1, Ordering::SeqCst)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port in {base}..{low}");
}

// ------------------------------------------------------------- the binary

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Runs the binary to completion with a clean environment.
pub async fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied());
    let out = within(cmd.output()).await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A served process whose stdout lines arrive on a channel.
pub struct Running {
    pub child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = tokio::process::Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stream));
                while let Ok(Some(l)) = r.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle` and returns it.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let line = within(self.lines.recv()).await.unwrap_or_else(|| {
                panic!(
                    "exited before printing {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The next line not read yet (by this or by `wait_for`).
    pub async fn next_line(&mut self) -> String {
        let line = within(self.lines.recv())
            .await
            .unwrap_or_else(|| panic!("exited; saw:\n{}", self.seen.join("\n")));
        self.seen.push(line.clone());
        line
    }

    /// Every line printed, to the end of the output (the process has
    /// exited or is about to).
    pub async fn all_output(&mut self) -> String {
        while let Some(line) = within(self.lines.recv()).await {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// How many lines printed so far contain `needle` (without waiting for
    /// more).
    pub fn count_so_far(&mut self, needle: &str) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }

    /// The port of the first `scheme://host:PORT` printed after `prefix`.
    pub async fn port_after(&mut self, prefix: &str) -> u16 {
        let line = self.wait_for(prefix).await;
        let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no port in {line:?}"))
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args(["-s", sig, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub async fn exit_code(&mut self) -> i32 {
        within(self.child.wait())
            .await
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

// -------------------------------------------------------------------- proxy

pub struct Proxy {
    pub server: Option<Server>,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy from a TOML fragment (routes and any settings);
    /// ports and bind address default to ephemeral loopback.
    pub async fn start(toml: &str) -> Proxy {
        Self::start_env(toml, &[]).await
    }

    pub async fn start_env(toml: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, toml, env).await
    }

    pub async fn start_in(dir: tempfile::TempDir, toml: &str, env: &[(&str, &str)]) -> Proxy {
        let cfg = load(dir.path(), toml, env).expect("config loads");
        let server = within(Server::start(cfg)).await.expect("server starts");
        let http = server.http_addrs[0];
        let https = server.https_addrs[0];
        Proxy {
            server: Some(server),
            http,
            https,
            dir,
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("certificates/ssl/cert.pem")
    }

    /// HTTP/1.1 over plain TCP to the HTTP port.
    pub async fn get(&self, path: &str) -> Resp {
        send(
            Proto::H1,
            self.http,
            &self.cert_path(),
            get(path, "localhost"),
        )
        .await
        .unwrap()
    }

    /// Over TLS to the HTTPS port, HTTP/1.1 or HTTP/2.
    pub async fn get_tls(&self, proto: Proto, path: &str) -> Resp {
        send(proto, self.https, &self.cert_path(), get(path, "localhost"))
            .await
            .unwrap()
    }

    pub async fn send(&self, proto: Proto, req: Request<Body>) -> Result<Resp, BoxError> {
        let addr = if proto == Proto::H1 {
            self.http
        } else {
            self.https
        };
        send(proto, addr, &self.cert_path(), req).await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            within(s.shutdown(Duration::from_secs(5))).await;
        }
    }
}

/// An upstream answering `name` on every path but `/health`, where it
/// answers 200 while `healthy` holds and 503 otherwise: a server for
/// active health checks.
pub async fn health_checked(
    name: &'static str,
    healthy: Arc<std::sync::atomic::AtomicBool>,
) -> Upstream {
    upstream(move |req: Request<Incoming>| {
        let ok = healthy.load(Ordering::SeqCst);
        async move {
            let mut res = Response::new(full(name));
            if req.uri().path() == "/health" && !ok {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            res
        }
    })
    .await
}

/// Requests `/` until six answers in a row are `want` (a server taken out
/// of the rotation), checking every 50 ms, within `LIMIT`.
pub async fn until_only(px: &Proxy, want: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut streak = 0;
    while streak < 6 {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        streak = if px.get("/").await.text() == want {
            streak + 1
        } else {
            0
        };
        if streak == 0 {
            tick.tick().await;
        }
    }
}

/// Loads a test configuration: `http_port`/`https_port` 0 and bind
/// 127.0.0.1 unless the fragment sets them; relative paths in `dir`.
pub fn load(
    dir: &Path,
    toml: &str,
    env: &[(&str, &str)],
) -> Result<config::Config, config::ConfigError> {
    // Top-level keys must precede every table, so defaults go first.
    let mut text = String::new();
    for (key, default) in [
        ("http_port", "0"),
        ("https_port", "0"),
        ("bind", "[\"127.0.0.1\"]"),
        // The access log would flood the test output: off unless asked for.
        ("log_format", "\"off\""),
    ] {
        if !toml.lines().any(|l| l.trim_start().starts_with(key)) {
            text.push_str(&format!("{key} = {default}\n"));
        }
    }
    text.push_str(toml);
    // Tests run in parallel: none takes the fixed default metrics port.
    if !toml.contains("[metrics]") {
        text.push_str("\n[metrics]\nenabled = false\n");
    }
    let source = Source::Text {
        name: dir.join("gatehouse.toml"),
        text,
        base_dir: dir.to_path_buf(),
    };
    config::load(&source, &Env::from_pairs(env.iter().copied()))
}

pub fn route(path: &str, upstream: &str, extra: &str) -> String {
    format!("[[route]]\npath = \"{path}\"\nupstream = \"{upstream}\"\n{extra}\n")
}

/// A routes-only configuration pointing every AliasVault path at upstreams.
pub fn routes(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (path, url) in pairs {
        s.push_str(&format!(
            "[[route]]\npath = \"{path}\"\nupstream = \"{url}\"\n\n"
        ));
    }
    s
}

// ------------------------------------------------------------------ clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 on plain TCP.
    H1,
    /// HTTP/1.1 over TLS (ALPN http/1.1).
    TlsH1,
    /// HTTP/2 over TLS (ALPN h2).
    TlsH2,
}

pub const TLS_PROTOS: [Proto; 2] = [Proto::TlsH1, Proto::TlsH2];

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn seen(&self) -> Seen {
        Seen::parse(&self.body)
    }
}

pub fn get(path: &str, host: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(full(Bytes::new()))
        .unwrap()
}

/// A rustls client that trusts the proxy's certificate file as its root.
pub fn tls_client(cert: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).expect("cert file") {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

pub async fn tls_connect(
    addr: SocketAddr,
    cert: &Path,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_client(cert, alpn));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// Sends one request on a new connection and reads the whole response.
pub async fn send(
    proto: Proto,
    addr: SocketAddr,
    cert: &Path,
    req: Request<Body>,
) -> Result<Resp, BoxError> {
    within(async {
        let res = match proto {
            Proto::H1 => {
                let tcp = TcpStream::connect(addr).await?;
                h1_send(TokioIo::new(tcp), req).await?
            }
            Proto::TlsH1 => {
                let tls = tls_connect(addr, cert, &[b"http/1.1"]).await?;
                h1_send(TokioIo::new(tls), req).await?
            }
            Proto::TlsH2 => {
                let tls = tls_connect(addr, cert, &[b"h2"]).await?;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await?;
                tokio::spawn(conn);
                // HTTP/2 carries the host as :authority.
                let (mut parts, body) = req.into_parts();
                let host = parts.headers.remove("host").unwrap();
                parts.uri = format!("https://{}{}", host.to_str()?, parts.uri).parse()?;
                parts.version = Version::HTTP_2;
                sender
                    .send_request(Request::from_parts(parts, body))
                    .await?
            }
        };
        collect(res).await
    })
    .await
}

async fn h1_send<I>(io: I, req: Request<Body>) -> Result<Response<Incoming>, BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender.send_request(req).await?)
}

pub async fn collect(res: Response<Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = res.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Writes raw bytes on a new TCP connection and reads until the peer closes
/// or `limit` bytes arrived.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// True when this machine can bind [::1].
pub fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

// ----------------------------------------------------------------- metrics

/// Prometheus text format: every sample line is `name{labels} value`,
/// after the `# HELP` and `# TYPE` lines of its family; a `_total` series
/// is a counter.
pub fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let mut types = std::collections::HashMap::new();
    let mut helped = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "unknown type in {line:?}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            helped.insert(name.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line:?}");
        let name = line.split(['{', ' ']).next().unwrap();
        // A histogram's samples belong to the family without the suffix.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{name} has no TYPE line before it"));
        assert!(helped.contains(family), "{name} has no HELP line");
        if name.ends_with("_total") {
            assert_eq!(kind, "counter", "{line}");
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            series.chars().next().unwrap().is_ascii_alphabetic(),
            "{line}"
        );
        if let Some(open) = series.find('{') {
            assert!(series.ends_with('}'), "{line}");
            for pair in series[open + 1..series.len() - 1].split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                let _ = v;
            }
        }
        out.insert(series.to_string(), value);
    }
    out
}
