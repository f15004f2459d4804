//! Replicas sharing state through Redis (issue 14): rate limits, the ACME
//! account, certificates, challenge answers and the order lock.
//!
//! One `Cluster` per process, made at start from `[cluster]` (a reload that
//! changes it asks for a restart). It holds one multiplexed connection that
//! reconnects by itself, a watch task that pings Redis, and a breaker: when
//! a call fails or is slower than `timeout`, Redis is marked down and
//! limited requests stop waiting for it (they follow `on_redis_error`)
//! until a ping succeeds again. Each outage is logged once when it starts
//! and once when it ends. Requests on routes without a rate limit never
//! reach this module.

pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::config::ClusterSettings;

/// Why the cluster could not be set up or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis")]
    Redis(#[from] redis::RedisError),
    #[error("cannot read ca_file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis is marked unreachable")]
    Down,
    #[error("a stored value is not what Gatehouse wrote: {0}")]
    Corrupt(&'static str),
}

/// Counters for `/metrics`, kept here so the layers above only read them.
#[derive(Default)]
pub struct Stats {
    /// Redis commands and scripts that answered.
    pub round_trips: AtomicU64,
    /// Their summed time, for the mean.
    pub round_trip_micros: AtomicU64,
    /// Commands that failed or timed out.
    pub errors: AtomicU64,
    /// Rate-limit decisions taken without Redis (`on_redis_error`).
    pub fallbacks: AtomicU64,
    /// Times Redis went from reachable to unreachable.
    pub outages: AtomicU64,
    /// This replica holds the ACME order lock now.
    pub lock_held: AtomicBool,
    /// Locks this replica acquired.
    pub lock_acquisitions: AtomicU64,
    /// Certificates another replica issued that this one took over.
    pub certs_adopted: AtomicU64,
}

pub struct Cluster {
    pub settings: ClusterSettings,
    client: redis::Client,
    conn: ConnectionManager,
    up: AtomicBool,
    pub stats: Stats,
    gcra: redis::Script,
    scripts: store::Scripts,
}

/// The shared GCRA step (the same algorithm as `policy::rate_limit`), on
/// Redis's clock so replicas with skewed clocks agree. Scripts run
/// atomically, so one round trip decides and records. Returns 0 to admit,
/// otherwise the wait in microseconds before a request would be admitted.
/// KEYS[1]: the client's key; ARGV[1]: emission interval, ARGV[2]:
/// tolerance (burst × interval), both in microseconds.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now > tolerance then
  return nxt - now - tolerance
end
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
return 0
";

/// How often the watch task pings while Redis answers, and while it does
/// not (a shorter wait: shared limits come back soon after Redis does).
const PING_UP: Duration = Duration::from_secs(1);
const PING_DOWN: Duration = Duration::from_millis(250);

impl Cluster {
    /// Builds the client and its (lazy) connection; nothing is sent yet, so
    /// a replica starts, and serves on its local limits, while Redis is
    /// down. The CA file is read here, on the caller's thread: start-up
    /// runs it through the blocking pool.
    pub fn new(settings: ClusterSettings) -> Result<Arc<Cluster>, ClusterError> {
        let client = match &settings.ca_file {
            Some(path) => {
                let root = std::fs::read(path).map_err(|source| ClusterError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                redis::Client::build_with_tls(
                    settings.redis.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )?
            }
            None => redis::Client::open(settings.redis.as_str())?,
        };
        // Reconnects are quick and bounded: the breaker, not the client,
        // decides when requests stop waiting.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Arc::new(Cluster {
            settings,
            client,
            conn,
            up: AtomicBool::new(true),
            stats: Stats::default(),
            gcra: redis::Script::new(GCRA),
            scripts: store::Scripts::new(),
        }))
    }

    /// The full key of `name` under the configured prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.settings.key_prefix)
    }

    /// True while Redis answers (the breaker is closed).
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Probes Redis for the life of the server and moves the breaker. The
    /// probe is the rate-limit script itself on a key of its own (always
    /// admitted), not a PING: a Redis that answers PING but refuses the
    /// script's write (a read-only replica, out of memory) stays out instead
    /// of flapping in and out once a second.
    pub async fn watch(self: Arc<Self>) {
        let probe_key = self.key("rl:probe");
        loop {
            let mut probe = self.gcra.key(&probe_key);
            probe.arg(1u64).arg(1_000_000u64);
            let bound = self.settings.timeout.max(Duration::from_millis(500));
            match self.script::<u64>(&probe, bound).await {
                Ok(_) => self.mark_up(),
                Err(e) => self.mark_down(&e),
            }
            let wait = if self.is_up() { PING_UP } else { PING_DOWN };
            tokio::time::sleep(wait).await;
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!(
                "cluster: Redis at {} answers again; rate limits are shared again",
                self.settings.redis_redacted()
            );
        }
    }

    fn mark_down(&self, why: &ClusterError) {
        if self.up.swap(false, Relaxed) {
            self.stats.outages.fetch_add(1, Relaxed);
            tracing::warn!(
                "cluster: Redis at {} is unreachable ({}); rate limits follow on_redis_error = {} until it answers",
                self.settings.redis_redacted(),
                crate::base::error_chain::ErrorChain(why),
                match self.settings.on_redis_error {
                    crate::config::OnRedisError::Local => "local",
                    crate::config::OnRedisError::Allow => "allow",
                    crate::config::OnRedisError::Deny => "deny",
                }
            );
        }
    }

    /// One command with a time bound, counted.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        bound: Duration,
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        let start = Instant::now();
        let result = tokio::time::timeout(bound, cmd.query_async::<T>(&mut conn)).await;
        self.count(start, result)
    }

    /// One script invocation with a time bound, counted.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        bound: Duration,
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        let start = Instant::now();
        let result = tokio::time::timeout(bound, invocation.invoke_async::<T>(&mut conn)).await;
        self.count(start, result)
    }

    fn count<T>(
        &self,
        start: Instant,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, ClusterError> {
        match result {
            Ok(Ok(v)) => {
                self.stats.round_trips.fetch_add(1, Relaxed);
                self.stats
                    .round_trip_micros
                    .fetch_add(start.elapsed().as_micros() as u64, Relaxed);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.stats.errors.fetch_add(1, Relaxed);
                Err(ClusterError::Redis(e))
            }
            Err(_) => {
                self.stats.errors.fetch_add(1, Relaxed);
                Err(ClusterError::Timeout(start.elapsed()))
            }
        }
    }

    /// The shared rate-limit decision for `client` on `route`: `Ok(Ok(()))`
    /// admits, `Ok(Err(wait))` refuses, `Err` means Redis could not decide
    /// in time (the breaker is then open and the caller falls back). One
    /// round trip; none at all while the breaker is open.
    pub async fn admit(
        &self,
        route: &str,
        client: u128,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Result<(), Duration>, ClusterError> {
        if !self.is_up() {
            self.stats.fallbacks.fetch_add(1, Relaxed);
            return Err(ClusterError::Down);
        }
        let key = format!("{}rl:{route}:{client:032x}", self.settings.key_prefix);
        let mut invocation = self.gcra.key(key);
        invocation
            .arg(interval.as_micros().max(1) as u64)
            .arg(tolerance.as_micros() as u64);
        match self.script::<u64>(&invocation, self.settings.timeout).await {
            Ok(0) => Ok(Ok(())),
            Ok(wait) => Ok(Err(Duration::from_micros(wait))),
            Err(e) => {
                self.stats.fallbacks.fetch_add(1, Relaxed);
                self.mark_down(&e);
                Err(e)
            }
        }
    }

    /// A new subscription connection (pub/sub needs its own).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, ClusterError> {
        let bound = Duration::from_secs(5);
        match tokio::time::timeout(bound, self.client.get_async_pubsub()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout(bound)),
        }
    }

    /// The series for `/metrics`: (name, help, labels, value).
    pub fn series(&self) -> Vec<(&'static str, &'static str, String, f64)> {
        let s = &self.stats;
        let trips = s.round_trips.load(Relaxed);
        // No labels: one value per series.
        let one = |name, help, value| (name, help, String::new(), value);
        vec![
            one(
                "gatehouse_redis_up",
                "1 while Redis answers; 0 while rate limits follow on_redis_error.",
                f64::from(u8::from(self.is_up())),
            ),
            one(
                "gatehouse_redis_round_trips_total",
                "Redis commands and scripts that answered.",
                trips as f64,
            ),
            one(
                "gatehouse_redis_round_trip_seconds_total",
                "Time spent in Redis round trips that answered.",
                s.round_trip_micros.load(Relaxed) as f64 / 1e6,
            ),
            one(
                "gatehouse_redis_errors_total",
                "Redis commands that failed or timed out.",
                s.errors.load(Relaxed) as f64,
            ),
            one(
                "gatehouse_redis_fallbacks_total",
                "Rate-limit decisions taken without Redis (on_redis_error).",
                s.fallbacks.load(Relaxed) as f64,
            ),
            one(
                "gatehouse_redis_outages_total",
                "Times Redis went from reachable to unreachable.",
                s.outages.load(Relaxed) as f64,
            ),
            one(
                "gatehouse_acme_lock_held",
                "1 while this replica holds the cluster's ACME order lock.",
                f64::from(u8::from(s.lock_held.load(Relaxed))),
            ),
            one(
                "gatehouse_acme_lock_acquisitions_total",
                "Times this replica acquired the ACME order lock.",
                s.lock_acquisitions.load(Relaxed) as f64,
            ),
            one(
                "gatehouse_certificates_adopted_total",
                "Certificates issued by another replica that this one took over.",
                s.certs_adopted.load(Relaxed) as f64,
            ),
        ]
    }
}
