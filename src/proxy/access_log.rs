//! The access log: one line per request on stdout, as JSON or in nginx's
//! combined format with Gatehouse's fields appended.
//!
//! A line costs what nginx's costs (issue 13): it is rendered without
//! `fmt` (dates rendered once a second, numbers by hand, names shared with
//! the route, never copied) straight into the calling thread's own batch,
//! and one writer thread takes whole batches — every 100 ms, or as soon as
//! a batch holds 64 KiB — so there is no wake-up per line. A request never
//! waits for stdout: while stdout is stalled a thread's batch grows to a
//! cap, and lines past it are dropped and counted. The diagnostic log
//! (`tracing`) goes through the same batches, so lines never interleave.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri, Version};

pub use crate::config::model::LogFormat as Format;
use crate::runtime::LogNames;

/// A batch is handed to the writer once it holds this much.
const BATCH: usize = 64 * 1024;
/// The writer takes every batch at least this often.
const INTERVAL: Duration = Duration::from_millis(100);
/// What one thread's batch may hold while the writer is behind (a stalled
/// stdout); lines past it are dropped.
const CAP: usize = 1 << 20;

/// Lines dropped because stdout could not keep up.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// One thread's lines not yet taken by the writer. Locked by its thread
/// per line and by the writer per batch: uncontended but for that moment.
#[derive(Default)]
struct Shard {
    batch: Mutex<Batch>,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// The writer has been told this batch is full.
    signalled: bool,
}

struct Writer {
    thread: std::thread::Thread,
    shards: Mutex<Vec<Arc<Shard>>>,
    /// Callers of [`flush`] waiting for everything before them to be out.
    flushes: Mutex<Vec<std::sync::mpsc::Sender<()>>>,
}

static WRITER: OnceLock<Option<Writer>> = OnceLock::new();

