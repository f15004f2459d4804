//! Request-smuggling guard for HTTP/1 connections.
//!
//! hyper, like RFC 9112 §6.1 allows, answers a request carrying both
//! `Content-Length` and `Transfer-Encoding` by trusting the latter and
//! closing the connection afterwards. Gatehouse goes further, as an edge
//! proxy should: such a request is refused with 400 and never reaches an
//! upstream. hyper drops the `Content-Length` before the request is handed
//! over, so the evidence is gathered here, on the bytes as they are read:
//! this wrapper follows the HTTP/1 framing (heads, fixed and chunked
//! bodies) and records the position of the first ambiguous request; the
//! request pipeline compares it with its own count and refuses that one.
//!
//! Anything it cannot follow (an upgrade, CONNECT, a head hyper itself will
//! reject) ends the inspection for the connection; hyper then still closes
//! after an ambiguous request, so no desynchronisation is possible.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Shared between the reader (this wrapper) and the request pipeline.
#[derive(Debug, Default)]
pub struct Flags {
    /// 1-based index of the first request with ambiguous framing; 0: none.
    ambiguous_at: AtomicU64,
    /// Requests the pipeline has started on this connection.
    served: AtomicU64,
}

impl Flags {
    /// Runs once per HTTP/1 request, in order: true when this request is the
    /// one whose head carried both `Content-Length` and `Transfer-Encoding`.
    pub fn next_is_ambiguous(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        self.ambiguous_at.load(Ordering::Acquire) == n
    }
}

/// Heads larger than this are left to hyper's own limit.
const MAX_HEAD: usize = 1 << 20;

#[derive(Debug)]
enum State {
    Head,
    Fixed(u64),
    ChunkLine,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers,
    /// Stop inspecting (upgrade, CONNECT, or bytes hyper will refuse).
    Off,
    /// Chunked framing was broken (a bare LF, a missing CRLF): the request
    /// was flagged, and the next read fails so hyper cannot go on parsing a
    /// body whose end it might place differently than the upstream would.
    Poisoned,
}

pub struct Inspect<I> {
    inner: I,
    state: State,
    buf: Vec<u8>,
    heads: u64,
    flags: Arc<Flags>,
}

impl<I> Inspect<I> {
    pub fn new(inner: I, flags: Arc<Flags>) -> Self {
        Inspect {
            inner,
            state: State::Head,
            buf: Vec::new(),
            heads: 0,
            flags,
        }
    }

