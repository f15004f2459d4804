//! Issue 13 point 2: Gatehouse's own HTTP/1.1 client side (upstream::h1).
//! Randomised responses in every framing, written by a raw upstream in
//! random pieces on kept-alive connections, must reach the client whole
//! (body and trailers); malformed ones must never be passed on as if they
//! were fine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A small deterministic generator (xorshift64*): the same cases every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One response as the upstream writes it, and what the client must get.
struct Case {
    bytes: Vec<u8>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
    /// The upstream closes the connection after it (close-delimited body).
    close: bool,
}

fn case(rng: &mut Rng) -> Case {
    let len = match rng.below(4) {
        0 => 0,
        1 => rng.below(40) as usize,
        2 => rng.below(3000) as usize,
        _ => rng.below(70_000) as usize,
    };
    let body: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n");
    if rng.below(3) == 0 {
        head.push_str("X-Extra: some value\r\n");
    }
    // An informational answer first, sometimes (RFC 9110 §15.2): skipped.
    let mut bytes = Vec::new();
    if rng.below(5) == 0 {
        bytes.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut trailers = Vec::new();
    let mut close = false;
    match rng.below(3) {
        0 => {
            head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
            bytes.extend_from_slice(head.as_bytes());
            bytes.extend_from_slice(&body);
        }
        1 => {
            let n_trailers = rng.below(3);
            for i in 0..n_trailers {
                trailers.push((format!("x-trailer-{i}"), format!("v{}", rng.below(1000))));
            }
            // Declared, as HTTP/1.1 clients are only sent declared
            // trailers (RFC 9110 §6.6.2).
            if !trailers.is_empty() {
                let names: Vec<&str> = trailers.iter().map(|(k, _)| k.as_str()).collect();
                head.push_str(&format!("Trailer: {}\r\n", names.join(", ")));
            }
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            bytes.extend_from_slice(head.as_bytes());
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(5000) as usize).min(rest.len());
                let size = if rng.below(2) == 0 {
                    format!("{n:x}")
                } else {
                    format!("{n:X}")
                };
                // Chunk extensions are allowed and ignored (RFC 9112 §7.1.1).
                let ext = if rng.below(4) == 0 { ";name=value" } else { "" };
                bytes.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                bytes.extend_from_slice(&rest[..n]);
                bytes.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            bytes.extend_from_slice(b"0\r\n");
            for (k, v) in &trailers {
                bytes.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            bytes.extend_from_slice(b"\r\n");
        }
        _ => {
            // No length: the body runs to the end of the connection.
            head.push_str("Connection: close\r\n\r\n");
            bytes.extend_from_slice(head.as_bytes());
            bytes.extend_from_slice(&body);
            close = true;
        }
    }
    Case {
        bytes,
        body,
        trailers,
        close,
    }
}

/// Serves `responses[N]` for `GET /N`, written in random pieces, on
/// connections kept alive until a case closes them.
async fn raw_server(responses: Arc<Vec<Case>>, conns: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut seed = 7u64;
        while let Ok((mut s, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            seed += 1;
            let responses = responses.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
                let mut buf = Vec::new();
                loop {
                    // One request head (these requests have no body).
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let n: usize = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.trim_start_matches('/').parse().ok())
                        .unwrap();
                    let case = &responses[n];
                    let mut rest = &case.bytes[..];
                    while !rest.is_empty() {
                        let k = (1 + rng.below(9000) as usize).min(rest.len());
                        if s.write_all(&rest[..k]).await.is_err() {
                            return;
                        }
                        rest = &rest[k..];
                    }
                    if case.close {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The proxy with one route to `addr`, HTTP serving routes.
async fn in_front_of(addr: std::net::SocketAddr) -> Proxy {
    Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &format!("http://{addr}"))])
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_in_every_framing_and_any_pieces_arrive_whole() {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let cases: Arc<Vec<Case>> = Arc::new((0..160).map(|_| case(&mut rng)).collect());
    let conns = Arc::new(AtomicUsize::new(0));
    let addr = raw_server(cases.clone(), conns.clone()).await;
    let px = in_front_of(addr).await;
    for (i, c) in cases.iter().enumerate() {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::TlsH2 };
        let req = Request::builder()
            .uri(format!("/{i}"))
            .header("host", "h")
            .header("te", "trailers")
            .body(full(""))
            .unwrap();
        let res = px.send(proto, req).await.unwrap();
        assert_eq!(res.status, StatusCode::OK, "case {i}");
        assert!(
            res.body == c.body,
            "case {i}: body of {} bytes differs",
            c.body.len()
        );
        for (k, v) in &c.trailers {
            let got = res.trailers.as_ref().and_then(|t| t.get(k.as_str()));
            assert_eq!(
                got.map(|v| v.to_str().unwrap()),
                Some(v.as_str()),
                "case {i}: trailer {k}"
            );
        }
    }
    // Kept-alive connections were reused: far fewer than one per case.
    let closing = cases.iter().filter(|c| c.close).count();
    let used = conns.load(Ordering::SeqCst);
    assert!(
        used <= closing + 4,
        "{used} upstream connections for {} cases ({closing} close-delimited)",
        cases.len()
    );
    px.stop().await;
}

/// Answers that break the framing rules: a bad head is a 503 status page,
/// a body that goes wrong after its head was passed on is cut (the client
/// sees an incomplete response, never a complete-looking wrong one), and
/// the connection is not reused.
#[tokio::test]
async fn malformed_responses_are_never_passed_on_as_complete() {
    let bad_heads: Vec<&[u8]> = vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ];
    for (i, bytes) in bad_heads.iter().enumerate() {
        let px = in_front_of(answering(bytes).await).await;
        let res = px.get("/").await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "head {i}");
        px.stop().await;
    }
    let bad_bodies: Vec<&[u8]> = vec![
        // Not a hex size.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        // Chunk data not followed by CRLF.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
        // Shorter than its Content-Length, then closed.
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
        // Chunked, closed before the last chunk.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ];
    for (i, bytes) in bad_bodies.iter().enumerate() {
        let px = in_front_of(answering(bytes).await).await;
        // HTTP/1.1: the response is cut (the connection ends mid-body);
        // HTTP/2: the stream is reset. Either way the client sees an error.
        for proto in [Proto::H1, Proto::TlsH2] {
            let res = px.send(proto, get("/", "h")).await;
            assert!(
                res.is_err(),
                "body {i} over {proto:?} looked complete: {res:?}"
            );
        }
        px.stop().await;
    }
}