thread_local! {
    static SHARD: Option<Arc<Shard>> = writer().map(|w| {
        let shard = Arc::new(Shard::default());
        lock(&w.shards).push(shard.clone());
        shard
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding one leaves bytes, still writable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer, started on first use; `None` when no thread could be made
/// (every line is then dropped and counted).
fn writer() -> Option<&'static Writer> {
    WRITER
        .get_or_init(|| {
            let spawned = std::thread::Builder::new().name("stdout".into()).spawn(|| {
                // Waits until the writer is published, then serves it.
                let w = loop {
                    if let Some(Some(w)) = WRITER.get() {
                        break w;
                    }
                    std::thread::park_timeout(Duration::from_millis(1));
                };
                write_loop(w)
            });
            match spawned {
                Ok(handle) => Some(Writer {
                    thread: handle.thread().clone(),
                    shards: Mutex::default(),
                    flushes: Mutex::default(),
                }),
                Err(_) => {
                    eprintln!("cannot start the stdout writer; log lines are dropped");
                    None
                }
            }
        })
        .as_ref()
}

/// Takes every batch at least every `INTERVAL` (sooner when one is full or
/// a flush is asked for) and writes them to stdout in one go.
fn write_loop(w: &'static Writer) -> ! {
    let mut taken: Vec<Vec<u8>> = Vec::new();
    loop {
        std::thread::park_timeout(INTERVAL);
        let flushes = std::mem::take(&mut *lock(&w.flushes));
        {
            let mut shards = lock(&w.shards);
            for shard in shards.iter() {
                let mut b = lock(&shard.batch);
                if !b.bytes.is_empty() {
                    taken.push(std::mem::replace(&mut b.bytes, Vec::with_capacity(BATCH)));
                }
                b.signalled = false;
            }
            // A thread that ended leaves its shard here only: once emptied,
            // it goes.
            shards.retain(|s| Arc::strong_count(s) > 1 || !lock(&s.batch).bytes.is_empty());
        }
        if !taken.is_empty() {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for bytes in taken.drain(..) {
                let _ = out.write_all(&bytes);
            }
            let _ = out.flush();
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Renders one line into this thread's batch with `render` (which must end
/// it with a newline). Never blocks on stdout.
pub fn write_line(render: impl FnOnce(&mut Vec<u8>)) {
    let queued = SHARD.try_with(|shard| {
        let (Some(shard), Some(w)) = (shard, writer()) else {
            return false;
        };
        let mut b = lock(&shard.batch);
        if b.bytes.len() >= CAP {
            return false;
        }
        render(&mut b.bytes);
        if b.bytes.len() >= BATCH && !b.signalled {
            b.signalled = true;
            w.thread.unpark();
        }
        true
    });
    if queued != Ok(true) {
        DROPPED.fetch_add(1, Relaxed);
    }
}

/// Waits, at most `limit`, until every line written so far is on stdout:
/// for a clean exit.
pub fn flush(limit: Duration) {
    let Some(Some(w)) = WRITER.get() else { return };
    let (tx, rx) = std::sync::mpsc::channel();
    lock(&w.flushes).push(tx);
    w.thread.unpark();
    let _ = rx.recv_timeout(limit);
}

/// The diagnostic log's writer: each event is formatted into a buffer and
/// written whole on drop into the same batches as the access log, so a
/// stalled stdout stalls no request and lines never interleave.
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
            let line = std::mem::take(&mut self.0);
            write_line(|out| out.extend_from_slice(&line));
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
    /// The route's and its upstream's names, shared with the route.
    pub names: Option<Arc<LogNames>>,
    pub upstream_time: Option<Duration>,
    pub request_id: HeaderValue,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: u64,
}

fn proto(v: Version) -> &'static [u8] {
    match v {
        Version::HTTP_09 => b"HTTP/0.9",
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_2 => b"HTTP/2.0",
        Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/1.1",
    }
}

impl Entry {
    /// Renders the line into this thread's batch. Never blocks.
    pub fn emit(self: Box<Self>) {
        if self.format == Format::Off {
            return;
        }
        write_line(|out| self.render_into(out));
    }

    /// The line as text (tests).
    #[cfg(test)]
    fn render(&self) -> String {
        let mut out = Vec::new();
        self.render_into(&mut out);
        String::from_utf8(out).expect("invariant: log lines are UTF-8")
    }

    fn render_into(&self, out: &mut Vec<u8>) {
        let duration = self.started.elapsed();
        let target = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let bytes_in = self.bytes_in.load(Relaxed);
        let route = self.names.as_deref().map(|n| n.route.as_bytes());
        let upstream = self.names.as_deref().map(|n| n.upstream.as_bytes());
        match self.format {
            Format::Json => {
                out.extend_from_slice(b"{\"time\":\"");
                with_dates(self.time, |d| out.extend_from_slice(&d.rfc3339));
                out.extend_from_slice(b"\",\"client\":\"");
                push_ip(out, self.client);
                out.extend_from_slice(b"\",\"method\":");
                json_str(out, Some(self.method.as_str().as_bytes()));
                out.extend_from_slice(b",\"path\":");
                json_str(out, Some(target.as_bytes()));
                out.extend_from_slice(b",\"protocol\":\"");
                out.extend_from_slice(proto(self.version));
                out.extend_from_slice(b"\",\"status\":");
                push_u64(out, u64::from(self.status));
                out.extend_from_slice(b",\"bytes_in\":");
                push_u64(out, bytes_in);
                out.extend_from_slice(b",\"bytes_out\":");
                push_u64(out, self.bytes_out);
                out.extend_from_slice(b",\"duration\":");
                push_secs(out, duration);
                out.extend_from_slice(b",\"route\":");
                json_str(out, route);
                out.extend_from_slice(b",\"upstream\":");
                json_str(out, upstream);
                out.extend_from_slice(b",\"upstream_time\":");
                match self.upstream_time {
                    Some(d) => push_secs(out, d),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"request_id\":");
                json_str(out, Some(self.request_id.as_bytes()));
                out.extend_from_slice(b",\"referer\":");
                json_str(out, header_bytes(&self.referer));
                out.extend_from_slice(b",\"user_agent\":");
                json_str(out, header_bytes(&self.user_agent));
                out.extend_from_slice(b"}\n");
            }
            _ => {
                // nginx's combined format, then bytes in, duration, route,
                // upstream, upstream time and the request id.
                push_ip(out, self.client);
                out.extend_from_slice(b" - - [");
                with_dates(self.time, |d| out.extend_from_slice(&d.clf));
                out.extend_from_slice(b"] \"");
                out.extend_from_slice(self.method.as_str().as_bytes());
                out.push(b' ');
                clf_str(out, Some(target.as_bytes()));
                out.push(b' ');
                out.extend_from_slice(proto(self.version));
                out.extend_from_slice(b"\" ");
                push_u64(out, u64::from(self.status));
                out.push(b' ');
                push_u64(out, self.bytes_out);
                out.extend_from_slice(b" \"");
                clf_str(out, header_bytes(&self.referer));
                out.extend_from_slice(b"\" \"");
                clf_str(out, header_bytes(&self.user_agent));
                out.extend_from_slice(b"\" ");
                push_u64(out, bytes_in);
                out.push(b' ');
                push_secs(out, duration);
                out.extend_from_slice(b" \"");
                clf_str(out, route);
                out.extend_from_slice(b"\" \"");
                clf_str(out, upstream);
                out.extend_from_slice(b"\" ");
                match self.upstream_time {
                    Some(d) => push_secs(out, d),
                    None => out.push(b'-'),
                }
                out.extend_from_slice(b" \"");
                clf_str(out, Some(self.request_id.as_bytes()));
                out.extend_from_slice(b"\"\n");
            }
        }
    }
}

fn header_bytes(v: &Option<HeaderValue>) -> Option<&[u8]> {
    v.as_ref().map(HeaderValue::as_bytes)
}

use crate::base::fmt::push_decimal as push_u64;

/// Seconds with three decimals (milliseconds, rounded), as nginx logs
/// `$request_time`.
fn push_secs(out: &mut Vec<u8>, d: Duration) {
    // In u64: a u128 division (`as_nanos`) is a library call.
    let ms = d
        .as_secs()
        .saturating_mul(1000)
        .saturating_add((u64::from(d.subsec_nanos()) + 500_000) / 1_000_000);
    push_u64(out, ms / 1000);
    let frac = (ms % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Every line starts with one: each octet's digits come from a
            // table rendered at compile time.
            const OCTETS: [(u8, [u8; 3]); 256] = {
                let mut t = [(0u8, [0u8; 3]); 256];
                let mut n = 0;
                while n < 256 {
                    let d = [
                        b'0' + (n / 100) as u8,
                        b'0' + (n / 10 % 10) as u8,
                        b'0' + (n % 10) as u8,
                    ];
                    t[n] = match n {
                        0..=9 => (1, [d[2], 0, 0]),
                        10..=99 => (2, [d[1], d[2], 0]),
                        _ => (3, d),
                    };
                    n += 1;
                }
                t
            };
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let (n, digits) = OCTETS[usize::from(octet)];
                text[len..len + 3].copy_from_slice(&digits);
                len += usize::from(n);
            }
            out.extend_from_slice(&text[..len]);
        }
        // Rare enough that the formatter may render it.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A field of the combined format, escaped as nginx escapes it: `"`, `\`,
/// control bytes and bytes past ASCII as `\xHH`; `-` when absent.
fn clf_str(out: &mut Vec<u8>, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.push(b'-');
        return;
    };
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    push_escaped(out, v, Escapes::Clf, |out, b| {
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ])
    });
}

