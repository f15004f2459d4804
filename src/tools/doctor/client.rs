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
    pub(super) fn new(opts: &Options) -> Result<Target, ClientError> {
        let https = match opts.url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ClientError::Scheme),
        };
        let host = opts
            .url
            .host()
            .ok_or(ClientError::NoHost)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let default_port = if https { 443 } else { 80 };
        let port = opts.url.port_u16().unwrap_or(default_port);
        let authority = opts
            .url
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or(ClientError::NoHost)?;
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
            let pem = std::fs::read(path).map_err(|source| ClientError::CaRead {
                path: path.clone(),
                source,
            })?;
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|source| ClientError::CaPem {
                    path: path.clone(),
                    source,
                })?;
                roots.add(cert).map_err(|source| ClientError::CaRefused {
                    path: path.clone(),
                    source,
                })?;
                any = true;
            }
            if !any {
                return Err(ClientError::CaEmpty { path: path.clone() });
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ClientError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ClientError::Tls)?
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

    pub(super) async fn open(&self, verify: bool) -> Result<Opened, ClientError> {
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&self.connect))
            .await
            .map_err(|_| ClientError::ConnectTimeout(self.timeout))?
            .map_err(ClientError::Connect)?;
        let local = tcp.local_addr().map_err(ClientError::Connect)?;
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
        let name =
            ServerName::try_from(self.host.clone()).map_err(|source| ClientError::ServerName {
                host: self.host.clone(),
                source,
            })?;
        let tls = tokio::time::timeout(
            self.timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| ClientError::HandshakeTimeout)?
        .map_err(|e| {
            let verify_failed = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            if verify_failed {
                ClientError::Verify(e)
            } else {
                ClientError::Handshake(e)
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
    ) -> Result<(Exchange, Meta), ClientError> {
        let opened = self.open(verify).await?;
        let meta = Meta {
            local: opened.local,
            certificate: opened.certificate,
        };
        let io = TokioIo::new(opened.io);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(ClientError::Http)?;
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
            .map_err(|source| ClientError::Request {
                target: target.to_string(),
                source,
            })?;
        let res = tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| ClientError::ResponseTimeout(self.timeout))?
            .map_err(ClientError::Send)?;
        let status = res.status();
        let headers = res.headers().clone();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = tokio::time::timeout(self.timeout, hyper::upgrade::on(res))
                .await
                .map_err(|_| ClientError::UpgradeTimeout)?
                .map_err(ClientError::Upgrade)?;
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
        .map_err(|_| ClientError::BodyTimeout)?
        .map_err(ClientError::Body)?
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

/// Why the doctor got no answer to a request.
#[derive(Debug, thiserror::Error)]
pub(super) enum ClientError {
    #[error("the URL must start with https:// or http://")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("{}: cannot read", .path.display())]
    CaRead {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a PEM certificate", .path.display())]
    CaPem {
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: a certificate was refused", .path.display())]
    CaRefused {
        path: std::path::PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: no certificate in the file", .path.display())]
    CaEmpty { path: std::path::PathBuf },
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
    #[error("no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[error("{host}: not a server name")]
    ServerName {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("the TLS handshake did not finish")]
    HandshakeTimeout,
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    /// The certificate presented cannot be verified (the message is the
    /// verifier's own).
    #[error(transparent)]
    Verify(std::io::Error),
    #[error("the HTTP/1.1 handshake failed")]
    Http(#[source] hyper::Error),
    #[error("{target}: not a valid request")]
    Request {
        target: String,
        #[source]
        source: http::Error,
    },
    #[error("no response within {0:?}")]
    ResponseTimeout(Duration),
    #[error("the request failed")]
    Send(#[source] hyper::Error),
    #[error("the upgrade did not complete")]
    UpgradeTimeout,
    #[error("the upgrade failed")]
    Upgrade(#[source] hyper::Error),
    #[error("the response body did not arrive in time")]
    BodyTimeout,
    #[error("reading the response body")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ClientError {
    /// The text of checks and findings: the error and its causes.
    pub(super) fn text(&self) -> String {
        crate::base::error_chain::ErrorChain(self).to_string()
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
