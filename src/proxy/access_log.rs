//! The access log: one line per request on stdout, as JSON or in nginx's
//! combined format with Gatehouse's fields appended.
//!
//! Lines go through a bounded queue to a writer thread, so a slow stdout
//! (a full pipe, a stalled log collector) never stalls a request: when the
//! queue is full the line is dropped and counted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri, Version};

pub use crate::config::model::LogFormat as Format;

/// Lines waiting for the writer; past this they are dropped.
const QUEUE: usize = 16 * 1024;

enum Msg {
    Line(String),
    /// Answered once every line queued before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

struct Writer {
    tx: SyncSender<Msg>,
}

static WRITER: OnceLock<Writer> = OnceLock::new();
/// Lines dropped because the writer could not keep up.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

fn writer() -> &'static Writer {
    WRITER.get_or_init(|| {
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let write =
                    |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>, msg: Msg| match msg {
                        Msg::Line(l) => {
                            let _ = out.write_all(l.as_bytes());
                        }
                        Msg::Flush(done) => {
                            let _ = out.flush();
                            let _ = done.send(());
                        }
                    };
                while let Ok(msg) = rx.recv() {
                    // The stdout lock is taken per batch, never held while
                    // waiting, and flushed once the queue is drained.
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::new(stdout.lock());
                    write(&mut out, msg);
                    while let Ok(msg) = rx.try_recv() {
                        write(&mut out, msg);
                    }
                    let _ = out.flush();
                }
            });
        if spawned.is_err() {
            eprintln!("cannot start the stdout writer; log lines are dropped");
        }
        Writer { tx }
    })
}

/// Queues a line for stdout without ever blocking; counts it as dropped
/// when the writer is behind.
pub fn queue(line: String) {
    if writer().tx.try_send(Msg::Line(line)).is_err() {
        DROPPED.fetch_add(1, Relaxed);
    }
}

/// Waits, at most `limit`, until every line queued so far is written: for
/// a clean exit.
pub fn flush(limit: Duration) {
    let Some(w) = WRITER.get() else { return };
    let (tx, rx) = std::sync::mpsc::channel();
    if w.tx.send_timeout_compat(Msg::Flush(tx), limit) {
        let _ = rx.recv_timeout(limit);
    }
}

trait SendTimeout {
    fn send_timeout_compat(&self, msg: Msg, limit: Duration) -> bool;
}

impl SendTimeout for SyncSender<Msg> {
    /// `send` that gives up after `limit` (a stalled stdout at exit).
    fn send_timeout_compat(&self, msg: Msg, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut msg = msg;
        loop {
            match self.try_send(msg) {
                Ok(()) => return true,
                Err(std::sync::mpsc::TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::yield_now();
                }
                Err(_) => return false,
            }
        }
    }
}

/// The diagnostic log's writer: each event is formatted into a buffer and
/// queued whole on drop, on the same non-blocking queue as the access log,
/// so a stalled stdout stalls no request and lines never interleave.
#[derive(Default)]
pub struct LineWriter(Vec<u8>);

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            queue(String::from_utf8_lossy(&std::mem::take(&mut self.0)).into_owned());
        }
    }
}

/// What is known of one request; written when its response body ends.
pub struct Entry {
    pub format: Format,
    pub time: SystemTime,
    pub started: Instant,
    pub client: IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub status: u16,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub upstream_time: Option<Duration>,
    pub request_id: HeaderValue,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: u64,
}