/// Which bytes a log format escapes.
#[derive(Clone, Copy)]
enum Escapes {
    /// nginx's: `"`, `\`, control bytes and bytes past ASCII.
    Clf,
    /// JSON's (RFC 8259 §7, on text already valid UTF-8): `"`, `\` and
    /// control bytes.
    Json,
}

impl Escapes {
    fn special(self, b: u8) -> bool {
        match self {
            Escapes::Clf => b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b),
            Escapes::Json => b == b'"' || b == b'\\' || b < 0x20,
        }
    }

    /// How many bytes at the start of `text` need no escape. Eight bytes
    /// are judged at a time (a byte at a time cost 17 instructions per
    /// byte of a line's paths, names and User-Agent); a word that may hold
    /// one is left to the byte loop, which decides.
    fn plain_run(self, text: &[u8]) -> usize {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        // A byte of `v` is zero (exact for whether any is).
        let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
        let mut at = 0;
        for word in text.chunks_exact(8) {
            let w = u64::from_ne_bytes(word.try_into().expect("invariant: chunks of 8"));
            // A byte below 0x20; for CLF also one at or past 0x7f (a carry
            // out of 0xff can only mark a word that holds one anyway).
            let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
            let high = matches!(self, Escapes::Clf) && (w.wrapping_add(ONES) | w) & HIGH != 0;
            if control
                || high
                || has_zero(w ^ (ONES * u64::from(b'"')))
                || has_zero(w ^ (ONES * u64::from(b'\\')))
            {
                break;
            }
            at += 8;
        }
        at + text[at..]
            .iter()
            .position(|&b| self.special(b))
            .unwrap_or(text.len() - at)
    }
}

/// Copies `text`, each byte `escapes` names written by `escape` instead.
/// Runs between them (all of a usual path or User-Agent) are copied whole.
fn push_escaped(
    out: &mut Vec<u8>,
    text: &[u8],
    escapes: Escapes,
    escape: impl Fn(&mut Vec<u8>, u8),
) {
    let mut rest = text;
    loop {
        let run = escapes.plain_run(rest);
        out.extend_from_slice(&rest[..run]);
        let Some(&b) = rest.get(run) else { return };
        escape(out, b);
        rest = &rest[run + 1..];
    }
}

