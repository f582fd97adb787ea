//! Mutual TLS for the HIS listener. The server's private key is the HSM's `tls` key (through
//! [`medgate_hsm::tls::HsmSigningKey`]); client certificates must chain to the hospital CA, be
//! within their validity, and not be on a configured CRL — all checked during the handshake.
//! The HIS's identity and role are read from its certificate (CN and OU).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use medgate_hsm::tls::HsmSigningKey;
use medgate_hsm::Hsm;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS key: {0}")]
    Hsm(#[from] medgate_hsm::HsmError),
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { path: path.to_path_buf(), reason: e.to_string() })
}

/// Reads every CERTIFICATE block of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File { path: path.to_path_buf(), reason: format!("bad PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::File { path: path.to_path_buf(), reason: "no CERTIFICATE in the file".into() });
    }
    Ok(certs)
}

fn load_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for p in paths {
        let bytes = read(p)?;
        let crls: Vec<_> = rustls_pemfile::crls(&mut bytes.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::File { path: p.clone(), reason: format!("bad PEM: {e}") })?;
        if crls.is_empty() {
            return Err(TlsError::File { path: p.clone(), reason: "no X509 CRL in the file".into() });
        }
        out.extend(crls);
    }
    Ok(out)
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the HIS listener's TLS needs, re-read on reload.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub client_ca: PathBuf,
    pub crls: Vec<PathBuf>,
    /// Refuse clients of a CA whose CRL is past its nextUpdate (unless
    /// `[dangerous] allow_expired_crl`).
    pub enforce_crl_expiry: bool,
}

impl TlsFiles {
    /// The HIS listener's files and CRL policy from the configuration.
    pub fn from_config(cfg: &crate::config::Config) -> TlsFiles {
        TlsFiles {
            certificate: cfg.his.certificate.clone(),
            client_ca: cfg.his.client_ca.clone(),
            crls: cfg.his.crl.clone(),
            enforce_crl_expiry: !cfg.dangerous.allow_expired_crl,
        }
    }
}

/// Why a certificate chain does not go with a key, in words (rustls names it by a Rust enum).
pub fn key_mismatch(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => "its public key is not the HSM's active tls key".into(),
        rustls::Error::InconsistentKeys(_) => "its public key cannot be compared with the HSM's active tls key".into(),
        other => other.to_string(),
    }
}

/// Builds the server configuration: HSM key + certificate chain, client verification against the
/// hospital CA and CRLs, TLS 1.3 and 1.2, ALPN h2 and http/1.1.
pub fn server_config(hsm: &Arc<Hsm>, files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(&files.certificate)?;
    let key = HsmSigningKey::new(hsm.clone())?;
    let certified = CertifiedKey::new(chain, Arc::new(key));
    certified.keys_match().map_err(|e| TlsError::File {
        path: files.certificate.clone(),
        reason: format!("the certificate is for another key: {}; have the CA certify the CSR of this HSM's tls key (`medgate keys csr`)", key_mismatch(&e)),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| TlsError::File { path: files.client_ca.clone(), reason: e.to_string() })?;
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let crls = load_crls(&files.crls)?;
    if !crls.is_empty() {
        verifier = verifier.with_crls(crls);
        if files.enforce_crl_expiry {
            verifier = verifier.enforce_revocation_expiration();
        }
    }
    let verifier = verifier.build().map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(HsmCert(Arc::new(certified))));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Always presents the certificate of the HSM's active TLS key.
#[derive(Debug)]
struct HsmCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for HsmCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The acceptor configuration in use; SIGHUP swaps it, connections already open keep theirs.
#[derive(Debug)]
pub struct Reloadable {
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    pub fn new(cfg: Arc<ServerConfig>) -> Reloadable {
        Reloadable { current: RwLock::new(cfg) }
    }
    pub fn get(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set(&self, cfg: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }
}

/// Who is calling, from the verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The HIS system (certificate CN).
    pub system: String,
    /// Its role (certificate OU): `his` may do everything, `his-read` may only read.
    pub role: String,
    /// Certificate serial (hex), for logs.
    pub serial: String,
    /// When the certificate expires (unix seconds).
    pub not_after: i64,
}

impl ClientIdentity {
    pub fn from_der(der: &[u8]) -> Option<ClientIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let first = |it: &x509_parser::x509::AttributeTypeAndValue<'_>| it.as_str().ok().map(str::to_owned);
        let system = subject.iter_common_name().next().and_then(first)?;
        let role = subject.iter_organizational_unit().next().and_then(first).unwrap_or_default();
        Some(ClientIdentity { system, role, serial: cert.raw_serial_as_string(), not_after: cert.validity().not_after.timestamp() })
    }

    pub fn may_write(&self) -> bool {
        self.role == "his"
    }

    pub fn may_read(&self) -> bool {
        self.role == "his" || self.role == "his-read"
    }
}

/// A client configuration presenting `cert_pem` + `key_pem` (in-process key) and trusting `ca_pem`:
/// the HIS side, for the demo, the load generator and the tests.
pub fn client_config(ca_pem: &[u8], cert_pem: Option<(&[u8], &[u8])>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &*ca_pem) {
        let c = c.map_err(|e| TlsError::Rustls(e.to_string()))?;
        roots.add(c).map_err(|e| TlsError::Rustls(e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match cert_pem {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = rustls_pemfile::certs(&mut &*cert).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Rustls(e.to_string()))?;
            let key = rustls_pemfile::private_key(&mut &*key)
                .map_err(|e| TlsError::Rustls(e.to_string()))?
                .ok_or_else(|| TlsError::Rustls("no private key in PEM".into()))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| TlsError::Rustls(e.to_string()))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Presents the consortium certificate of the HSM's TLS key to etcd.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The mutual-TLS client configuration for etcd and peer gateways: trusts the consortium CA,
/// presents the consortium certificate of the HSM `tls` key.
pub fn consortium_client(cfg: &crate::config::Consortium, hsm: &Arc<Hsm>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&cfg.ca).map_err(|e| e.to_string())? {
        roots.add(ca).map_err(|e| format!("{}: {e}", cfg.ca.display()))?;
    }
    let chain = load_certs(&cfg.certificate).map_err(|e| e.to_string())?;
    let key = HsmSigningKey::new(hsm.clone()).map_err(|e| e.to_string())?;
    let certified = CertifiedKey::new(chain, Arc::new(key));
    certified
        .keys_match()
        .map_err(|e| format!("{}: the certificate is for another key: {}", cfg.certificate.display(), key_mismatch(&e)))?;
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(ClientCert(Arc::new(certified))));
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}
