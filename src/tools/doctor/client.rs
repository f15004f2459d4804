//! The client side of `gatehouse doctor`: one connection per request
//! (plain or TLS, verified or not), the exchange it brings back, and the
//! WebSocket reading of the diagnostic report.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Options, MAX_BODY};

/// The answer to one request.
pub(super) struct Exchange {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// The connection after a 101.
    pub(super) upgraded: Option<hyper::upgrade::Upgraded>,
}

/// What the doctor connects to and how.
pub(super) struct Target {
    pub(super) https: bool,
    /// Name for SNI and certificate checks.
    pub(super) host: String,
    /// `Host` header value (with the port when not the default).
    pub(super) authority: String,
    pub(super) connect: String,
    pub(super) verified: Arc<rustls::ClientConfig>,
    pub(super) unverified: Arc<rustls::ClientConfig>,
    pub(super) timeout: Duration,
}

pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection with what the doctor learned while opening it.
pub(super) struct Opened {
    pub(super) io: Box<dyn Io>,
    pub(super) local: SocketAddr,
    /// SHA-256 of the certificate the server presented.
    pub(super) certificate: Option<String>,
}

impl Target {
    pub(super) fn new(opts: &Options) -> Result<Target, String> {
        let https = match opts.url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the URL must start with https:// or http://".into()),
        };
        let host = opts
            .url
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let default_port = if https { 443 } else { 80 };
        let port = opts.url.port_u16().unwrap_or(default_port);
        let authority = opts
            .url
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or("the URL has no host")?;
        let connect = opts.connect_to.clone().unwrap_or_else(|| {
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in &opts.ca {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                any = true;
            }
            if !any {
                return Err(format!("{}: no certificate in the file", path.display()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth();
        Ok(Target {
            https,
            host,
            authority,
            connect,
            verified: Arc::new(verified),
            unverified: Arc::new(unverified),
            timeout: opts.timeout,
        })
    }

    pub(super) async fn open(&self, verify: bool) -> Result<Opened, OpenError> {
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&self.connect))
            .await
            .map_err(|_| OpenError::Connect(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let local = tcp
            .local_addr()
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if !self.https {
            return Ok(Opened {
                io: Box::new(tcp),
                local,
                certificate: None,
            });
        }
        let config = if verify {
            self.verified.clone()
        } else {
            self.unverified.clone()
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| OpenError::Connect(format!("{}: {e}", self.host)))?;
        let tls = tokio::time::timeout(
            self.timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| OpenError::Connect("the TLS handshake did not finish".into()))?
        .map_err(|e| {
            let verify_failed = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            if verify_failed {
                OpenError::Verify(e.to_string())
            } else {
                OpenError::Connect(format!("TLS handshake failed: {e}"))
            }
        })?;
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| crate::certs::fingerprint(c.as_ref()));
        Ok(Opened {
            io: Box::new(tls),
            local,
            certificate,
        })
    }

    /// One HTTP/1.1 request on a new connection.
    pub(super) async fn send(
        &self,
        verify: bool,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Exchange, Meta), String> {
        let opened = self.open(verify).await.map_err(|e| e.to_string())?;
        let meta = Meta {
            local: opened.local,
            certificate: opened.certificate,
        };
        let io = TokioIo::new(opened.io);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder()
            .method(method.clone())
            .uri(target)
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("gatehouse-doctor/", env!("CARGO_PKG_VERSION")),
            );
        if method == Method::POST {
            req = req.header(header::CONTENT_LENGTH, "0");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{target}: {e}"))?;
        let res = tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| format!("no response within {:?}", self.timeout))?
            .map_err(|e| format!("{}", crate::base::error_chain::ErrorChain(&e)))?;
        let status = res.status();
        let headers = res.headers().clone();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = tokio::time::timeout(self.timeout, hyper::upgrade::on(res))
                .await
                .map_err(|_| "the upgrade did not complete".to_string())?
                .map_err(|e| e.to_string())?;
            let exchange = Exchange {
                status,
                headers,
                body: Bytes::new(),
                upgraded: Some(upgraded),
            };
            return Ok((exchange, meta));
        }
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(res.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| "the response body did not arrive in time".to_string())?
        .map_err(|e| format!("reading the response body: {e}"))?
        .to_bytes();
        let exchange = Exchange {
            status,
            headers,
            body,
            upgraded: None,
        };
        Ok((exchange, meta))
    }
}

/// What the doctor learned about a connection it opened.
pub(super) struct Meta {
    pub(super) local: SocketAddr,
    pub(super) certificate: Option<String>,
}

#[derive(Debug)]
pub(super) enum OpenError {
    Connect(String),
    Verify(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Connect(e) | OpenError::Verify(e) => f.write_str(e),
        }
    }
}

/// Accepts any certificate but still checks the handshake signatures, so
/// the remaining checks can run after verification failed (reported).
#[derive(Debug)]
pub(super) struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(super) fn accept_matches(headers: &HeaderMap, key: &str) -> bool {
    let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == want.as_bytes())
}

/// The first message on an upgraded connection, which must be text, then
/// a normal close from this side (RFC 6455 §5.5.1, §7.4.1).
pub(super) async fn read_report<S>(io: S) -> Option<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;
    let config = WebSocketConfig::default().max_message_size(Some(MAX_BODY));
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await;
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    let _ = ws.close(None).await;
    match first {
        Ok(Some(Ok(Message::Text(text)))) => Some(text.as_bytes().to_vec()),
        _ => None,
    }
}

/// Closes an upgraded connection as a WebSocket client does.
pub(super) async fn close_websocket<S>(io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::Role;
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    let _ = ws.close(None).await;
}

pub(super) fn nonce() -> String {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Percent-encodes a query value (RFC 3986 §2.3 unreserved kept).
pub(super) fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
