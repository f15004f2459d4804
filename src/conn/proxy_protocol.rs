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

/// The longest header accepted: a v1 line is at most 107 bytes; a v2
/// header is 16 bytes plus addresses (at most 216) and TLVs, which load
/// balancers keep to a few hundred bytes.
pub(crate) const MAX_HEADER: usize = 1024;

/// What the start of a connection held.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// No PROXY header; these bytes were read and belong to the stream.
    None(Vec<u8>),
    /// A header with the original source address (`None` for `UNKNOWN` or
    /// `LOCAL`: the peer's own connection, such as a health check), and
    /// the bytes read after it, which belong to the stream.
    Proxy(Option<SocketAddr>, Vec<u8>),
}

/// Reads a PROXY header if the stream starts with one. Every legitimate
/// first flight (a TLS record header, an HTTP request line) is at least
/// five bytes, so five are read to decide. A peer that is not `trusted`
/// is refused as soon as the signature shows (`PermissionDenied`), before
/// anything more is read or allocated for it. Reads go into one buffer
/// (not a byte per system call); what follows the header is returned.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    trusted: bool,
) -> io::Result<Header> {
    let mut buf = Vec::with_capacity(256);
    fill(r, &mut buf, 5).await?;
    let v1 = buf.starts_with(b"PROXY");
    let v2 = buf[..5] == V2_SIGNATURE[..5];
    if !v1 && !v2 {
        return Ok(Header::None(buf));
    }
    if !trusted {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "PROXY header from an untrusted peer",
        ));
    }
    if v1 {
        loop {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let source = parse_v1(&buf[..end])?;
                return Ok(Header::Proxy(source, buf.split_off(end + 2)));
            }
            if buf.len() > 107 {
                return Err(invalid("v1 header too long"));
            }
            let want = buf.len() + 1;
            fill(r, &mut buf, want).await?;
        }
    }
    fill(r, &mut buf, 16).await?;
    if buf[..12] != V2_SIGNATURE {
        return Err(invalid("bad v2 signature"));
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + len > MAX_HEADER {
        return Err(invalid("v2 header too long"));
    }
    fill(r, &mut buf, 16 + len).await?;
    let source = parse_v2(buf[12], buf[13], &buf[16..16 + len])?;
    Ok(Header::Proxy(source, buf.split_off(16 + len)))
}

/// Reads until `buf` holds at least `want` bytes (often more, in one read).
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    while buf.len() < want {
        if buf.capacity() - buf.len() < want - buf.len() {
            buf.reserve(want - buf.len());
        }
        if r.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("PROXY protocol: {msg}"))
}

/// `PROXY TCP4 src dst sport dport` (without its CRLF).
fn parse_v1(line: &[u8]) -> io::Result<Option<SocketAddr>> {
    let text = std::str::from_utf8(line).map_err(|_| invalid("v1 header not ASCII"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
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

/// The binary header after its signature: version/command, family, and
/// the address block.
fn parse_v2(ver_cmd: u8, family: u8, body: &[u8]) -> io::Result<Option<SocketAddr>> {
    if ver_cmd >> 4 != 2 {
        return Err(invalid("unsupported v2 version"));
    }
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

/// A stream with already-read bytes put back in front.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// A stream with nothing to put back.
    pub fn plain(inner: S) -> Self {
        Self::new(Vec::new(), inner)
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
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::base::io::forward_async_write!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn parse(bytes: &[u8]) -> io::Result<Header> {
        let mut r = bytes;
        read_header(&mut r, true).await
    }

    fn source(h: Header) -> Option<SocketAddr> {
        match h {
            Header::Proxy(s, _) => s,
            Header::None(_) => panic!("no header"),
        }
    }

    #[tokio::test]
    async fn v1() {
        let h = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET /")
            .await
            .unwrap();
        assert_eq!(
            h,
            Header::Proxy(
                Some("203.0.113.7:51000".parse().unwrap()),
                b"GET /".to_vec()
            )
        );
        let h = parse(b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n")
            .await
            .unwrap();
        assert_eq!(source(h), Some("[2001:db8::7]:51000".parse().unwrap()));
        assert_eq!(source(parse(b"PROXY UNKNOWN\r\n").await.unwrap()), None);
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
            Header::Proxy(
                Some("198.51.100.9:50000".parse().unwrap()),
                b"GET /".to_vec()
            )
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(source(parse(&local).await.unwrap()), None);
        // A declared length over the cap is refused before it is read.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let e = parse(&huge).await.unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
    }

    #[tokio::test]
    async fn untrusted_peers_are_refused_at_the_signature() {
        // Only the signature is there: nothing more is waited for.
        let mut r = &b"PROXY"[..];
        let e = read_header(&mut r, false).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let mut r = &V2_SIGNATURE[..5];
        let e = read_header(&mut r, false).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // Without a header an untrusted peer is served as usual.
        let mut r = &b"GET / HTTP/1.1\r\n"[..];
        let h = read_header(&mut r, false).await.unwrap();
        assert!(matches!(h, Header::None(b) if b.starts_with(b"GET /")));
    }

    #[tokio::test]
    async fn no_header_gives_the_bytes_back() {
        let h = parse(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(h, Header::None(b"GET / HTTP/1.1\r\n".to_vec()));
        let mut p = Prefixed::new(b"GET /".to_vec(), &b" HTTP/1.1\r\n"[..]);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "GET / HTTP/1.1\r\n");
    }
}