    /// Follows the framing over newly read bytes.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off | State::Poisoned => return,
                State::Head => {
                    if self.buf.is_empty() {
                        // Empty lines before a request line are ignored by
                        // hyper (RFC 9112 §2.2); they start no request.
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    // The terminator may straddle two reads: look back 3.
                    let start = self.buf.len().saturating_sub(3);
                    self.buf.extend_from_slice(data);
                    match find_head_end(&self.buf[start..]) {
                        Some(end) => {
                            let end = start + end;
                            let rest = self.buf.len() - end;
                            data = &data[data.len() - rest..];
                            self.buf.truncate(end);
                            self.state = self.on_head();
                            self.buf.clear();
                        }
                        None => {
                            if self.buf.len() > MAX_HEAD {
                                self.state = State::Off;
                            }
                            return;
                        }
                    }
                }
                State::Fixed(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Fixed(left)
                    };
                }
                State::ChunkLine | State::Trailers => {
                    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > 8192 {
                            self.state = State::Off;
                        }
                        return;
                    };
                    self.buf.extend_from_slice(&data[..=nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.buf);
                    // RFC 9112 §7.1: chunk lines end in CRLF; a bare LF is
                    // read differently by different parsers.
                    if !line.ends_with(b"\r\n") {
                        self.poison();
                        return;
                    }
                    self.state = if matches!(self.state, State::Trailers) {
                        if line == b"\r\n" || line == b"\n" {
                            State::Head
                        } else {
                            State::Trailers
                        }
                    } else {
                        match httparse::parse_chunk_size(&line) {
                            Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
                            Ok(httparse::Status::Complete((_, n))) => State::ChunkData(n),
                            _ => {
                                self.poison();
                                return;
                            }
                        }
                    };
                    self.buf = line;
                    self.buf.clear();
                }
                State::ChunkData(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkCrlf(2)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkCrlf(n) => {
                    // Exactly CRLF after the chunk data.
                    let want = if n == 2 { b'\r' } else { b'\n' };
                    if data[0] != want {
                        self.poison();
                        return;
                    }
                    data = &data[1..];
                    self.state = if n == 1 {
                        State::ChunkLine
                    } else {
                        State::ChunkCrlf(n - 1)
                    };
                }
            }
        }
    }

    fn poison(&mut self) {
        let _ = self.flags.ambiguous_at.compare_exchange(
            0,
            self.heads,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.state = State::Poisoned;
    }

    /// A complete head is in `buf`: note an ambiguity and pick the body state.
    fn on_head(&mut self) -> State {
        self.heads += 1;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(_)) => {}
            // hyper refuses this head itself (and closes the connection).
            _ => return State::Off,
        }
        let mut cl: Option<u64> = None;
        let mut has_cl = false;
        let mut te_chunked_last = None;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                has_cl = true;
                cl = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                te_chunked_last = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if has_cl && te_chunked_last.is_some() {
            let _ = self.flags.ambiguous_at.compare_exchange(
                0,
                self.heads,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            // hyper closes the connection after this request.
            return State::Off;
        }
        if upgrade {
            return State::Off;
        }
        match (te_chunked_last, cl) {
            (Some(true), _) => State::ChunkLine,
            (Some(false), _) => State::Off,
            (None, _) if !has_cl => State::Head,
            (None, Some(0)) => State::Head,
            (None, Some(n)) => State::Fixed(n),
            // An invalid Content-Length: hyper answers 400 and closes.
            (None, None) => State::Off,
        }
    }
}

/// The index just past the blank line ending a head in `b`, if any.
fn find_head_end(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(nl) = b[from..].iter().position(|c| *c == b'\n') {
        let at = from + nl;
        match b.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if b.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

impl<I: AsyncRead + Unpin> AsyncRead for Inspect<I> {
    // Runs on every read of an HTTP/1 connection: a scan of head bytes and
    // chunk-size lines; fixed-length bodies are skipped by count.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.state, State::Poisoned) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed chunked framing",
            )));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if !matches!(self.state, State::Off) {
                self.get_mut().feed(&buf.filled()[before..]);
            }
        }
        res
    }
}

crate::io::forward_async_write!(Inspect);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (u64, u64) {
        let flags = Arc::new(Flags::default());
        let mut i = Inspect::new((), flags.clone());
        for c in chunks {
            i.feed(c);
        }
        (i.heads, flags.ambiguous_at.load(Ordering::Relaxed))
    }

    #[test]
    fn follows_pipelined_requests_and_bodies() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n\r\nGET /fake HTTP/1.1\r\nX: y\r\n\r\n!\
POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(run(&[stream]), (3, 0));
        // Byte by byte gives the same answer.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), (3, 0));
    }

    #[test]
    fn flags_the_ambiguous_request_by_position() {
        let stream: &[u8] = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n\
POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX";
        assert_eq!(run(&[stream]).1, 2);
        let flags = Arc::new(Flags::default());
        let mut i = Inspect::new((), flags.clone());
        i.feed(stream);
        assert!(!flags.next_is_ambiguous());
        assert!(flags.next_is_ambiguous());
    }

    #[test]
    fn bare_lf_in_chunks_poisons() {
        let flags = Arc::new(Flags::default());
        let mut i = Inspect::new((), flags.clone());
        i.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n");
        assert!(matches!(i.state, State::Poisoned));
        assert_eq!(flags.ambiguous_at.load(Ordering::Relaxed), 1);
        let mut i = Inspect::new((), Arc::new(Flags::default()));
        i.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n");
        assert!(matches!(i.state, State::Poisoned));
    }

    #[test]
    fn stops_at_upgrades() {
        let stream: &[u8] = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(&[stream]), (1, 0));
    }
}
