//! The state of a running server as operations see it: the two narrow
//! contexts the layers below are given (the connection layer's and the
//! request pipeline's, sharing one swappable runtime) and the counters of
//! reloads. The admin listener reads it; `Server` owns it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::certs::CertResolver;
use crate::runtime::metrics::Metrics;
use crate::runtime::Runtime;

pub struct Shared {
    /// The configuration in service, the same one both contexts load.
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub connections: Arc<crate::conn::Context>,
    pub pipeline: Arc<crate::proxy::Context>,
    pub certs: Arc<CertResolver>,
    pub metrics: Arc<Metrics>,
    /// Configuration generation: 1 at start, +1 per successful reload.
    pub generation: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Settings changed on disk that only a restart applies (0 or more).
    pub restart_pending: AtomicU64,
    /// The Redis the replicas share (`[cluster]`), made once at start.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Shared {
    /// Client connections open right now.
    pub fn open_connections(&self) -> usize {
        self.connections.conns.open()
    }
}
