//! Issue 14: replicas that share rate limits, certificates and ACME orders
//! through a real `redis-server` (Debian's, started here on a loopback
//! port), with three Gatehouse processes and, for ACME, a real Pebble.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::acme::{verified_fingerprint, wait_for_port, Pebble, HOST};
use crate::support::*;

/// A redis-server of our own: no persistence, loopback only.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    async fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.run().await;
        r
    }

    /// (Re)starts the server on its port.
    async fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server").await;
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().unwrap();
            within(c.wait()).await.unwrap();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        within(client.get_multiplexed_async_connection())
            .await
            .unwrap()
    }
}

/// One Gatehouse process of the cluster.
struct Replica {
    name: String,
    run: Running,
    http: SocketAddr,
    https: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts a replica named `name` from `body` (routes and settings) plus
/// the cluster table, without waiting for it to listen.
fn spawn_replica(
    name: &str,
    redis: &str,
    cluster_extra: &str,
    body: &str,
) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\ntrusted_proxies = [\"127.0.0.1/32\"]\n{body}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[cluster]\nredis = \"{redis}\"\nname = \"{name}\"\n{cluster_extra}\n"
    );
    std::fs::write(dir.path().join("gatehouse.toml"), toml).unwrap();
    (Running::spawn(dir.path(), &[], &[]), dir)
}

async fn listening(name: &str, mut run: Running, dir: tempfile::TempDir) -> Replica {
    let http = run.port_after("listening on http://127.0.0.1:").await;
    let https = run.port_after("listening on https://127.0.0.1:").await;
    let metrics = run
        .port_after("metrics and health on http://127.0.0.1:")
        .await;
    run.wait_for(&format!("cluster: replica {name} shares state"))
        .await;
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    Replica {
        name: name.to_string(),
        run,
        http: at(http),
        https: at(https),
        metrics: at(metrics),
        _dir: dir,
    }
}

/// Three replicas started at once.
async fn three(redis: &str, cluster_extra: &str, body: &str) -> Vec<Replica> {
    let spawned: Vec<_> = ["r0", "r1", "r2"]
        .iter()
        .map(|n| (n, spawn_replica(n, redis, cluster_extra, body)))
        .collect();
    let mut out = Vec::new();
    for (name, (run, dir)) in spawned {
        out.push(listening(name, run, dir).await);
    }
    out
}

/// One request for `client` (as a trusted proxy names it).
async fn hit(r: &Replica, client: &str) -> u16 {
    let mut req = get("/", "localhost");
    req.headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    send(Proto::H1, r.http, Path::new("-"), req)
        .await
        .unwrap()
        .status
        .as_u16()
}

/// A metric's value on a replica, from a scrape that must also be valid
/// Prometheus text.
async fn metric(r: &Replica, name: &str) -> f64 {
    let body = send(
        Proto::H1,
        r.metrics,
        Path::new("-"),
        get("/metrics", "localhost"),
    )
    .await
    .unwrap()
    .text();
    *parse_prometheus(&body)
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// `n` requests of `client`, spread round robin over the replicas; the
/// statuses by replica.
async fn spread(replicas: &[Replica], client: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(hit(&replicas[i % replicas.len()], client).await);
    }
    out
}

