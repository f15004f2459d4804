//! What replicas share besides rate limits (issue 14 point 3): the ACME
//! account, the certificate and key, the challenge answers, and the lock
//! that lets exactly one replica order at a time.
//!
//! Keys, under the configured prefix:
//! - `acme:lock:HOST`: the order lock, `"FENCE REPLICA"`, with an expiry
//!   the holder keeps renewing; `acme:fence:HOST` counts the tokens.
//! - `cert:HOST`: a hash of `fullchain`, `privkey`, `fence`, `replica`,
//!   `issued_at`. Written only by the lock's holder, with a token newer
//!   than the stored one (the fencing check runs inside Redis, so a holder
//!   that stalled past its lock's expiry cannot overwrite a newer one).
//! - `acme:account:DIRECTORY`: the account's credentials (JSON).
//! - `acme:http01:TOKEN`, `acme:alpn:NAME`: challenge answers, with an
//!   expiry so an order abandoned by a crash leaves nothing behind;
//!   `acme:alpn-ack:NAME`: the replicas serving that validation
//!   certificate (the TLS handshake cannot wait for Redis, so the order
//!   waits until every replica has it).
//! - channel `events`: `cert HOST`, `alpn NAME`, `alpn-done NAME`.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{Cluster, ClusterError};

/// Store and lock calls are not on a request's path: a more patient bound
/// than the rate limit's.
const BOUND: Duration = Duration::from_secs(5);
/// Challenge answers outlive any order.
const ANSWER_TTL: Duration = Duration::from_secs(600);

/// The lock as its holder knows it.
#[derive(Debug, Clone)]
pub struct Lock {
    pub host: String,
    pub fence: u64,
    /// What the lock key holds: `"FENCE REPLICA"`.
    pub value: String,
}

/// The lock as anyone can see it (`gatehouse cert`).
#[derive(Debug, Clone)]
pub struct LockHolder {
    pub fence: u64,
    pub replica: String,
    pub expires_in: Duration,
}

/// The certificate the cluster serves.
#[derive(Debug, Clone)]
pub struct SharedCert {
    pub fullchain: String,
    pub privkey: String,
    pub fence: u64,
    pub replica: String,
    /// Unix seconds.
    pub issued_at: i64,
}

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS[1]: lock, KEYS[2]: certificate hash. ARGV: lock value, fence,
/// fullchain, privkey, replica, issued_at. 1 when stored.
const STORE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence')) or 0
if stored >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'fullchain', ARGV[3], 'privkey', ARGV[4], 'fence', ARGV[2],
  'replica', ARGV[5], 'issued_at', ARGV[6])
return 1
";

/// The lock's scripts, hashed once (`EVALSHA` names them by their SHA-1).
pub(super) struct Scripts {
    renew: redis::Script,
    release: redis::Script,
    store: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            store: redis::Script::new(STORE),
        }
    }
}

impl Cluster {
    /// The channel replicas announce new certificates and challenge
    /// answers on.
    pub fn channel(&self) -> String {
        self.key("events")
    }

