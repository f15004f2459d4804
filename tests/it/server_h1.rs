//! Issue 13 point 2: Gatehouse's own HTTP/1.1 server side (conn::h1).
//! Raw clients on real sockets check what the HTTP/1 loop itself owns:
//! `Expect: 100-continue`, pipelining with bodies, HTTP/1.0 keep-alive and
//! close-delimited answers, HEAD, and the fields every answer carries.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// One response read off a raw connection.
#[derive(Debug)]
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (head, then its body by its framing) from `s`,
/// keeping what follows in `buf`. `head_request`: no body follows.
async fn answer(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Answer {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 4096];
        let n = within(s.read(&mut chunk)).await.unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        n > 0
    }
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        assert!(more(s, buf).await, "closed inside a head: {buf:?}");
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut a = Answer {
        head,
        body: Vec::new(),
    };
    let status: u16 = a.head[9..12].parse().unwrap();
    if head_request || status < 200 || status == 204 || status == 304 {
        return a;
    }
    if let Some(n) = a.header("content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            assert!(more(s, buf).await, "closed inside a body");
        }
        a.body = buf.drain(..n).collect();
    } else if a.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                assert!(more(s, buf).await);
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                assert!(more(s, buf).await);
            }
            if size == 0 {
                buf.drain(..2);
                break;
            }
            a.body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    } else {
        // Delimited by the connection's close.
        while more(s, buf).await {}
        a.body = std::mem::take(buf);
    }
    a
}

#[tokio::test]
async fn expect_100_continue_is_sent_when_the_body_is_wanted() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n[[route]]\npath = \"/small\"\nupstream = \"{}\"\nmax_body = \"1K\"\n\n{}",
        up.url(),
        route("/", &up.url(), "")
    ))
    .await;
    let mut s = within(TcpStream::connect(px.http)).await.unwrap();
    within(s.write_all(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    ))
    .await
    .unwrap();
    // The client holds its body back until told to go on.
    let mut buf = Vec::new();
    let interim = answer(&mut s, &mut buf, false).await;
    assert!(
        interim.head.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim:?}"
    );
    within(s.write_all(b"hello")).await.unwrap();
    let done = answer(&mut s, &mut buf, false).await;
    assert!(done.head.starts_with("HTTP/1.1 200"), "{done:?}");
    assert!(done.body.ends_with(b"\n\nhello"), "{done:?}");
    // Refused on its declared length: no 100, the refusal at once, and no
    // wait for a body that will not come.
    within(s.write_all(
        b"POST /small HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    ))
    .await
    .unwrap();
    let refused = answer(&mut s, &mut buf, false).await;
    assert!(refused.head.starts_with("HTTP/1.1 413"), "{refused:?}");
    assert_eq!(refused.header("connection"), Some("close"));
    px.stop().await;
}

#[tokio::test]
async fn pipelined_requests_with_bodies_are_answered_in_order() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    let mut s = within(TcpStream::connect(px.http)).await.unwrap();
    // Four requests in one write: no body, a sized body, a chunked body
    // with a trailer, and a last one that closes.
    within(s.write_all(
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz\
POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n2\r\n!!\r\n0\r\nX-T: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ))
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let a = answer(&mut s, &mut buf, false).await;
        assert!(a.head.starts_with("HTTP/1.1 200"), "{a:?}");
        bodies.push(String::from_utf8_lossy(&a.body).into_owned());
    }
    assert!(bodies[0].starts_with("GET /a "), "{bodies:?}");
    assert!(
        bodies[1].starts_with("POST /b ") && bodies[1].ends_with("\n\nxyz"),
        "{bodies:?}"
    );
    assert!(
        bodies[2].starts_with("POST /c ") && bodies[2].ends_with("\n\nwxyz!!"),
        "{bodies:?}"
    );
    assert!(bodies[3].starts_with("GET /d "), "{bodies:?}");
    // Closed after the last, as it asked.
    let mut rest = Vec::new();
    let n = within(s.read_to_end(&mut rest)).await.unwrap();
    assert_eq!((n, buf.len()), (0, 0));
    px.stop().await;
}

#[tokio::test]
async fn http10_clients_get_keep_alive_or_a_close_delimited_body() {
    // An upstream that streams a body of unknown length (sent chunked).
    let up = upstream(|req: http::Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_string();
        if path == "/stream" {
            let frames = futures_util::stream::iter(
                ["one ", "two ", "three"]
                    .map(|s| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(s)))),
            );
            http::Response::new(
                http_body_util::StreamBody::new(frames)
                    .map_err(|never| match never {})
                    .boxed(),
            )
        } else {
            http::Response::new(full("sized"))
        }
    })
    .await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    let mut s = within(TcpStream::connect(px.http)).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        within(s.write_all(b"GET /sized HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
            .await
            .unwrap();
        let a = answer(&mut s, &mut buf, false).await;
        assert!(a.head.starts_with("HTTP/1.0 200"), "{a:?}");
        assert_eq!(a.header("connection"), Some("keep-alive"));
        assert_eq!(a.body, b"sized");
    }
    // Unknown length: HTTP/1.0 has no chunked coding, so the body ends
    // where the connection does.
    within(s.write_all(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
        .await
        .unwrap();
    let a = answer(&mut s, &mut buf, false).await;
    assert!(a.head.starts_with("HTTP/1.0 200"), "{a:?}");
    assert_eq!(a.header("transfer-encoding"), None);
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(a.body, b"one two three");
    // HTTP/1.1 gets the same body chunked, on a connection that stays.
    let mut s = within(TcpStream::connect(px.http)).await.unwrap();
    let mut buf = Vec::new();
    within(s.write_all(
        b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\nGET /sized HTTP/1.1\r\nHost: h\r\n\r\n",
    ))
    .await
    .unwrap();
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
    assert_eq!(a.body, b"one two three");
    assert_eq!(answer(&mut s, &mut buf, false).await.body, b"sized");
    px.stop().await;
}

#[tokio::test]
async fn head_answers_carry_the_length_and_no_body() {
    let up = fixed(200, "twelve bytes").await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    let mut s = within(TcpStream::connect(px.http)).await.unwrap();
    within(s.write_all(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n"))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = answer(&mut s, &mut buf, true).await;
    assert_eq!(head.header("content-length"), Some("12"), "{head:?}");
    // Every answer carries the date (RFC 9110 §6.6.1), IMF-fixdate.
    let date = head.header("date").expect("a date");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    // Had a body been written after the HEAD answer, it would be read as
    // this answer's head.
    let get = answer(&mut s, &mut buf, false).await;
    assert!(get.head.starts_with("HTTP/1.1 200"), "{get:?}");
    assert_eq!(get.body, b"twelve bytes");
    px.stop().await;
}

#[tokio::test]
async fn no_length_or_coding_goes_out_with_a_204() {
    // An upstream that sends `Content-Length` with its 204 (RFC 9110 §8.6
    // says it must not): the client gets the 204 without it.
    let up = answering(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Up: 1\r\n\r\n").await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        route("/", &format!("http://{up}"), "")
    ))
    .await;
    let mut s = within(TcpStream::connect(px.http)).await.unwrap();
    within(s.write_all(b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n"))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let a = answer(&mut s, &mut buf, false).await;
    assert!(a.head.starts_with("HTTP/1.1 204"), "{a:?}");
    assert_eq!(a.header("x-up"), Some("1"));
    assert_eq!(a.header("content-length"), None, "{a:?}");
    assert_eq!(a.header("transfer-encoding"), None, "{a:?}");
    px.stop().await;
}