fn limited_route(up: &str) -> String {
    format!("[[route]]\npath = \"/\"\nupstream = \"{up}\"\nrate_limit = {{ per_second = 1, burst = 10 }}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_three_replicas() {
    let redis = Redis::start().await;
    let up = fixed(200, "OK").await;
    let replicas = three(&redis.url(), "", &limited_route(&up.url())).await;
    // 30 requests spread over the three within a second: the burst of 10
    // is the cluster's, not each replica's (+1 for a refill).
    let start = std::time::Instant::now();
    let statuses = spread(&replicas, "203.0.113.7", 30).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + limited, 30, "{statuses:?}");
    let slack = usize::from(start.elapsed() >= Duration::from_secs(1));
    assert!(
        (10..=10 + slack).contains(&admitted),
        "{admitted} admitted in {:?}: {statuses:?}",
        start.elapsed()
    );
    // A client over its limit on one replica is limited on the others.
    for _ in 0..10 {
        assert_eq!(hit(&replicas[0], "203.0.113.8").await, 200);
    }
    assert_eq!(hit(&replicas[0], "203.0.113.8").await, 429);
    assert_eq!(hit(&replicas[1], "203.0.113.8").await, 429);
    assert_eq!(hit(&replicas[2], "203.0.113.8").await, 429);
    // Another client is unaffected.
    assert_eq!(hit(&replicas[2], "203.0.113.9").await, 200);
    // The state is Redis's: one key per client of the route.
    let mut conn = redis.conn().await;
    let keys: Vec<String> = within(
        redis::cmd("KEYS")
            .arg("gatehouse:rl:/:*")
            .query_async(&mut conn),
    )
    .await
    .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for r in &replicas {
        assert!(metric(r, "gatehouse_redis_round_trips_total").await >= 10.0);
        assert_eq!(
            metric(r, "gatehouse_redis_fallbacks_total").await,
            0.0,
            "{}",
            r.name
        );
        assert_eq!(metric(r, "gatehouse_redis_up").await, 1.0);
    }
}

/// Requests on a route without a rate limit never reach Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_routes_never_touch_redis() {
    let redis = Redis::start().await;
    let up = fixed(200, "OK").await;
    let mut replicas = three(&redis.url(), "", &routes(&[("/", &up.url())])).await;
    let mut conn = redis.conn().await;
    let before: i64 = stat(&mut conn, "total_commands_processed").await;
    for i in 0..30 {
        assert_eq!(hit(&replicas[i % 3], "203.0.113.7").await, 200);
    }
    let after: i64 = stat(&mut conn, "total_commands_processed").await;
    // Only the replicas' pings (one a second each) and our INFO calls.
    assert!(after - before < 15, "{before} -> {after}");
    replicas.truncate(0);
}