/// A JSON string (RFC 8259 §7), or `null` when absent. Bytes that are not
/// UTF-8 (obs-text in a header) become U+FFFD, as a lossy decode would.
fn json_str(out: &mut Vec<u8>, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'"');
    // The usual value (a path, a name, an id, a User-Agent) is printable
    // ASCII without `"` or `\`: what CLF leaves as it is, JSON does too,
    // and no UTF-8 check is needed.
    if Escapes::Clf.plain_run(v) == v.len() {
        out.extend_from_slice(v);
        out.push(b'"');
        return;
    }
    let mut rest = v;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => {
                let (ok, _) = rest.split_at(e.valid_up_to());
                (
                    std::str::from_utf8(ok).expect("invariant: checked UTF-8"),
                    e.error_len().unwrap_or(rest.len() - e.valid_up_to()),
                )
            }
        };
        push_escaped(out, valid.as_bytes(), Escapes::Json, |out, b| match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]);
            }
        });
        if bad > 0 {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
        rest = &rest[valid.len() + bad..];
    }
    out.push(b'"');
}

/// The request time as both formats show it, rendered once a second.
#[derive(Clone, Copy)]
struct Dates {
    second: u64,
    /// `18/Nov/2026:21:05:00 +0000`, nginx's `$time_local` in UTC.
    clf: [u8; 26],
    /// `2026-11-18T21:05:00Z`.
    rfc3339: [u8; 20],
}

fn with_dates(t: SystemTime, f: impl FnOnce(&Dates)) {
    thread_local! {
        static CACHE: std::cell::Cell<Option<Dates>> = const { std::cell::Cell::new(None) };
    }
    let second = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dates = CACHE.with(|c| match c.get() {
        Some(d) if d.second == second => d,
        _ => {
            let d = render_dates(second);
            c.set(Some(d));
            d
        }
    });
    f(&dates);
}

