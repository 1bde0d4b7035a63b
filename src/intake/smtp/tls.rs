//! STARTTLS server configuration: a certificate chain and key in PEM, with the `ring` crypto
//! provider named explicitly (one backend in the whole build; see rustls#2070).

use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::TlsFiles;

pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .with_context(|| format!("reading {}", files.certificate.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", files.certificate.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", files.certificate.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading a private key from {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