async fn stat(conn: &mut redis::aio::MultiplexedConnection, field: &str) -> i64 {
    let info: String = within(redis::cmd("INFO").arg("stats").query_async(conn))
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_local_limits_and_recovers() {
    let mut redis = Redis::start().await;
    let up = fixed(200, "OK").await;
    let mut replicas = three(&redis.url(), "", &limited_route(&up.url())).await;
    let shared = spread(&replicas, "198.51.100.1", 30).await;
    assert!(
        shared.iter().filter(|s| **s == 200).count() <= 11,
        "{shared:?}"
    );

    redis.stop().await;
    // Each replica holds the client to the limit on its own: the three
    // admit their 10 each; nothing fails because Redis went away.
    let local = spread(&replicas, "198.51.100.2", 30).await;
    assert!(local.iter().all(|s| *s == 200), "{local:?}");
    let over = spread(&replicas, "198.51.100.2", 3).await;
    assert_eq!(over, [429, 429, 429], "the local limiters still limit");
    for r in replicas.iter_mut() {
        r.run.wait_for("is unreachable").await;
        assert_eq!(metric(r, "gatehouse_redis_up").await, 0.0);
        assert!(metric(r, "gatehouse_redis_fallbacks_total").await >= 11.0);
        assert_eq!(metric(r, "gatehouse_redis_outages_total").await, 1.0);
        // Ready while the fallback serves.
        let ready = send(
            Proto::H1,
            r.metrics,
            Path::new("-"),
            get("/readyz", "localhost"),
        )
        .await
        .unwrap();
        assert_eq!(ready.status, 200, "{}", ready.text());
        assert!(
            ready.text().contains("redis: unreachable"),
            "{}",
            ready.text()
        );
    }

    redis.run().await;
    for r in replicas.iter_mut() {
        r.run.wait_for("answers again").await;
        // One warning for the whole outage, however many requests fell back.
        assert_eq!(r.run.count_so_far("is unreachable"), 1, "{}", r.name);
    }
    let again = spread(&replicas, "198.51.100.3", 30).await;
    let admitted = again.iter().filter(|s| **s == 200).count();
    assert!((10..=11).contains(&admitted), "{again:?}");
    for r in &replicas {
        assert_eq!(metric(r, "gatehouse_redis_up").await, 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_error_deny_and_allow() {
    let mut redis = Redis::start().await;
    let up = fixed(200, "OK").await;
    let body = limited_route(&up.url());
    let (deny, d) = spawn_replica("deny", &redis.url(), "on_redis_error = \"deny\"", &body);
    let (allow, a) = spawn_replica("allow", &redis.url(), "on_redis_error = \"allow\"", &body);
    let deny = listening("deny", deny, d).await;
    let allow = listening("allow", allow, a).await;
    assert_eq!(hit(&deny, "192.0.2.1").await, 200);
    redis.stop().await;
    // Refused while the shared limit cannot be checked...
    let mut saw = Vec::new();
    for _ in 0..3 {
        saw.push(hit(&deny, "192.0.2.2").await);
    }
    assert_eq!(saw, [503, 503, 503]);
    // ... or admitted without a limit.
    let all = spread(std::slice::from_ref(&allow), "192.0.2.3", 25).await;
    assert!(all.iter().all(|s| *s == 200), "{all:?}");
}

// ------------------------------------------------------------------ ACME

/// A relay on Pebble's HTTP-01 port: each validation connection goes to a
/// replica that does not hold the order lock (so its answer can only come
/// from the cluster), and waits while `hold` is set.
struct Relay {
    hold: tokio::sync::watch::Sender<bool>,
    /// The replicas that answered, in order.
    answered_by: Arc<Mutex<Vec<String>>>,
    /// Replicas the relay may use: (name, address of the port the CA
    /// validates on).
    alive: Arc<Mutex<Vec<(String, SocketAddr)>>>,
}

async fn relay(port: u16, redis_url: String) -> Relay {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (hold, held) = tokio::sync::watch::channel(false);
    let answered_by = Arc::new(Mutex::new(Vec::new()));
    let alive: Arc<Mutex<Vec<(String, SocketAddr)>>> = Arc::new(Mutex::new(Vec::new()));
    let (by, targets) = (answered_by.clone(), alive.clone());
    tokio::spawn(async move {
        let client = redis::Client::open(redis_url).unwrap();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let (client, by, targets, mut held) =
                (client.clone(), by.clone(), targets.clone(), held.clone());
            tokio::spawn(async move {
                let _ = within(held.wait_for(|h| !*h)).await;
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let lock: Option<String> = redis::cmd("GET")
                    .arg(format!("gatehouse:acme:lock:{HOST}"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let holder = lock
                    .as_deref()
                    .and_then(|v| v.split_once(' '))
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_default();
                let target = targets
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(n, _)| *n != holder)
                    .cloned();
                let Some((name, addr)) = target else { return };
                by.lock().unwrap().push(name);
                let mut outbound = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    Relay {
        hold,
        answered_by,
        alive,
    }
}

/// The replica that stored the cluster's certificate.
async fn stored_by(conn: &mut redis::aio::MultiplexedConnection) -> String {
    within(
        redis::cmd("HGET")
            .arg(format!("gatehouse:cert:{HOST}"))
            .arg("replica")
            .query_async(conn),
    )
    .await
    .unwrap()
}

fn acme_body(pebble: &Pebble, ws: &str) -> String {
    acme_body_with(pebble, ws, "http-01")
}

fn acme_body_with(pebble: &Pebble, ws: &str, challenge: &str) -> String {
    format!(
        "hostname = \"{HOST}\"\n\n[acme]\nemail = \"admin@example.com\"\ndirectory = \"{}\"\nca_roots = [\"{}\"]\nchallenge = \"{challenge}\"\n\n[[route]]\npath = \"/\"\nupstream = \"{ws}\"\n",
        pebble.directory,
        pebble.server_cert.display(),
    )
}

/// Waits (bounded) until every replica serves a chain from Pebble other
/// than `not`; returns the fingerprints.
async fn all_issued(
    replicas: &[&Replica],
    roots: &rustls::RootCertStore,
    not: Option<&str>,
    limit: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let mut got = Vec::new();
        for r in replicas {
            match verified_fingerprint(r.https, roots).await {
                Some(fp) if Some(fp.as_str()) != not => got.push(fp),
                _ => break,
            }
        }
        if got.len() == replicas.len() {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every replica served a new certificate from Pebble within {limit:?}"
        );
        tick.tick().await;
    }
}

async fn websocket(r: &Replica) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(r.http).await.unwrap();
    within(tokio_tungstenite::client_async("ws://localhost/ws", tcp))
        .await
        .unwrap()
        .0
}

async fn echoes(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, text: &str) {
    within(ws.send(Message::text(text))).await.unwrap();
    let back = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_place_one_order_and_share_its_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start().await;
    let http01 = free_port();
    // 30 s certificates: renewed once 10 s remain.
    let pebble = Pebble::start(dir.path(), http01, free_port(), Some(30), false).await;
    let relay = relay(http01, redis.url()).await;
    let ws = websocket_echo().await;
    let mut replicas = three(&redis.url(), "", &acme_body(&pebble, &ws.url())).await;
    *relay.alive.lock().unwrap() = replicas.iter().map(|r| (r.name.clone(), r.http)).collect();
    let roots = pebble.issuing_root().await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let first = all_issued(&refs, &roots, None, Duration::from_secs(90)).await;
    assert!(
        first.iter().all(|f| *f == first[0]),
        "one certificate: {first:?}"
    );
    assert_eq!(
        pebble.orders(),
        1,
        "three replicas started at once, one order"
    );
    // The CA was answered by replicas that did not place the order.
    let answered = relay.answered_by.lock().unwrap().clone();
    assert!(!answered.is_empty());
    let mut conn = redis.conn().await;
    let issuer = stored_by(&mut conn).await;
    assert!(
        !answered.contains(&issuer),
        "{issuer} ordered; answered by {answered:?}"
    );
    // Each replica wrote certbot's layout on its own disk.
    for r in &replicas {
        let live = r
            ._dir
            .path()
            .join("certificates/letsencrypt/live")
            .join(HOST);
        assert!(live.join("fullchain.pem").is_file(), "{}", r.name);
        assert!(live.join("privkey.pem").is_file(), "{}", r.name);
    }

    // The renewal reaches all three without a restart, while a WebSocket
    // stays open on each.
    let mut sockets = Vec::new();
    for r in &replicas {
        let mut s = websocket(r).await;
        echoes(&mut s, "before").await;
        sockets.push(s);
    }
    let second = all_issued(&refs, &roots, Some(&first[0]), Duration::from_secs(90)).await;
    assert!(second.iter().all(|f| *f == second[0]), "{second:?}");
    assert_eq!(pebble.orders(), 2, "one order per renewal");
    for s in sockets.iter_mut() {
        echoes(s, "after the renewal").await;
    }
    for r in &replicas {
        assert_eq!(metric(r, "gatehouse_acme_lock_held").await, 0.0);
    }
    // `gatehouse cert` in a replica's folder names the last renewal.
    let (code, out, err) = run(replicas[0]._dir.path(), &["cert"], &[]).await;
    assert!(code == 0 || code == 1, "{out}{err}");
    assert!(out.contains("cluster:      "), "{out}");
    assert!(
        out.contains(&format!(
            "last renewal: {}",
            time::OffsetDateTime::now_utc().year()
        )),
        "{out}"
    );
    assert!(out.contains("  order lock:   "), "{out}");
    drop(refs);
    // Restarted while Redis is gone, a replica serves the last certificate
    // from its own disk.
    redis.stop().await;
    let r0 = replicas.remove(0);
    let (name, mut run0, dir0) = (r0.name, r0.run, r0._dir);
    run0.child.start_kill().unwrap();
    within(run0.child.wait()).await.unwrap();
    let again = listening(&name, Running::spawn(dir0.path(), &[], &[]), dir0).await;
    assert_eq!(
        verified_fingerprint(again.https, &roots).await.as_deref(),
        Some(second[0].as_str())
    );
}

/// TLS-ALPN-01: the CA's handshake reaches a replica that did not order;
/// it serves the validation certificate the holder put in Redis (the
/// order waits until every replica holds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_alpn01_challenge_is_answered_by_any_replica() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start().await;
    let tls_port = free_port();
    let pebble = Pebble::start(dir.path(), free_port(), tls_port, None, false).await;
    let relay = relay(tls_port, redis.url()).await;
    let up = fixed(200, "OK").await;
    let replicas = three(
        &redis.url(),
        "",
        &acme_body_with(&pebble, &up.url(), "tls-alpn-01"),
    )
    .await;
    *relay.alive.lock().unwrap() = replicas.iter().map(|r| (r.name.clone(), r.https)).collect();
    let roots = pebble.issuing_root().await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let fps = all_issued(&refs, &roots, None, Duration::from_secs(90)).await;
    assert!(fps.iter().all(|f| *f == fps[0]), "{fps:?}");
    assert_eq!(pebble.orders(), 1);
    let mut conn = redis.conn().await;
    let issuer = stored_by(&mut conn).await;
    let answered = relay.answered_by.lock().unwrap().clone();
    assert!(!answered.is_empty());
    assert!(
        !answered.contains(&issuer),
        "{issuer} ordered; answered by {answered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_finishes_when_the_lock_holder_dies_mid_order() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start().await;
    let http01 = free_port();
    let pebble = Pebble::start(dir.path(), http01, free_port(), None, false).await;
    let relay = relay(http01, redis.url()).await;
    // The CA's validation waits until the holder has been killed.
    relay.hold.send(true).unwrap();
    let up = fixed(200, "OK").await;
    let mut replicas = three(
        &redis.url(),
        "lock_ttl = \"3s\"",
        &acme_body(&pebble, &up.url()),
    )
    .await;
    *relay.alive.lock().unwrap() = replicas.iter().map(|r| (r.name.clone(), r.http)).collect();
    // Mid-order: the lock is held and its challenge answer is in Redis.
    let mut conn = redis.conn().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let holder = loop {
        let lock: Option<String> = within(
            redis::cmd("GET")
                .arg(format!("gatehouse:acme:lock:{HOST}"))
                .query_async(&mut conn),
        )
        .await
        .unwrap();
        let answers: Vec<String> = within(
            redis::cmd("KEYS")
                .arg("gatehouse:acme:http01:*")
                .query_async(&mut conn),
        )
        .await
        .unwrap();
        if let (Some(lock), false) = (lock, answers.is_empty()) {
            break lock.split_once(' ').unwrap().1.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no order started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let i = replicas.iter().position(|r| r.name == holder).unwrap();
    let mut dead = replicas.remove(i);
    dead.run.child.start_kill().unwrap();
    within(dead.run.child.wait()).await.unwrap();
    relay.alive.lock().unwrap().retain(|(n, _)| *n != holder);
    relay.hold.send(false).unwrap();
    // After the lock expires another replica takes it and completes.
    let roots = pebble.issuing_root().await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let fps = all_issued(&refs, &roots, None, Duration::from_secs(90)).await;
    assert_eq!(fps[0], fps[1]);
    let issuer = stored_by(&mut conn).await;
    assert_ne!(issuer, holder, "the dead replica cannot have stored it");
    assert!(replicas.iter().any(|r| r.name == issuer));
    let fence: u64 = within(
        redis::cmd("HGET")
            .arg(format!("gatehouse:cert:{HOST}"))
            .arg("fence")
            .query_async(&mut conn),
    )
    .await
    .unwrap();
    assert!(fence >= 2, "a later token than the dead holder's: {fence}");
    assert!(
        pebble.orders() >= 2,
        "the dead holder's order and the new one"
    );
}

/// The lock's fencing, against the real Redis: a holder whose lock expired
/// and was taken by another replica can neither renew it nor store a
/// certificate, and an older token never overwrites a newer one.
#[tokio::test]
async fn a_lock_that_expired_fences_its_old_holder_out() {
    let redis = Redis::start().await;
    let settings = |name: &str| gatehouse::config::ClusterSettings {
        redis: redis.url(),
        key_prefix: "fence-test:".into(),
        timeout: Duration::from_millis(500),
        on_redis_error: gatehouse::config::OnRedisError::Local,
        ca_file: None,
        lock_ttl: Duration::from_secs(30),
        name: name.into(),
    };
    let a = gatehouse::cluster::Cluster::new(settings("a")).unwrap();
    let b = gatehouse::cluster::Cluster::new(settings("b")).unwrap();
    let lock_a = within(a.lock("example.test")).await.unwrap().expect("free");
    assert!(
        within(b.lock("example.test")).await.unwrap().is_none(),
        "held by a"
    );
    assert!(within(a.renew(&lock_a)).await.unwrap());
    let held = within(b.lock_holder("example.test"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((held.replica.as_str(), held.fence), ("a", lock_a.fence));
    // a stalls past its lock's expiry (here: the key expires now) and b
    // takes over.
    let mut conn = redis.conn().await;
    let _: () = within(
        redis::cmd("DEL")
            .arg("fence-test:acme:lock:example.test")
            .query_async(&mut conn),
    )
    .await
    .unwrap();
    let lock_b = within(b.lock("example.test"))
        .await
        .unwrap()
        .expect("expired");
    assert!(lock_b.fence > lock_a.fence);
    assert!(!within(a.renew(&lock_a)).await.unwrap(), "no longer a's");
    assert!(!within(a.store_cert(&lock_a, "chain-a", "key-a", 1))
        .await
        .unwrap());
    assert!(within(b.store_cert(&lock_b, "chain-b", "key-b", 2))
        .await
        .unwrap());
    let stored = within(a.cert("example.test")).await.unwrap().unwrap();
    assert_eq!(
        (stored.fullchain.as_str(), stored.replica.as_str()),
        ("chain-b", "b")
    );
    // a's release does not free b's lock.
    within(a.release(&lock_a)).await;
    assert_eq!(
        within(a.lock_holder("example.test"))
            .await
            .unwrap()
            .unwrap()
            .replica,
        "b"
    );
    within(b.release(&lock_b)).await;
    assert!(within(a.lock_holder("example.test"))
        .await
        .unwrap()
        .is_none());
}

/// `rediss://` with a password in the URL and a private CA in `ca_file`:
/// Redis with TLS only (no plaintext port) and `requirepass`; two replicas
/// share a limit through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_password_and_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let path = |f: &str| dir.path().join(f);
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("redis.pem"), cert.pem()).unwrap();
    std::fs::write(path("redis-key.pem"), key.serialize_pem()).unwrap();
    let port = free_port();
    let _redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(path("redis.pem"))
        .arg("--tls-key-file")
        .arg(path("redis-key.pem"))
        .arg("--tls-ca-cert-file")
        .arg(path("ca.pem"))
        .args(["--tls-auth-clients", "no", "--requirepass", "s3cret"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port, "redis-server (TLS)").await;
    let up = fixed(200, "OK").await;
    let url = format!("rediss://:s3cret@127.0.0.1:{port}/0");
    let extra = format!("ca_file = \"{}\"", path("ca.pem").display());
    let body = limited_route(&up.url());
    let (r0, d0) = spawn_replica("t0", &url, &extra, &body);
    let (r1, d1) = spawn_replica("t1", &url, &extra, &body);
    let mut replicas = vec![listening("t0", r0, d0).await, listening("t1", r1, d1).await];
    let statuses = spread(&replicas, "203.0.113.50", 20).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!((10..=11).contains(&admitted), "{statuses:?}");
    for r in replicas.iter_mut() {
        assert_eq!(metric(r, "gatehouse_redis_fallbacks_total").await, 0.0);
        assert!(metric(r, "gatehouse_redis_round_trips_total").await >= 10.0);
        // The password is never printed.
        assert_eq!(r.run.count_so_far("s3cret"), 0);
        assert!(r.run.count_so_far("rediss://:***@127.0.0.1") >= 1);
    }
    // Without the CA the server is not trusted: every decision falls back.
    let (r2, d2) = spawn_replica("t2", &url, "", &body);
    let mut untrusting = listening("t2", r2, d2).await;
    let _ = hit(&untrusting, "203.0.113.51").await;
    untrusting.run.wait_for("is unreachable").await;
    assert!(metric(&untrusting, "gatehouse_redis_fallbacks_total").await >= 1.0);
}

// ---------------------------------------------------------------- deploy/

/// The Kubernetes manifest passes a schema validator (kubernetes-validate,
/// from PyPI, strict: unknown fields refused), and holds what matters: 3
/// replicas, readiness on `/readyz` of the metrics port, the Redis URL from
/// a Secret, a Service in front; its embedded configuration and the
/// compose example's are valid for `gatehouse check`.
#[tokio::test]
async fn the_deploy_examples_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let manifest = root.join("kubernetes.yaml");
    let out = within(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .arg(&manifest)
            .output(),
    )
    .await
    .expect("kubernetes-validate (scripts/test installs it with pip)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    for kind in [
        "configmap/gatehouse",
        "deployment/gatehouse",
        "service/gatehouse",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind}")),
            "{said}"
        );
    }
    // The fields, read by YAML's own parser (PyYAML, which the validator
    // brings).
    let script = r#"
import json, sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1]))}
dep = docs["Deployment"]["spec"]
c = dep["template"]["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
print(json.dumps({
  "replicas": dep["replicas"],
  "ready_path": c["readinessProbe"]["httpGet"]["path"],
  "ready_port": ports[c["readinessProbe"]["httpGet"]["port"]],
  "redis": [e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if e["name"] == "GATEHOUSE_REDIS_URL"],
  "selects": docs["Service"]["spec"]["selector"] == dep["template"]["metadata"]["labels"],
  "toml": docs["ConfigMap"]["data"]["gatehouse.toml"],
}))
"#;
    let out = within(
        Command::new("python3")
            .args(["-c", script])
            .arg(&manifest)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["replicas"], 3);
    assert_eq!(got["ready_path"], "/readyz");
    assert_eq!(got["ready_port"], 9090);
    assert_eq!(got["redis"], serde_json::json!(["gatehouse-redis"]));
    assert_eq!(got["selects"], true);
    // Both configurations load, with the Redis URL from the environment,
    // and serve /readyz on the port the probe asks.
    let dir = tempfile::tempdir().unwrap();
    for (name, toml) in [
        ("kubernetes.yaml", got["toml"].as_str().unwrap().to_string()),
        (
            "compose.yml",
            std::fs::read_to_string(root.join("gatehouse.toml")).unwrap(),
        ),
    ] {
        std::fs::write(dir.path().join("gatehouse.toml"), toml).unwrap();
        let (code, out, err) = run(
            dir.path(),
            &["check"],
            &[("GATEHOUSE_REDIS_URL", "redis://:pw@redis:6379/0")],
        )
        .await;
        assert_eq!(code, 0, "{name}: {out}{err}");
        assert!(
            out.contains("metrics: http://0.0.0.0:9090"),
            "{name}: {out}"
        );
        assert!(
            out.contains("cluster: redis://:***@redis:6379/0"),
            "{name}: {out}"
        );
        assert!(out.contains("rate limit 5/s burst 20"), "{name}: {out}");
    }
}

/// A Redis slower than `timeout` counts as failing: the request is decided
/// by the local limiter after the bound instead of waiting (here Redis
/// pauses every client for 1.5 s, as a stalled server would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_not_waited_for() {
    let redis = Redis::start().await;
    let up = fixed(200, "OK").await;
    let (run, dir) = spawn_replica(
        "slow",
        &redis.url(),
        "timeout = \"100ms\"",
        &limited_route(&up.url()),
    );
    let mut r = listening("slow", run, dir).await;
    assert_eq!(hit(&r, "192.0.2.40").await, 200);
    let mut conn = redis.conn().await;
    let _: () = within(
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .arg("ALL")
            .query_async(&mut conn),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(hit(&r, "192.0.2.41").await, 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "waited {took:?} for Redis"
    );
    r.run.wait_for("is unreachable").await;
    assert!(metric(&r, "gatehouse_redis_errors_total").await >= 1.0);
    // Back once the pause ends.
    r.run.wait_for("answers again").await;
    assert_eq!(metric(&r, "gatehouse_redis_up").await, 1.0);
}
