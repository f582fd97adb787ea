//! The mutual-TLS client towards the audit record repository (RFC 5425: TLS 1.2 or 1.3).
//!
//! Boundary: the caller hands over the client identity as rustls values, so the private key may
//! stay in an HSM (a `SigningKey` whose `sign` calls C_Sign, or a whole `ResolvesClientCert`);
//! this crate never sees key bytes. The repository is verified against the configured CA
//! certificates and server name, with rustls' WebPKI verifier and the ring provider.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("audit repository CA: {0}")]
    Ca(String),
    #[error("audit repository server name {name:?}: {problem}")]
    ServerName { name: String, problem: String },
    #[error("audit TLS client: {0}")]
    Config(String),
}

/// The gateway's client identity for mutual TLS.
pub enum ClientIdentity {
    /// A certificate chain (leaf first) and its key; the key may sign in an HSM.
    Key { chain: Vec<CertificateDer<'static>>, key: Arc<dyn SigningKey> },
    /// Any resolver (for instance one that follows certificate renewals).
    Resolver(Arc<dyn ResolvesClientCert>),
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientIdentity::Key { chain, .. } => f.debug_struct("Key").field("chain_len", &chain.len()).finish_non_exhaustive(),
            ClientIdentity::Resolver(_) => f.write_str("Resolver"),
        }
    }
}

/// Presents one certified key, whatever the server asks for (rustls then asks the key to choose
/// a signature scheme the server offered).
#[derive(Debug)]
struct OneKey(Arc<CertifiedKey>);

impl ResolvesClientCert for OneKey {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Connects to the repository with mutual TLS.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl TlsClient {
    /// `ca_pem`: the CA certificate(s) that issued the repository's certificate (PEM);
    /// `server_name`: the DNS name (or IP address) its certificate must carry.
    pub fn new(ca_pem: &[u8], server_name: &str, identity: ClientIdentity) -> Result<TlsClient, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &*ca_pem) {
            let cert = cert.map_err(|e| TlsError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| TlsError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Ca("no certificate in the PEM file".into()));
        }
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| TlsError::ServerName { name: server_name.to_owned(), problem: e.to_string() })?;
        let resolver: Arc<dyn ResolvesClientCert> = match identity {
            ClientIdentity::Resolver(r) => r,
            ClientIdentity::Key { chain, key } => {
                if chain.is_empty() {
                    return Err(TlsError::Config("the client certificate chain is empty".into()));
                }
                Arc::new(OneKey(Arc::new(CertifiedKey::new(chain, key))))
            }
        };
        // TLS 1.3 and 1.2 only (RFC 5425 as updated by RFC 9662; IHE ITI-20 follows BCP 195).
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(resolver);
        Ok(TlsClient { connector: TlsConnector::from(Arc::new(config)), server_name: name })
    }

    /// Resolves `address` (`host:port`), connects over TCP to the first address that answers and
    /// completes the TLS handshake, all within `timeout`.
    pub async fn connect(&self, address: &str, timeout: Duration) -> Result<TlsStream<TcpStream>, String> {
        let attempt = async {
            let mut last = String::from("the address resolved to nothing");
            for addr in tokio::net::lookup_host(address).await.map_err(|e| format!("resolving {address}: {e}"))? {
                match TcpStream::connect(addr).await {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(true);
                        return self.connector.connect(self.server_name.clone(), tcp).await.map_err(|e| format!("TLS handshake with {addr}: {e}"));
                    }
                    Err(e) => last = format!("connecting to {addr}: {e}"),
                }
            }
            Err(last)
        };
        tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("connecting to {address}: no answer within {timeout:?}"))?
    }
}
