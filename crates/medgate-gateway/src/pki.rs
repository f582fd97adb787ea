//! Certificates: CSRs and certificates for keys that live in the HSM (through rcgen's remote key
//! interface), and the small hospital CA used by `medgate demo` and the tests. A production
//! hospital CA is the hospital's own; medgate only asks it for certificates.

use std::sync::Arc;

use medgate_hsm::{Hsm, HsmError, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RemoteKeyPair, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// An rcgen key whose private half is an HSM key pair (ECDSA P-256, role `ledger` or `tls`).
#[derive(Debug)]
pub struct HsmRemoteKey {
    hsm: Arc<Hsm>,
    role: Role,
    point: Vec<u8>,
}

impl HsmRemoteKey {
    pub fn new(hsm: Arc<Hsm>, role: Role) -> Result<HsmRemoteKey, HsmError> {
        let (_, spki) = hsm.public_key_der(role, None)?;
        let point = spki[spki.len().saturating_sub(65)..].to_vec();
        Ok(HsmRemoteKey { hsm, role, point })
    }

    pub fn into_key_pair(self) -> Result<KeyPair, rcgen::Error> {
        KeyPair::from_remote(Box::new(self))
    }
}

impl RemoteKeyPair for HsmRemoteKey {
    fn public_key(&self) -> &[u8] {
        &self.point
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        self.hsm.sign_digest(self.role, &digest).map(|s| s.der).map_err(|e| {
            tracing::error!(error = %e, "certificate signature failed in the HSM");
            rcgen::Error::RemoteKeyError
        })
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Parses `CN=...,O=...,OU=...,C=...,L=...,ST=...` into a distinguished name.
pub fn parse_subject(s: &str) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?} is not KEY=value"))?;
        let ty = match k.trim().to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "L" => DnType::LocalityName,
            "ST" => DnType::StateOrProvinceName,
            other => return Err(format!("unsupported subject attribute {other:?} (use CN, O, OU, C, L, ST)")),
        };
        dn.push(ty, v.trim());
    }
    if dn.get(&DnType::CommonName).is_none() {
        return Err("the subject needs a CN".into());
    }
    Ok(dn)
}

/// A PKCS#10 CSR for the active key of `role`, signed inside the HSM.
pub fn csr_for_hsm_key(hsm: Arc<Hsm>, role: Role, subject: DistinguishedName, dns_names: &[String]) -> Result<String, PkiError> {
    let key = HsmRemoteKey::new(hsm, role)?.into_key_pair()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.distinguished_name = subject;
    Ok(params.serialize_request(&key)?.pem()?)
}

/// A certificate authority held in process memory: the demo's and the tests' hospital CA.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub name: String,
}

fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    // The serial only needs to be unique; ring's generator is the process CSPRNG.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TestCa {
    /// Writes the CA's certificate (`ca.pem`) and key (`ca-key.pem`, mode 0600) into `dir`:
    /// a pilot consortium CA kept in files, created by `medgate consortium init-ca`. A production
    /// consortium CA is kept offline or in an HSM of its own.
    pub fn save(&self, dir: &std::path::Path) -> Result<(), String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("ca.pem"), self.cert.pem()).map_err(|e| format!("{}: {e}", dir.join("ca.pem").display()))?;
        let key_path = dir.join("ca-key.pem");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        f.write_all(self.key.serialize_pem().as_bytes()).map_err(|e| format!("{}: {e}", key_path.display()))
    }

    /// Loads a CA written by [`TestCa::save`].
    pub fn load(dir: &std::path::Path) -> Result<TestCa, String> {
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).map_err(|e| format!("{}: {e}", dir.join(n).display()));
        let (cert_pem, key_pem) = (read("ca.pem")?, read("ca-key.pem")?);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", dir.join("ca-key.pem").display()))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| format!("{}: {e}", dir.join("ca.pem").display()))?;
        let name = params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(|v| match v {
                rcgen::DnValue::Utf8String(s) => s.clone(),
                rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
                _ => "consortium CA".into(),
            })
            .unwrap_or_else(|| "consortium CA".into());
        // Re-signing the parameters gives an issuer object with the same name and key: what
        // rcgen needs to sign children that chain to the original ca.pem.
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(TestCa { cert, key, name })
    }

    /// A new CA named `name`, valid from yesterday for ten years.
    pub fn new(name: &str) -> Result<TestCa, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        params.serial_number = Some(serial());
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        Ok(TestCa { cert, key, name: name.to_owned() })
    }

    /// Signs a CSR as a TLS server certificate (also usable as a client: gateways talk to peers).
    pub fn sign_server_csr(&self, csr_pem: &str, days: i64) -> Result<rcgen::Certificate, PkiError> {
        self.sign_csr(CertificateSigningRequestParams::from_pem(csr_pem)?, days, &[])
    }

    /// The hospital-side certificate of a gateway's HSM tls key (`medgate pki sign-gateway`):
    /// as [`TestCa::sign_server_csr`], with the IP addresses the HIS may dial as subjectAltNames.
    pub fn sign_gateway_csr(&self, csr_pem: &str, days: i64, ips: &[std::net::IpAddr]) -> Result<rcgen::Certificate, PkiError> {
        self.sign_csr(CertificateSigningRequestParams::from_pem(csr_pem)?, days, ips)
    }

    /// A consortium gateway's certificate: as [`TestCa::sign_server_csr`], adding IP
    /// subjectAltNames (peers and etcd dial by IP address), with the CN set to the hospital id
    /// in the request's O. etcd takes the CN as the user its RBAC roles are granted to.
    pub fn sign_peer_csr(&self, csr_pem: &str, days: i64, ips: &[std::net::IpAddr]) -> Result<rcgen::Certificate, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let hospital = match csr.params.distinguished_name.get(&DnType::OrganizationName) {
            Some(rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
            Some(rcgen::DnValue::PrintableString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        };
        if let Some(h) = hospital {
            csr.params.distinguished_name.remove(DnType::CommonName);
            csr.params.distinguished_name.push(DnType::CommonName, h);
        }
        self.sign_csr(csr, days, ips)
    }

    fn sign_csr(&self, mut csr: CertificateSigningRequestParams, days: i64, ips: &[std::net::IpAddr]) -> Result<rcgen::Certificate, PkiError> {
        csr.params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
        csr.params.not_after = OffsetDateTime::now_utc() + Duration::days(days);
        csr.params.serial_number = Some(serial());
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.use_authority_key_identifier_extension = true;
        csr.params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        Ok(csr.signed_by(&self.cert, &self.key)?)
    }

    /// An HIS client certificate and its (in-process) key: CN is the HIS system, OU its role.
    pub fn issue_client(&self, cn: &str, role: &str, valid_from: OffsetDateTime, valid_to: OffsetDateTime) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, self.name.as_str());
        params.distinguished_name.push(DnType::OrganizationalUnitName, role);
        params.not_before = valid_from;
        params.not_after = valid_to;
        params.serial_number = Some(serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert, key))
    }

    /// A server certificate with an in-process key, for a test peer that is not a medgate.
    pub fn issue_server(&self, dns: &str) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
        self.issue_server_for(dns, &[std::net::IpAddr::from([127, 0, 0, 1])])
    }

    /// A server certificate with an in-process key for `dns` and the given IP addresses (an etcd
    /// member's, which also serves as its peer certificate).
    pub fn issue_server_for(&self, dns: &str, ips: &[std::net::IpAddr]) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![dns.to_owned()])?;
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name.push(DnType::CommonName, dns);
        params.serial_number = Some(serial());
        params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert, key))
    }

    /// A CRL revoking the given certificates (by serial), valid for `days`.
    pub fn crl(&self, revoked: &[&rcgen::Certificate], days: i64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc() - Duration::minutes(1);
        let revoked: Vec<Revoked> =
            revoked.iter().filter_map(|c| c.params().serial_number.as_ref()).map(|s| Revoked { serial: s.to_bytes(), at: now }).collect();
        self.crl_of(&revoked, OffsetDateTime::now_utc() - Duration::minutes(5), days, &serial().to_bytes())
    }

    /// A CRL listing `revoked` (key compromise), issued at `this_update`, valid for `days`, with
    /// CRL number `number` (big-endian; each new CRL of a CA takes a higher one).
    pub fn crl_of(&self, revoked: &[Revoked], this_update: OffsetDateTime, days: i64, number: &[u8]) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update + Duration::days(days),
            crl_number: SerialNumber::from_slice(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: r.at,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }
}

/// A revoked certificate: its serial (big-endian bytes) and when it was revoked.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub serial: Vec<u8>,
    pub at: OffsetDateTime,
}

/// What an operator needs to know of a CRL.
#[derive(Debug, Clone)]
pub struct CrlFacts {
    /// The issuing CA's name.
    pub issuer: String,
    /// thisUpdate (unix time).
    pub this_update: i64,
    /// nextUpdate (unix time), when the CRL has one.
    pub next_update: Option<i64>,
    /// Serials (hex) of the revoked certificates.
    pub revoked: Vec<String>,
}

/// Every X509 CRL block of a PEM file.
pub fn read_crls(path: &std::path::Path) -> Result<Vec<CrlFacts>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ders: Vec<_> = rustls_pemfile::crls(&mut bytes.as_slice()).collect::<Result<_, _>>().map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if ders.is_empty() {
        return Err(format!("{}: no X509 CRL in the file", path.display()));
    }
    ders.iter().map(|d| crl_facts(d.as_ref()).map_err(|e| format!("{}: {e}", path.display()))).collect()
}

/// The facts of one DER CRL.
pub fn crl_facts(der: &[u8]) -> Result<CrlFacts, String> {
    let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| format!("not an X.509 CRL: {e}"))?;
    Ok(CrlFacts {
        issuer: crl.issuer().to_string(),
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        revoked: crl.iter_revoked_certificates().map(|r| r.raw_serial_as_string()).collect(),
    })
}

/// What an operator and `medgate config check` need to know of a certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    /// notBefore and notAfter (unix time).
    pub not_before: i64,
    pub not_after: i64,
    /// The DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// Serial (hex, colon separated as OpenSSL prints it).
    pub serial: String,
    pub is_ca: bool,
}

/// The facts of one DER certificate.
pub fn certificate_facts(der: &[u8]) -> Result<CertFacts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        spki: cert.public_key().raw.to_vec(),
        serial: cert.raw_serial_as_string(),
        is_ca: cert.is_ca(),
    })
}

/// SubjectPublicKeyInfo-independent facts about a certificate that operators need.
pub fn describe_certificate(der: &[u8]) -> Result<(String, String, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok((cert.subject().to_string(), cert.issuer().to_string(), cert.validity().not_after.timestamp()))
}
