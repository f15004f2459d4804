//! The upstream side: a pooled HTTP/1.1 client per route whose connector
//! resolves names again when it connects.
//!
//! nginx resolves an upstream name once at start-up, so a Docker service
//! that restarts with a new address gets 502s until nginx restarts. Here a
//! name is looked up whenever a new connection is made (with a few seconds
//! of cache), and every address it resolves to is tried in turn, so
//! `localhost` works whether it means ::1 or 127.0.0.1 (AliasVault #1627).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::UpstreamBody;

pub type HttpClient = Client<HttpConnector<Resolver>, UpstreamBody>;

/// How long a resolved name is reused before it is looked up again.
pub const DNS_TTL: Duration = Duration::from_secs(5);

/// Builds the pooled client of one route.
pub fn client(connect_timeout: Duration) -> HttpClient {
    client_with(Resolver::new(DNS_TTL), connect_timeout)
}

/// [`client`] over a given resolver.
pub fn client_with(resolver: Resolver, connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new_with_resolver(resolver);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        // The proxy sets Host itself: the client's, as it sent it.
        .set_host(false)
        .build(connector)
}

type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// Name → (when it was looked up, its addresses).
type Cache = HashMap<String, (Instant, Arc<[SocketAddr]>)>;

/// A DNS resolver with a short positive cache. Failures are not cached, so
/// a service that comes up is found on the next attempt.
#[derive(Clone)]
pub struct Resolver {
    ttl: Duration,
    cache: Arc<Mutex<Cache>>,
    lookup: Lookup,
}

impl Resolver {
    pub fn new(ttl: Duration) -> Self {
        Self::with_lookup(ttl, |name| {
            Box::pin(
                async move { Ok(tokio::net::lookup_host((name.as_str(), 0)).await?.collect()) },
            )
        })
    }

    /// A resolver over another lookup function (tests of the cache).
    pub fn with_lookup<F>(ttl: Duration, lookup: F) -> Self
    where
        F: Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>
            + Send
            + Sync
            + 'static,
    {
        Resolver {
            ttl,
            cache: Arc::default(),
            lookup: Arc::new(lookup),
        }
    }

    /// Runs when a new upstream connection is needed; returns every address.
    pub async fn resolve_name(&self, name: &str) -> io::Result<Arc<[SocketAddr]>> {
        let now = Instant::now();
        if let Some((at, addrs)) = self.lock().get(name) {
            if now.duration_since(*at) < self.ttl {
                return Ok(addrs.clone());
            }
        }
        let addrs: Arc<[SocketAddr]> = (self.lookup)(name.to_string()).await?.into();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} has no address"),
            ));
        }
        self.lock().insert(name.to_string(), (now, addrs.clone()));
        Ok(addrs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Held only for a map lookup or insert; a poisoned map is still valid.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The addresses of one lookup, in resolver order.
pub struct Addrs {
    addrs: Arc<[SocketAddr]>,
    next: usize,
}

impl Iterator for Addrs {
    type Item = SocketAddr;
    fn next(&mut self) -> Option<SocketAddr> {
        let a = self.addrs.get(self.next).copied();
        self.next += 1;
        a
    }
}

impl tower_service::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Addrs>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve_name(name.as_str()).await?;
            Ok(Addrs { addrs, next: 0 })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU16, Ordering};

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_after_the_ttl() {
        // Each lookup "moves the container" to a new port.
        let calls = Arc::new(AtomicU16::new(0));
        let c = calls.clone();
        let r = Resolver::with_lookup(Duration::from_millis(50), move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(vec![SocketAddr::from(([127, 0, 0, 1], 1000 + n))]) })
        });
        let first = r.resolve_name("api").await.unwrap();
        assert_eq!(
            r.resolve_name("api").await.unwrap(),
            first,
            "cached within the TTL"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(60)).await;
        let moved = r.resolve_name("api").await.unwrap();
        assert_eq!(moved[0].port(), 1001, "looked up again after the TTL");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let calls = Arc::new(AtomicU16::new(0));
        let c = calls.clone();
        let r = Resolver::with_lookup(Duration::from_secs(60), move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    Err(io::Error::other("not yet"))
                } else {
                    Ok(vec![SocketAddr::from(([127, 0, 0, 1], 80))])
                }
            })
        });
        assert!(r.resolve_name("admin").await.is_err());
        assert!(r.resolve_name("admin").await.is_ok());
    }
}
