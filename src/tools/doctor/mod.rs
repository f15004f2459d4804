//! `gatehouse doctor URL` (issue 5): checks an installation from outside,
//! the way a browser reaches it, and explains what is wrong in plain words.
//!
//! It runs the "Testing" list of the reverse-proxy guide (`/` loads the
//! client, `/api` answers, `/admin` loads the admin panel, a WebSocket under
//! `/admin` upgrades, all on one hostname) and diagnoses the guide's common
//! issues: 502/503 and who answered them, WebSocket headers dropped by the
//! proxy in front, TLS verification failing, paths stripped or rewritten,
//! forwarding headers missing or not believed. With `--token`, every check
//! also asks Gatehouse's diagnostic endpoint (see
//! `proxy::diagnostics`) what actually arrived, which turns guesses into
//! findings.
//!
//! Each request uses a connection of its own, so one broken check cannot
//! disturb the next.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

mod checks;
mod client;
mod findings;

use checks::Doctor;
use client::Target;
use findings::*;
pub use findings::{Check, Finding, Outcome};
/// Where the probe requests go; nothing serves this path, so without the
/// diagnostic endpoint it is an ordinary miss.
const PROBE: &str = "/.well-known/gatehouse-doctor";

/// Largest response body read for a check.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Options {
    /// The public address, e.g. `https://aliasvault.example.com`.
    pub url: Uri,
    /// Connect here instead of the URL's host (`HOST:PORT`), keeping the
    /// URL's name for SNI and `Host`: test before DNS points at the server.
    pub connect_to: Option<String>,
    /// Extra trusted roots (PEM), e.g. Gatehouse's self-signed certificate.
    pub ca: Vec<PathBuf>,
    /// The diagnostic endpoint's token (`[diagnostics] token`).
    pub token: Option<String>,
    pub api: String,
    pub admin: String,
    pub timeout: Duration,
}

/// Runs every check against `opts.url`.
pub async fn run(opts: &Options) -> Outcome {
    let mut out = Outcome {
        url: opts.url.to_string(),
        ..Outcome::default()
    };
    let target = match Target::new(opts) {
        Ok(t) => t,
        Err(e) => {
            let e = e.text();
            out.check("connection", false, e.clone());
            out.find("unreachable", None, e, FIX_UNREACHABLE);
            return out;
        }
    };
    let mut d = Doctor {
        t: target,
        opts,
        out,
        verify: true,
        reports: Vec::new(),
    };
    if d.connection().await {
        d.run_checks().await;
    }
    d.out
}
