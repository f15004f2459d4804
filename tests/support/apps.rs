//! The three AliasVault services as small real servers (a client page, an
//! API answering "OK", an admin panel with Blazor's negotiate and
//! WebSocket under /admin) and Gatehouse in front of them: what the doctor
//! tests check, directly and through the proxies in front.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::*;

/// Every check `gatehouse doctor` runs with a token.
pub const ALL_CHECKS: [&str; 7] = [
    "connection",
    "diagnostics",
    "client",
    "api",
    "admin",
    "websocket",
    "websocket (proxy)",
];

pub const TOKEN: &str = "doctor-test-token-0123456789";
pub const HOST: &str = "gatehouse.test";
/// The connection token the fake Blazor negotiate hands out.
pub const CIRCUIT: &str = "circuit-42";

/// The three AliasVault services: a client page, an API answering "OK",
/// and an admin panel with Blazor's negotiate + WebSocket under /admin.
pub struct Apps {
    pub client: Upstream,
    pub api: Upstream,
    pub admin: Upstream,
}

pub async fn apps() -> Apps {
    let client = upstream(|_req: Request<Incoming>| async {
        html("<!DOCTYPE html><title>AliasVault</title>client app")
    })
    .await;
    let api = fixed(200, "OK").await;
    let admin = upstream(admin_handler).await;
    Apps { client, api, admin }
}

pub fn html(body: &'static str) -> Response<Body> {
    let mut res = Response::new(full(body));
    res.headers_mut()
        .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
    res
}

/// A Blazor Server stand-in: SignalR negotiate hands out a connection
/// token, and only an upgrade carrying it under /admin/_blazor is accepted.
pub async fn admin_handler(mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if req.method() == Method::POST && path == "/admin/_blazor/negotiate" {
        let mut res = Response::new(full(format!(
            "{{\"negotiateVersion\":1,\"connectionToken\":\"{CIRCUIT}\"}}"
        )));
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return res;
    }
    if path == "/admin/_blazor" {
        let key = req.headers().get("sec-websocket-key").cloned();
        let wants = req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let Some(key) = key.filter(|_| wants && query == format!("id={CIRCUIT}")) else {
            let mut res = Response::new(full("not a circuit upgrade"));
            *res.status_mut() = StatusCode::BAD_REQUEST;
            return res;
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                use tokio::io::AsyncReadExt;
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await;
            }
        });
        let mut res = Response::new(full(Bytes::new()));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("sec-websocket-accept", accept.parse().unwrap());
        return res;
    }
    html("<!DOCTYPE html><title>Admin</title>admin panel")
}

pub fn layout(apps: &Apps) -> String {
    format!(
        "[diagnostics]\ntoken = \"{TOKEN}\"\n\n{}",
        routes(&[
            ("/admin", &apps.admin.url()),
            ("/api", &apps.api.url()),
            ("/", &apps.client.url()),
        ])
    )
}

/// Gatehouse for HOST with the diagnostic endpoint on.
pub async fn gatehouse(apps: &Apps, trusted: &str) -> Proxy {
    Proxy::start_env(
        &layout(apps),
        &[("HOSTNAME", HOST), ("TRUSTED_PROXIES", trusted)],
    )
    .await
}
