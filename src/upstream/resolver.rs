//! Name resolution for upstream connections: looked up again whenever a
//! new connection is made, with a few seconds of positive cache, so a
//! Docker service that restarts with a new address is found without a
//! restart (nginx resolves once at start-up).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long a resolved name is reused before it is looked up again.
pub(crate) const DNS_TTL: Duration = Duration::from_secs(5);

type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// Name → (when it was looked up, its addresses).
type Cache = std::collections::HashMap<String, (Instant, Arc<[SocketAddr]>)>;

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

    /// Drops a name's cached addresses, after connecting to all of them
    /// failed.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Held only for a map lookup or insert; a poisoned map is still valid.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