fn render_dates(second: u64) -> Dates {
    use crate::base::clock::MONTHS;
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(second).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let two = |n: u8| [b'0' + n / 10, b'0' + n % 10];
    let year = u16::try_from(t.year().clamp(0, 9999)).unwrap_or(0);
    let y = [
        b'0' + (year / 1000) as u8,
        b'0' + (year / 100 % 10) as u8,
        b'0' + (year / 10 % 10) as u8,
        b'0' + (year % 10) as u8,
    ];
    let (mo, d, h, mi, s) = (
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    let mut clf = [0u8; 26];
    let mut w = &mut clf[..];
    for part in [
        &two(d)[..],
        b"/",
        MONTHS[usize::from(mo) - 1],
        b"/",
        &y,
        b":",
        &two(h),
        b":",
        &two(mi),
        b":",
        &two(s),
        b" +0000",
    ] {
        let _ = w.write_all(part);
    }
    let mut rfc3339 = [0u8; 20];
    let mut w = &mut rfc3339[..];
    for part in [
        &y[..],
        b"-",
        &two(mo),
        b"-",
        &two(d),
        b"T",
        &two(h),
        b":",
        &two(mi),
        b":",
        &two(s),
        b"Z",
    ] {
        let _ = w.write_all(part);
    }
    Dates {
        second,
        clf,
        rfc3339,
    }
}

/// A request id: the trusted incoming one when usable, else 16 random hex
/// digits (a per-thread generator seeded once from the system's RNG).
///
/// Marked sensitive, so HTTP/2 sends it as a never-indexed literal (RFC
/// 7541 §6.2.3): a value unique to each response would only churn the
/// HPACK dynamic table, and later lookups would walk it (issue 13 found
/// 18.8 % of an HTTP/2 request's instructions in HPACK encoding).
pub fn request_id(incoming: Option<&HeaderValue>) -> HeaderValue {
    let mut id = generate_or_keep(incoming);
    id.set_sensitive(true);
    id
}

fn generate_or_keep(incoming: Option<&HeaderValue>) -> HeaderValue {
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

    #[test]
    fn plain_runs_stop_at_the_first_byte_to_escape() {
        // Every byte value at every position of texts longer than a word,
        // against the byte-at-a-time rule.
        for escapes in [Escapes::Clf, Escapes::Json] {
            for len in [1usize, 7, 8, 9, 16, 23] {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut text = vec![b'a'; len];
                        text[at] = b;
                        let want = text.iter().position(|&c| escapes.special(c)).unwrap_or(len);
                        assert_eq!(escapes.plain_run(&text), want, "{len} {at} {b:#x}");
                    }
                }
            }
            // Neighbours that could carry into each other.
            for pair in [[0xffu8, 0x7e], [0x7f, 0x7f], [0x00, 0xff], [0x1f, 0x20]] {
                let mut text = vec![b'a'; 16];
                text[6..8].copy_from_slice(&pair);
                let want = text.iter().position(|&c| escapes.special(c)).unwrap_or(16);
                assert_eq!(escapes.plain_run(&text), want, "{pair:?}");
            }
        }
    }

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
            names: Some(Arc::new(LogNames {
                route: "/api".into(),
                upstream: "api:3001".into(),
            })),
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
        assert!(
            line.starts_with("203.0.113.7 - - [18/Nov/2026:11:06:40 +0000] \"POST /api/v1/Vault"),
            "{line}"
        );
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
        assert_eq!(v["time"], "2026-11-18T11:06:40Z");
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
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "Mozilla/5.0");
        assert!(v["duration"].as_f64().unwrap() >= 0.0);
    }

    /// What peers send is escaped: a JSON line stays one valid JSON value,
    /// a combined line keeps its quoting, whatever the bytes.
    #[test]
    fn peer_bytes_are_escaped() {
        let mut e = entry(Format::Json);
        e.user_agent = Some(HeaderValue::from_bytes(b"a\"b\\c\td\xffe").unwrap());
        e.client = "2001:db8::7".parse().unwrap();
        e.names = None;
        e.upstream_time = None;
        let v: serde_json::Value = serde_json::from_str(&e.render()).unwrap();
        assert_eq!(v["user_agent"], "a\"b\\c\td\u{FFFD}e");
        assert_eq!(v["client"], "2001:db8::7");
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["upstream_time"], serde_json::Value::Null);
        // Valid UTF-8 past ASCII is kept as it is.
        e.user_agent = Some(HeaderValue::from_bytes("café/1".as_bytes()).unwrap());
        let v: serde_json::Value = serde_json::from_str(&e.render()).unwrap();
        assert_eq!(v["user_agent"], "café/1");
        e.user_agent = Some(HeaderValue::from_bytes(b"a\"b\\c\td\xffe").unwrap());
        e.format = Format::Combined;
        let line = e.render();
        assert!(line.contains("\"a\\x22b\\x5Cc\\x09d\\xFFe\""), "{line}");
        assert!(line.contains(" \"-\" \"-\" - \""), "{line}");
    }

    #[test]
    fn numbers_and_dates_without_the_formatter() {
        for n in [0u64, 7, 10, 4_294_967_296, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for (d, want) in [
            (Duration::ZERO, "0.000"),
            (Duration::from_micros(1_499), "0.001"),
            (Duration::from_millis(61_250), "61.250"),
            (Duration::from_micros(999_500), "1.000"),
            (Duration::from_secs(86_400 * 365), "31536000.000"),
        ] {
            let mut out = Vec::new();
            push_secs(&mut out, d);
            assert_eq!(out, want.as_bytes());
        }
        let octets = [0u8, 1, 9, 10, 42, 99, 100, 199, 255];
        for ip in octets
            .iter()
            .flat_map(|&a| octets.map(|b| std::net::Ipv4Addr::new(a, b, b, a)))
        {
            let mut out = Vec::new();
            push_ip(&mut out, ip.into());
            assert_eq!(out, ip.to_string().as_bytes());
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut out = Vec::new();
        push_ip(&mut out, v6);
        assert_eq!(out, b"2001:db8::1");
        let d = render_dates(0);
        assert_eq!(&d.clf, b"01/Jan/1970:00:00:00 +0000");
        assert_eq!(&d.rfc3339, b"1970-01-01T00:00:00Z");
        let d = render_dates(951_825_599); // on a leap day
        assert_eq!(&d.rfc3339, b"2000-02-29T11:59:59Z");
    }

    #[test]
    fn request_ids() {
        let given = HeaderValue::from_static("req-1");
        assert_eq!(request_id(Some(&given)), given);
        let a = request_id(None);
        let b = request_id(None);
        // Never indexed by HPACK, generated or kept.
        assert!(a.is_sensitive());
        assert!(request_id(Some(&given)).is_sensitive());
        assert_eq!(a.len(), 16);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit), "{a:?}");
        assert_ne!(a, b);
        assert_ne!(
            request_id(Some(&HeaderValue::from_static("has space"))),
            "has space"
        );
    }
}