fn proto(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

impl Entry {
    /// Renders and queues the line. Never blocks.
    pub fn emit(self: Box<Self>) {
        if self.format == Format::Off {
            return;
        }
        queue(self.render());
    }

    pub fn render(&self) -> String {
        let duration = self.started.elapsed().as_secs_f64();
        let target = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let bytes_in = self.bytes_in.load(Relaxed);
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let id = String::from_utf8_lossy(self.request_id.as_bytes());
        match self.format {
            Format::Json => {
                let v = serde_json::json!({
                    "time": rfc3339(self.time),
                    "client": self.client.to_string(),
                    "method": self.method.as_str(),
                    "path": target,
                    "protocol": proto(self.version),
                    "status": self.status,
                    "bytes_in": bytes_in,
                    "bytes_out": self.bytes_out,
                    "duration": duration,
                    "route": self.route,
                    "upstream": self.upstream,
                    "upstream_time": self.upstream_time.map(|d| d.as_secs_f64()),
                    "request_id": id,
                    "referer": text(&self.referer),
                    "user_agent": text(&self.user_agent),
                });
                let mut s = v.to_string();
                s.push('\n');
                s
            }
            _ => {
                // nginx's combined format, then bytes in, duration, route,
                // upstream, upstream time and the request id.
                let q = |v: Option<String>| v.unwrap_or_else(|| "-".into()).replace('"', "\\x22");
                let mut s = String::with_capacity(256);
                let _ = write!(
                    s,
                    "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {} {:.3} \"{}\" \"{}\" {} \"{}\"",
                    self.client,
                    clf_time(self.time),
                    self.method,
                    target.replace('"', "\\x22"),
                    proto(self.version),
                    self.status,
                    self.bytes_out,
                    q(text(&self.referer)),
                    q(text(&self.user_agent)),
                    bytes_in,
                    duration,
                    q(self.route.clone()),
                    q(self.upstream.clone()),
                    self.upstream_time
                        .map_or_else(|| "-".to_string(), |d| format!("{:.3}", d.as_secs_f64())),
                    id
                );
                s.push('\n');
                s
            }
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `26/Nov/2026:21:05:00 +0000`, as nginx's `$time_local` in UTC.
fn clf_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        t.day(),
        MONTHS[usize::from(u8::from(t.month())) - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A request id: the trusted incoming one when usable, else 16 random hex
/// digits (a per-thread generator seeded once from the system's RNG).
pub fn request_id(incoming: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = incoming {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut seed = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    let n = STATE.with(|s| {
        // xorshift64*: unique enough for correlating log lines.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    });
    // Hex by hand: no formatter and no intermediate String per request.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&digits).expect("invariant: hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(format: Format) -> Entry {
        Entry {
            format,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            started: Instant::now(),
            client: "203.0.113.7".parse().unwrap(),
            method: Method::POST,
            uri: "/api/v1/Vault?x=\"1\""
                .parse()
                .unwrap_or_else(|_| "/api/v1/Vault".parse().unwrap()),
            version: Version::HTTP_2,
            status: 201,
            route: Some("/api".into()),
            upstream: Some("api:3001".into()),
            upstream_time: Some(Duration::from_millis(12)),
            request_id: HeaderValue::from_static("0123456789abcdef"),
            referer: None,
            user_agent: Some(HeaderValue::from_static("Mozilla/5.0")),
            bytes_in: Arc::new(AtomicU64::new(42)),
            bytes_out: 7,
        }
    }

    #[test]
    fn combined_is_nginx_combined_plus_our_fields() {
        let line = entry(Format::Combined).render();
        let re_head = "203.0.113.7 - - [18/Nov/2026:";
        assert!(line.starts_with(re_head), "{line}");
        assert!(line.contains("+0000] \"POST /api/v1/Vault"), "{line}");
        assert!(
            line.contains(" HTTP/2.0\" 201 7 \"-\" \"Mozilla/5.0\" 42 "),
            "{line}"
        );
        assert!(
            line.ends_with(" \"/api\" \"api:3001\" 0.012 \"0123456789abcdef\"\n"),
            "{line}"
        );
    }

    #[test]
    fn json_has_every_field() {
        let v: serde_json::Value = serde_json::from_str(&entry(Format::Json).render()).unwrap();
        assert_eq!(v["client"], "203.0.113.7");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["protocol"], "HTTP/2.0");
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_in"], 42);
        assert_eq!(v["bytes_out"], 7);
        assert_eq!(v["route"], "/api");
        assert_eq!(v["upstream"], "api:3001");
        assert_eq!(v["upstream_time"], 0.012);
        assert_eq!(v["request_id"], "0123456789abcdef");
        assert!(v["time"].as_str().unwrap().starts_with("2026-11-18T"));
        assert!(v["duration"].as_f64().unwrap() >= 0.0);
    }

    #[test]
    fn request_ids() {
        let given = HeaderValue::from_static("req-1");
        assert_eq!(request_id(Some(&given)), given);
        let a = request_id(None);
        let b = request_id(None);
        assert_eq!(a.len(), 16);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit), "{a:?}");
        assert_ne!(a, b);
        assert_ne!(
            request_id(Some(&HeaderValue::from_static("has space"))),
            "has space"
        );
    }
}
