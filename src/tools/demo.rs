//! `gatehouse demo`: AliasVault's three services in miniature on loopback,
//! with the proxy in front, so a newcomer sees routing, TLS, the redirect
//! and a WebSocket through the proxy with one command.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::config::{self, Env, Source, TlsSettings};

pub const HTTP_PORT: u16 = 8080;
pub const HTTPS_PORT: u16 = 8443;

pub fn main(http_port: u16, https_port: u16) -> ExitCode {
    let Some(rt) =
        crate::ops::supervisor::runtime(&mut tokio::runtime::Builder::new_multi_thread())
    else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async {
        let (client, api, admin) = match start_upstreams().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: cannot start the sample upstreams: {e}");
                return ExitCode::FAILURE;
            }
        };
        let text = demo_config(client, api, admin, http_port, https_port);
        let source = Source::Text {
            name: PathBuf::from("<demo>"),
            text,
            base_dir: PathBuf::from("."),
        };
        let mut cfg = match config::load(&source, &Env::empty()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {}", crate::base::error_chain::ErrorChain(&e));
                return ExitCode::from(crate::config::EXIT_CONFIG);
            }
        };
        cfg.tls = TlsSettings::Ephemeral;
        crate::ops::supervisor::serve_until_signal(cfg, None, |server| {
            let https = server.https_addrs.first().map_or(https_port, |a| a.port());
            let http = server.http_addrs.first().map_or(http_port, |a| a.port());
            println!("Gatehouse demo: three sample services behind one proxy.");
            println!("  https://localhost:{https}/        client app");
            println!("  https://localhost:{https}/api     API (answers OK)");
            println!("  https://localhost:{https}/admin   admin panel with a live WebSocket");
            println!(
                "  http://localhost:{http}/          redirects to HTTPS, keeping port {https}"
            );
            println!("The certificate is self-signed: accept it in the browser, or use curl -k.");
            println!("Press Ctrl-C to stop.");
        })
        .await
    })
}

/// The demo's configuration: AliasVault's routes pointing at loopback.
pub fn demo_config(
    client: SocketAddr,
    api: SocketAddr,
    admin: SocketAddr,
    http: u16,
    https: u16,
) -> String {
    format!(
        r#"http_port = {http}
https_port = {https}
bind = ["127.0.0.1"]
hostname = "localhost"
deployment_mode = "demo"

[[route]]
path = "/admin"
upstream = "http://{admin}"
forwarded_prefix = "/admin/"
websocket_timeout = "24h"

[[route]]
path = "/api"
upstream = "http://{api}"

[[route]]
path = "/"
upstream = "http://{client}"
"#
    )
}

/// Starts the client, API and admin samples on ephemeral loopback ports.
pub async fn start_upstreams() -> std::io::Result<(SocketAddr, SocketAddr, SocketAddr)> {
    let client = spawn(Service::Client).await?;
    let api = spawn(Service::Api).await?;
    let admin = spawn(Service::Admin).await?;
    Ok((client, api, admin))
}

#[derive(Clone, Copy)]
enum Service {
    Client,
    Api,
    Admin,
}

async fn spawn(kind: Service) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(kind, req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
}

fn page(ct: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    res
}

async fn answer(
    kind: Service,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match kind {
        Service::Client => page("text/html; charset=utf-8", CLIENT_PAGE),
        Service::Api => page("text/plain; charset=utf-8", "OK"),
        // Blazor Server's SignalR negotiate, so `gatehouse doctor` finds the
        // admin WebSocket where it looks for AliasVault's.
        Service::Admin if req.uri().path() == "/admin/_blazor/negotiate" => page(
            "application/json",
            r#"{"negotiateVersion":1,"connectionToken":"demo"}"#,
        ),
        Service::Admin if matches!(req.uri().path(), "/admin/ws" | "/admin/_blazor") => {
            let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
                let mut res = page("text/plain", "expected a WebSocket upgrade");
                *res.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(res);
            };
            let accept = derive_accept_key(key.as_bytes());
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Ok(v) = HeaderValue::from_str(&accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            res
        }
        Service::Admin => page("text/html; charset=utf-8", ADMIN_PAGE),
    })
}

const CLIENT_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Client app</title></head>
<body style="font-family:system-ui;max-width:40rem;margin:3rem auto">
<h1>Client app</h1>
<p>This page comes from the <b>client</b> service, routed at <code>/</code>.</p>
<p>API status (<code>/api</code>): <b id="api">…</b></p>
<p><a href="/admin">Open the admin panel</a></p>
<script>
fetch('/api').then(r => r.text()).then(t => document.getElementById('api').textContent = t)
  .catch(e => document.getElementById('api').textContent = 'error: ' + e);
</script>
</body></html>
"#;

const ADMIN_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Admin panel</title></head>
<body style="font-family:system-ui;max-width:40rem;margin:3rem auto">
<h1>Admin panel</h1>
<p>This page comes from the <b>admin</b> service, routed at <code>/admin</code>.
It keeps a WebSocket open through the proxy, as Blazor Server does.</p>
<p>WebSocket: <b id="state">connecting…</b></p>
<ol id="echoes"></ol>
<script>
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/admin/ws');
let n = 0;
ws.onopen = () => {
  document.getElementById('state').textContent = 'open';
  setInterval(() => ws.send('ping ' + (++n)), 1000);
};
ws.onmessage = (e) => {
  const li = document.createElement('li');
  li.textContent = 'echo: ' + e.data;
  document.getElementById('echoes').prepend(li);
};
ws.onclose = () => document.getElementById('state').textContent = 'closed';
</script>
</body></html>
"#;