    /// Takes the order lock for `host` if nobody holds it.
    pub async fn lock(&self, host: &str) -> Result<Option<Lock>, ClusterError> {
        let fence: u64 = self
            .call(
                redis::cmd("INCR").arg(self.key(&format!("acme:fence:{host}"))),
                BOUND,
            )
            .await?;
        let value = format!("{fence} {}", self.settings.name);
        let set: Option<String> = self
            .call(
                redis::cmd("SET")
                    .arg(self.key(&format!("acme:lock:{host}")))
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.settings.lock_ttl.as_millis() as u64),
                BOUND,
            )
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        self.stats.lock_acquisitions.fetch_add(1, Relaxed);
        self.stats.lock_held.store(true, Relaxed);
        Ok(Some(Lock {
            host: host.to_string(),
            fence,
            value,
        }))
    }

    /// Extends the lock's expiry; false when it is no longer ours.
    pub async fn renew(&self, lock: &Lock) -> Result<bool, ClusterError> {
        let mut inv = self
            .scripts
            .renew
            .key(self.key(&format!("acme:lock:{}", lock.host)));
        inv.arg(&lock.value)
            .arg(self.settings.lock_ttl.as_millis() as u64);
        let renewed = self.script::<u64>(&inv, BOUND).await? == 1;
        if !renewed {
            self.stats.lock_held.store(false, Relaxed);
        }
        Ok(renewed)
    }

    /// Gives the lock back if it is still ours.
    pub async fn release(&self, lock: &Lock) {
        self.stats.lock_held.store(false, Relaxed);
        let mut inv = self
            .scripts
            .release
            .key(self.key(&format!("acme:lock:{}", lock.host)));
        inv.arg(&lock.value);
        if let Err(e) = self.script::<u64>(&inv, BOUND).await {
            // It expires by itself.
            tracing::debug!(
                "cluster: releasing the ACME lock: {}",
                crate::base::error_chain::ErrorChain(&e)
            );
        }
    }

    /// Who holds the lock for `host`, if anyone.
    pub async fn lock_holder(&self, host: &str) -> Result<Option<LockHolder>, ClusterError> {
        let key = self.key(&format!("acme:lock:{host}"));
        let value: Option<String> = self.call(redis::cmd("GET").arg(&key), BOUND).await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let ttl: i64 = self.call(redis::cmd("PTTL").arg(&key), BOUND).await?;
        let (fence, replica) = value
            .split_once(' ')
            .ok_or(ClusterError::Corrupt("the lock value"))?;
        Ok(Some(LockHolder {
            fence: fence
                .parse()
                .map_err(|_| ClusterError::Corrupt("the lock's fence"))?,
            replica: replica.to_string(),
            expires_in: Duration::from_millis(ttl.max(0) as u64),
        }))
    }

    /// Stores a certificate issued under `lock`: refused (false) when the
    /// lock is no longer ours or a newer token already stored one.
    pub async fn store_cert(
        &self,
        lock: &Lock,
        fullchain: &str,
        privkey: &str,
        issued_at: i64,
    ) -> Result<bool, ClusterError> {
        let mut inv = self
            .scripts
            .store
            .key(self.key(&format!("acme:lock:{}", lock.host)));
        inv.key(self.key(&format!("cert:{}", lock.host)))
            .arg(&lock.value)
            .arg(lock.fence)
            .arg(fullchain)
            .arg(privkey)
            .arg(&self.settings.name)
            .arg(issued_at);
        Ok(self.script::<u64>(&inv, BOUND).await? == 1)
    }

    /// The certificate the cluster serves for `host`, if one was issued.
    pub async fn cert(&self, host: &str) -> Result<Option<SharedCert>, ClusterError> {
        let mut h: HashMap<String, String> = self
            .call(
                redis::cmd("HGETALL").arg(self.key(&format!("cert:{host}"))),
                BOUND,
            )
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        let mut take = |k: &'static str| h.remove(k).ok_or(ClusterError::Corrupt(k));
        Ok(Some(SharedCert {
            fullchain: take("fullchain")?,
            privkey: take("privkey")?,
            fence: take("fence")?
                .parse()
                .map_err(|_| ClusterError::Corrupt("fence"))?,
            replica: take("replica")?,
            issued_at: take("issued_at")?
                .parse()
                .map_err(|_| ClusterError::Corrupt("issued_at"))?,
        }))
    }

    /// Just the token of the stored certificate: the cheap periodic check.
    pub async fn cert_fence(&self, host: &str) -> Result<Option<u64>, ClusterError> {
        let f: Option<String> = self
            .call(
                redis::cmd("HGET")
                    .arg(self.key(&format!("cert:{host}")))
                    .arg("fence"),
                BOUND,
            )
            .await?;
        Ok(f.and_then(|f| f.parse().ok()))
    }

    pub async fn account(&self, directory: &str) -> Result<Option<String>, ClusterError> {
        self.call(
            redis::cmd("GET").arg(self.key(&format!("acme:account:{directory}"))),
            BOUND,
        )
        .await
    }

    pub async fn set_account(&self, directory: &str, json: &str) -> Result<(), ClusterError> {
        self.call(
            redis::cmd("SET")
                .arg(self.key(&format!("acme:account:{directory}")))
                .arg(json),
            BOUND,
        )
        .await
    }

    /// An HTTP-01 answer any replica can serve.
    pub async fn set_http01(&self, token: &str, key_auth: &str) -> Result<(), ClusterError> {
        self.call(
            redis::cmd("SET")
                .arg(self.key(&format!("acme:http01:{token}")))
                .arg(key_auth)
                .arg("PX")
                .arg(ANSWER_TTL.as_millis() as u64),
            BOUND,
        )
        .await
    }

    pub async fn http01(&self, token: &str) -> Result<Option<String>, ClusterError> {
        self.call(
            redis::cmd("GET").arg(self.key(&format!("acme:http01:{token}"))),
            BOUND,
        )
        .await
    }

    pub async fn del_http01(&self, token: &str) -> Result<(), ClusterError> {
        self.call(
            redis::cmd("DEL").arg(self.key(&format!("acme:http01:{token}"))),
            BOUND,
        )
        .await
    }

    /// A TLS-ALPN-01 validation certificate and key (PEM) any replica can
    /// serve, announced on the channel. Returns how many subscribers the
    /// notice reached: the replicas that will acknowledge it.
    pub async fn set_alpn(&self, name: &str, cert: &str, key: &str) -> Result<usize, ClusterError> {
        self.call::<()>(
            redis::cmd("SET")
                .arg(self.key(&format!("acme:alpn:{name}")))
                .arg(format!("{cert}\n{key}"))
                .arg("PX")
                .arg(ANSWER_TTL.as_millis() as u64),
            BOUND,
        )
        .await?;
        self.call::<()>(
            redis::cmd("DEL").arg(self.key(&format!("acme:alpn-ack:{name}"))),
            BOUND,
        )
        .await?;
        self.call::<usize>(
            redis::cmd("PUBLISH")
                .arg(self.channel())
                .arg(format!("alpn {name}")),
            BOUND,
        )
        .await
    }

    /// This replica serves the validation certificate for `name` now.
    pub async fn ack_alpn(&self, name: &str) -> Result<(), ClusterError> {
        let key = self.key(&format!("acme:alpn-ack:{name}"));
        self.call::<()>(redis::cmd("SADD").arg(&key).arg(&self.settings.name), BOUND)
            .await?;
        self.call::<()>(
            redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(ANSWER_TTL.as_millis() as u64),
            BOUND,
        )
        .await
    }

    /// How many replicas serve the validation certificate for `name`.
    pub async fn alpn_acks(&self, name: &str) -> Result<usize, ClusterError> {
        self.call(
            redis::cmd("SCARD").arg(self.key(&format!("acme:alpn-ack:{name}"))),
            BOUND,
        )
        .await
    }

    /// The validation certificate and key for `name`, as one PEM text.
    pub async fn alpn(&self, name: &str) -> Result<Option<String>, ClusterError> {
        self.call(
            redis::cmd("GET").arg(self.key(&format!("acme:alpn:{name}"))),
            BOUND,
        )
        .await
    }

    pub async fn del_alpn(&self, name: &str) -> Result<(), ClusterError> {
        self.call::<()>(
            redis::cmd("DEL")
                .arg(self.key(&format!("acme:alpn:{name}")))
                .arg(self.key(&format!("acme:alpn-ack:{name}"))),
            BOUND,
        )
        .await?;
        self.publish(&format!("alpn-done {name}")).await
    }

    pub async fn publish(&self, event: &str) -> Result<(), ClusterError> {
        self.call::<i64>(redis::cmd("PUBLISH").arg(self.channel()).arg(event), BOUND)
            .await
            .map(drop)
    }
}
