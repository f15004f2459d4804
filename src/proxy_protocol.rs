//! PROXY protocol v1 and v2 (HAProxy's specification), read before TLS or
//! HTTP so that a load balancer in front can tell us the client's address.
//!
//! Only trusted peers may send one; from anyone else a PROXY header is a
//! spoofing attempt and the connection is refused.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What the start of a connection held.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// No PROXY header; these bytes were read and belong to the stream.
    None([u8; 5]),
    /// A header with the original source address (`None` for `UNKNOWN` or
    /// `LOCAL`: the peer's own connection, such as a health check).
    Proxy(Option<SocketAddr>),
}

/// Reads a PROXY header if the stream starts with one. Every legitimate
/// first flight (a TLS record header, an HTTP request line) is at least
/// five bytes, so five are always read to decide.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Header> {
    let mut first = [0u8; 5];
    r.read_exact(&mut first).await?;
    if &first == b"PROXY" {
        return read_v1(r).await.map(Header::Proxy);
    }
    if first == V2_SIGNATURE[..5] {
        return read_v2(r).await.map(Header::Proxy);
    }
    Ok(Header::None(first))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("PROXY protocol: {msg}"))
}

/// `PROXY TCP4 src dst sport dport\r\n`, at most 107 bytes in all.
async fn read_v1<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<SocketAddr>> {
    let mut line = Vec::with_capacity(108);
    loop {
        let b = r.read_u8().await?;
        line.push(b);
        if line.ends_with(b"\r\n") {
            break;
        }
        if line.len() > 102 {
            return Err(invalid("v1 header too long"));
        }
    }
    let text =
        std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| invalid("v1 header not ASCII"))?;
    let parts: Vec<&str> = text.trim_start().split(' ').collect();
    match parts.as_slice() {
        ["UNKNOWN", ..] => Ok(None),
        [proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| invalid("bad v1 source address"))?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(invalid("v1 address family mismatch"));
            }
            let port: u16 = sport.parse().map_err(|_| invalid("bad v1 source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(invalid("malformed v1 header")),
    }
}

/// The binary header: signature, version/command, family, length, addresses.
async fn read_v2<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<SocketAddr>> {
    let mut rest = [0u8; 11];
    r.read_exact(&mut rest).await?;
    if rest[..7] != V2_SIGNATURE[5..] {
        return Err(invalid("bad v2 signature"));
    }
    let ver_cmd = rest[7];
    let family = rest[8];
    let len = u16::from_be_bytes([rest[9], rest[10]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(invalid("unsupported v2 version"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    match ver_cmd & 0x0f {
        // LOCAL: the proxy's own connection; keep the peer address.
        0 => return Ok(None),
        1 => {}
        _ => return Err(invalid("unsupported v2 command")),
    }
    match family >> 4 {
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        2 if body.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)))
        }
        // AF_UNSPEC or AF_UNIX: no usable address.
        0 | 3 => Ok(None),
        _ => Err(invalid("truncated v2 address block")),
    }
}

/// A stream with a few already-read bytes put back in front.
pub struct Prefixed<S> {
    prefix: [u8; 5],
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: [u8; 5], inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// A stream with nothing to put back.
    pub fn plain(inner: S) -> Self {
        Prefixed {
            prefix: [0; 5],
            pos: 5,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::io::forward_async_write!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> io::Result<Header> {
        let mut r = bytes;
        read_header(&mut r).await
    }

    #[tokio::test]
    async fn v1() {
        let h = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET /")
            .await
            .unwrap();
        assert_eq!(h, Header::Proxy(Some("203.0.113.7:51000".parse().unwrap())));
        let h = parse(b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n")
            .await
            .unwrap();
        assert_eq!(
            h,
            Header::Proxy(Some("[2001:db8::7]:51000".parse().unwrap()))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").await.unwrap(),
            Header::Proxy(None)
        );
        assert!(parse(b"PROXY TCP4 nope 10.0.0.1 1 2\r\n").await.is_err());
        assert!(parse(b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n").await.is_err());
        assert!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(30))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn v2() {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0xC3, 0x50, 1, 187,
        ]);
        b.extend_from_slice(b"GET /");
        let h = parse(&b).await.unwrap();
        assert_eq!(
            h,
            Header::Proxy(Some("198.51.100.9:50000".parse().unwrap()))
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).await.unwrap(), Header::Proxy(None));
    }

    #[tokio::test]
    async fn no_header_gives_the_bytes_back() {
        let h = parse(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(h, Header::None(*b"GET /"));
        let mut p = Prefixed::new(*b"GET /", &b" HTTP/1.1\r\n"[..]);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "GET / HTTP/1.1\r\n");
    }
}
