//! TLS for SMPP links: the byte stream under the PDU codec, plain or TLS, on both ends.
//!
//! SMPP 3.4 has no STARTTLS; TLS on SMPP is the whole connection wrapped from the first octet
//! (what providers offer on a port of their own, often 3550 or 8775). The server side uses the
//! SMTP listener's certificate loading (`[smpp.tls]`, [`crate::intake::smtp::tls::acceptor`]);
//! the client side trusts the public WebPKI roots plus, when configured, the CAs of a PEM file
//! (an organization's own CA, or a self-signed certificate), and checks the server's name.
//! The `ring` provider is named explicitly: one crypto backend in the build (rustls#2070).
//!
//! What TLS protects: the bind's password (8 octets at most, sent in clear otherwise), the
//! texts and numbers of the messages, and the receipts, against reading and changing on the
//! way; and the client against binding to an impostor (the server proves its name with its
//! certificate). Clients are still authenticated by the bind's system_id and password, not by
//! certificates.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::config::ClientTls;

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {address}: {source}")]
    Tcp { address: String, source: io::Error },
    #[error("no connection to {0} within 5 s")]
    Timeout(String),
    #[error("cannot set up TLS: {0}")]
    Setup(String),
    #[error("the TLS handshake with {address} (as {name}) failed: {reason}")]
    Handshake {
        address: String,
        name: String,
        reason: String,
    },
}

/// A connection's bytes: plain TCP, or TLS as a client or as a server.
pub enum Stream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The client configuration of a link: WebPKI roots plus the CA file's certificates.
pub fn connector(tls: &ClientTls) -> Result<TlsConnector, ConnectError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &tls.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| {
                ConnectError::Setup(format!("cannot read CA file {}: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(ConnectError::Setup(format!(
                "{} holds no certificate",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| ConnectError::Setup(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Opens a link's connection, with TLS when `tls` says so; the TCP connection and the
/// handshake each get `timeout`.
pub async fn connect(
    address: &str,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<Stream, ConnectError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Err(_) => return Err(ConnectError::Timeout(address.to_string())),
        Ok(Err(source)) => {
            return Err(ConnectError::Tcp {
                address: address.to_string(),
                source,
            });
        }
        Ok(Ok(s)) => s,
    };
    // Small PDUs, answered one by one: Nagle's delay would be most of a round trip.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let connector = connector(tls)?;
    let name = ServerName::try_from(tls.server_name.clone())
        .map_err(|e| ConnectError::Setup(format!("`{}`: {e}", tls.server_name)))?;
    let handshake_failed = |reason: String| ConnectError::Handshake {
        address: address.to_string(),
        name: tls.server_name.clone(),
        reason,
    };
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Err(_) => Err(handshake_failed("no answer".into())),
        Ok(Err(e)) => Err(handshake_failed(e.to_string())),
        Ok(Ok(s)) => Ok(Stream::Client(Box::new(s))),
    }
}

/// The server side: accepts TLS on a new connection when `acceptor` is set.
pub async fn accept(
    tcp: TcpStream,
    acceptor: Option<&TlsAcceptor>,
    timeout: Duration,
) -> io::Result<Stream> {
    let _ = tcp.set_nodelay(true);
    let Some(a) = acceptor else {
        return Ok(Stream::Plain(tcp));
    };
    match tokio::time::timeout(timeout, a.accept(tcp)).await {
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
        Ok(r) => r.map(|s| Stream::Server(Box::new(s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_setup_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let cases = [
            (dir.path().join("none.pem"), "cannot read CA file"),
            (empty.clone(), "holds no certificate"),
        ];
        for (path, want) in cases {
            let tls = ClientTls {
                server_name: "localhost".into(),
                ca_file: Some(path.clone()),
            };
            match connector(&tls) {
                Err(ConnectError::Setup(m)) => {
                    assert!(m.contains(want), "{m}");
                    assert!(m.contains(&path.display().to_string()), "{m}");
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("{} accepted", path.display()),
            }
        }
        // No CA file: the WebPKI roots alone.
        assert!(
            connector(&ClientTls {
                server_name: "localhost".into(),
                ca_file: None
            })
            .is_ok()
        );
    }
}
