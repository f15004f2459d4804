//! Issue 3 point 6: request smuggling and malformed framing, sent as raw
//! bytes; nothing ambiguous may reach the upstream.

use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn proxy() -> (Proxy, Upstream) {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &up.url())])
    ))
    .await;
    (px, up)
}

#[tokio::test]
async fn ambiguous_http1_framing_is_400_and_closed_never_forwarded() {
    let (px, up) = proxy().await;
    let cases: &[(&str, &[u8])] = &[
        (
            "CL and TE",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        (
            "TE and CL",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        ("duplicate CL", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("CL list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\nabcd"),
        ("negative CL", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"),
        ("CL with sign", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc"),
        ("TE not chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        ("chunked not last", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("TE obfuscated", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("TE space before colon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n"),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-Bad: a\0b\r\n\r\n"),
        ("CR in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-Bad: a\rb\r\n\r\n"),
        ("bad name byte", b"GET / HTTP/1.1\r\nHost: h\r\nX(Bad): a\r\n\r\n"),
        ("bare LF chunk", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let out = raw(px.http, bytes).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{what}: {out:?}");
        // raw() read to the end: the connection was closed after the 400.
        assert!(!out.contains("smuggled"), "{what}");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            0,
            "{what} reached the upstream"
        );
    }
    px.stop().await;
}

/// A header field as raw bytes.
type Field<'a> = (&'a [u8], &'a [u8]);

/// A minimal HTTP/2 client speaking raw frames, to send what no HTTP/2
/// library will: connection-specific fields and CR/LF/NUL in values.
async fn raw_h2_headers(px: &Proxy, extra: &[Field<'_>]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut tls = tls_connect(px.https, &px.cert_path(), &[b"h2"])
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let mut block = Vec::new();
    let fields: Vec<Field> = [
        (&b":method"[..], &b"GET"[..]),
        (b":scheme", b"https"),
        (b":path", b"/h2"),
        (b":authority", b"localhost"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .collect();
    for (name, value) in fields {
        // Literal without indexing, new name, no Huffman (RFC 7541 §6.2.2).
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name);
        block.push(value.len() as u8);
        block.extend_from_slice(value);
    }
    let len = block.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[1, 0x05, 0, 0, 0, 1]); // HEADERS, END_STREAM|END_HEADERS, stream 1
    out.extend_from_slice(&block);
    within(tls.write_all(&out)).await.unwrap();
    // Read frames until the stream is answered or the connection ends.
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if within(tls.read_exact(&mut head)).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if within(tls.read_exact(&mut payload)).await.is_err() {
            break;
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let kind = head[3];
        frames.push((kind, stream, payload));
        // RST_STREAM or GOAWAY or HEADERS on stream 1 ends the exchange.
        if (stream == 1 && (kind == 3 || kind == 1)) || kind == 7 {
            break;
        }
    }
    frames
}

#[tokio::test]
async fn http2_requests_with_connection_fields_or_bad_bytes_are_refused() {
    let (px, up) = proxy().await;
    // Baseline: the raw client itself works.
    let ok = raw_h2_headers(&px, &[]).await;
    assert!(ok.iter().any(|(k, s, _)| *k == 1 && *s == 1), "{ok:?}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let cases: &[(&str, &[Field])] = &[
        ("connection", &[(b"connection", b"keep-alive")]),
        ("transfer-encoding", &[(b"transfer-encoding", b"chunked")]),
        ("upgrade", &[(b"upgrade", b"websocket")]),
        ("keep-alive", &[(b"keep-alive", b"timeout=5")]),
        ("te other than trailers", &[(b"te", b"gzip")]),
        ("CRLF in value", &[(b"x-inject", b"a\r\nX-Evil: 1")]),
        ("NUL in value", &[(b"x-inject", b"a\0b")]),
        ("upper-case name", &[(b"X-Upper", b"1")]),
    ];
    for (what, extra) in cases {
        let frames = raw_h2_headers(&px, extra).await;
        let answered_ok = frames
            .iter()
            .any(|(k, s, p)| *k == 1 && *s == 1 && p.first() == Some(&0x88));
        assert!(!answered_ok, "{what}: served {frames:?}");
        let refused = frames
            .iter()
            .any(|(k, s, _)| (*k == 3 && *s == 1) || *k == 7)
            || frames
                .iter()
                .any(|(k, s, p)| *k == 1 && *s == 1 && p.first() != Some(&0x88));
        assert!(refused, "{what}: {frames:?}");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            1,
            "{what} reached the upstream"
        );
    }
    px.stop().await;
}

#[tokio::test]
async fn upstream_responses_with_ambiguous_framing_are_not_passed_on() {
    for (what, response) in [
        (
            "CL and TE",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                [..],
        ),
        (
            "duplicate CL",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "obs-fold",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Folded: a\r\n b\r\n\r\nok",
        ),
        (
            "NUL in value",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bad: a\0b\r\n\r\nok",
        ),
    ] {
        let addr = raw_upstream(move |mut s| async move {
            let _ = s.write_all(response).await;
        })
        .await;
        let px = Proxy::start(&format!(
            "force_https_redirect = false\n{}",
            routes(&[("/", &format!("http://{addr}"))])
        ))
        .await;
        let res = px.get("/").await;
        assert_eq!(
            res.status,
            http::StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {res:?}"
        );
        px.stop().await;
    }
}

#[tokio::test]
async fn too_many_header_fields_are_431() {
    let (px, up) = proxy().await;
    let mut req = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..150 {
        req.push_str(&format!("X-F{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let out = raw(px.http, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    px.stop().await;
}

/// CVE-2023-44487: open and immediately reset streams in a loop. The
/// connection must be ended with GOAWAY, and the proxy must keep serving.
#[tokio::test]
async fn http2_rapid_reset_is_cut_off() {
    let (px, _up) = proxy().await;
    let mut tls = tls_connect(px.https, &px.cert_path(), &[b"h2"])
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // :method GET, :scheme https, :path /, :authority h (HPACK literals).
    let mut block = Vec::new();
    for (n, v) in [
        (&b":method"[..], &b"GET"[..]),
        (b":scheme", b"https"),
        (b":path", b"/"),
        (b":authority", b"h"),
    ] {
        block.push(0x00);
        block.push(n.len() as u8);
        block.extend_from_slice(n);
        block.push(v.len() as u8);
        block.extend_from_slice(v);
    }
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        out.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[1, 0x05]);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&block);
        // RST_STREAM(CANCEL)
        out.extend_from_slice(&[0, 0, 4, 3, 0]);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&8u32.to_be_bytes());
    }
    let _ = within(tls.write_all(&out)).await;
    let mut goaway = false;
    loop {
        let mut head = [0u8; 9];
        if within(tls.read_exact(&mut head)).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if within(tls.read_exact(&mut payload)).await.is_err() {
            break;
        }
        if head[3] == 7 {
            goaway = true;
            break;
        }
    }
    assert!(goaway, "no GOAWAY after 2000 rapid resets");
    assert_eq!(
        px.get_tls(Proto::TlsH2, "/after").await.status,
        http::StatusCode::OK
    );
    px.stop().await;
}
